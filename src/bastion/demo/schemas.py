"""Bodies the demo accepts, validated strictly (no string-to-number coercion, no extra keys)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = ["MAX_ID", "ItemFields", "OrderFields"]

MAX_ID = 2**53
"""Largest id accepted in a body: every id stays exact in JavaScript clients."""

Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Price = Annotated[float, Field(ge=0, le=1_000_000_000, allow_inf_nan=False)]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=50)]


class ItemFields(BaseModel):
    """An item as a client writes it (``POST /items``, ``PUT``, and ``PATCH`` once merged)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    name: Name
    price: Price
    tags: Annotated[list[Tag], Field(max_length=20)] = Field(default_factory=list)


class OrderFields(BaseModel):
    """An order as a client writes it (``POST /orders``)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    item_id: Annotated[int, Field(ge=1, le=MAX_ID)]
    quantity: Annotated[int, Field(ge=1, le=1000)]
