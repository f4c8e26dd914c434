"""The demo's REST resources: items (full CRUD) and orders, over one :class:`Catalog`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bastion.demo.catalog import Catalog, UnknownItem
from bastion.demo.responses import OrjsonResponse, error_response
from bastion.demo.routing import resource
from bastion.demo.schemas import ItemFields, OrderFields
from bastion.demo.validation import (
    InvalidInput,
    parse_object,
    query_int,
    read_body,
    validate,
)

__all__ = ["MAX_BODY", "CatalogEndpoints"]

MAX_BODY = 1024 * 1024
"""Largest JSON body the resources read (413 above)."""

MAX_OFFSET = 1_000_000_000


def _page(request: Request) -> tuple[int, int]:
    limit = query_int(request, "limit", default=20, minimum=1, maximum=100)
    offset = query_int(request, "offset", default=0, minimum=0, maximum=MAX_OFFSET)
    return offset, limit


def _not_found(kind: str, ident: int) -> Response:
    return error_response(404, "not_found", f"{kind} {ident} not found")


class CatalogEndpoints:
    """HTTP endpoints over one catalog; :meth:`routes` mounts them."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def routes(self) -> list[Route]:
        """Routes for ``/items``, ``/items/{id}``, ``/orders`` and ``/orders/{id}``."""
        return [
            resource("/items", GET=self.list_items, POST=self.create_item),
            resource(
                "/items/{item_id:int}",
                GET=self.read_item,
                PUT=self.replace_item,
                PATCH=self.patch_item,
                DELETE=self.delete_item,
            ),
            resource("/orders", GET=self.list_orders, POST=self.create_order),
            resource("/orders/{order_id:int}", GET=self.read_order),
        ]

    async def list_items(self, request: Request) -> Response:
        """``GET /items?limit=&offset=``: one page of items."""
        offset, limit = _page(request)
        items, total = self.catalog.items(offset, limit)
        return OrjsonResponse({"items": items, "total": total, "limit": limit, "offset": offset})

    async def create_item(self, request: Request) -> Response:
        """``POST /items``: 201 with the new item and its ``Location``."""
        fields = validate(ItemFields, parse_object(await read_body(request, MAX_BODY)))
        item = self.catalog.add_item(fields.name, fields.price, fields.tags)
        return OrjsonResponse(item, status_code=201, headers={"location": f"/items/{item.id}"})

    async def read_item(self, request: Request) -> Response:
        """``GET /items/{id}``."""
        item_id: int = request.path_params["item_id"]
        item = self.catalog.item(item_id)
        return _not_found("item", item_id) if item is None else OrjsonResponse(item)

    async def replace_item(self, request: Request) -> Response:
        """``PUT /items/{id}``: replace every field (omitted ``tags`` become empty)."""
        item_id: int = request.path_params["item_id"]
        fields = validate(ItemFields, parse_object(await read_body(request, MAX_BODY)))
        item = self.catalog.replace_item(item_id, fields.name, fields.price, fields.tags)
        return _not_found("item", item_id) if item is None else OrjsonResponse(item)

    async def patch_item(self, request: Request) -> Response:
        """``PATCH /items/{id}``: change the given fields; the result is validated as a whole."""
        item_id: int = request.path_params["item_id"]
        changes = parse_object(await read_body(request, MAX_BODY))
        # From here on nothing awaits: the item read below is the one that gets replaced.
        current = self.catalog.item(item_id)
        if current is None:
            return _not_found("item", item_id)
        merged = {"name": current.name, "price": current.price, "tags": list(current.tags)}
        fields = validate(ItemFields, merged | changes)
        item = self.catalog.replace_item(item_id, fields.name, fields.price, fields.tags)
        return _not_found("item", item_id) if item is None else OrjsonResponse(item)

    async def delete_item(self, request: Request) -> Response:
        """``DELETE /items/{id}``: 204."""
        item_id: int = request.path_params["item_id"]
        if not self.catalog.remove_item(item_id):
            return _not_found("item", item_id)
        return Response(status_code=204)

    async def list_orders(self, request: Request) -> Response:
        """``GET /orders?limit=&offset=``: one page of orders."""
        offset, limit = _page(request)
        orders, total = self.catalog.orders(offset, limit)
        return OrjsonResponse({"orders": orders, "total": total, "limit": limit, "offset": offset})

    async def create_order(self, request: Request) -> Response:
        """``POST /orders``: 201; an ``item_id`` naming no item is a 422 on that field."""
        fields = validate(OrderFields, parse_object(await read_body(request, MAX_BODY)))
        try:
            order = self.catalog.add_order(fields.item_id, fields.quantity)
        except UnknownItem as exc:
            raise InvalidInput(
                [{"loc": ["body", "item_id"], "msg": str(exc), "type": "unknown_item"}]
            ) from None
        return OrjsonResponse(order, status_code=201, headers={"location": f"/orders/{order.id}"})

    async def read_order(self, request: Request) -> Response:
        """``GET /orders/{id}``."""
        order_id: int = request.path_params["order_id"]
        order = self.catalog.order(order_id)
        return _not_found("order", order_id) if order is None else OrjsonResponse(order)
