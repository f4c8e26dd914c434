"""A FastAPI app protected by Bastion in middleware mode.

Run:  uvicorn examples.fastapi_app:app --port 8000
Then: curl -i localhost:8000/items/1 ; curl -i localhost:8000/items/0
"""

from __future__ import annotations

from fastapi import FastAPI

from bastion import Bastion, BastionError, Settings

api = FastAPI(title="Items")

ITEMS = {1: {"id": 1, "name": "lamp"}, 2: {"id": 2, "name": "desk"}}


@api.get("/items/{item_id}")
async def get_item(item_id: int) -> dict[str, object]:
    item = ITEMS.get(item_id)
    if item is None:
        # Rendered by Bastion as an RFC 9457 problem with the request id.
        raise BastionError("not_found", f"No item {item_id}")
    return item


# Settings() reads BASTION_* environment variables and ./bastion.toml when present.
app = Bastion(Settings()).wrap(api)
