"""The demo's in-memory items and orders, one :class:`Catalog` per app instance.

No method awaits anything, so under asyncio every call runs to completion before another
request's code can run: check-then-write sequences (an order referencing an item, a replace of an
item that might be deleted) are atomic without a lock. Endpoints read and validate the request
body first and then make one catalog call, so that property carries over to them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice

__all__ = ["Catalog", "CatalogFull", "Item", "Order", "UnknownItem"]


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Item:
    """A catalog item, rendered to JSON as it stands."""

    id: int
    name: str
    price: float
    tags: tuple[str, ...]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Order:
    """An order for ``quantity`` of one item at the price it had when ordered."""

    id: int
    item_id: int
    quantity: int
    unit_price: float
    total: float
    created_at: datetime


class CatalogFull(Exception):
    """The catalog holds ``capacity`` records of a kind and refuses more (507)."""

    def __init__(self, kind: str, capacity: int) -> None:
        super().__init__(f"the demo keeps at most {capacity} {kind}")
        self.kind = kind
        self.capacity = capacity


class UnknownItem(LookupError):
    """An order referenced an item that does not exist."""

    def __init__(self, item_id: int) -> None:
        super().__init__(f"item {item_id} does not exist")
        self.item_id = item_id


SEED_ITEMS: tuple[tuple[str, float, tuple[str, ...]], ...] = (
    ("Widget", 9.99, ("tools", "metal")),
    ("Gadget", 24.5, ("electronics",)),
    ("Gizmo", 4.25, ("toys", "plastic")),
    ("Sprocket", 0.75, ("parts", "metal")),
)
"""Items a fresh catalog starts with (ids 1 to 4), so the API has something to show."""


class Catalog:
    """Items and orders kept in insertion (= id) order, each kind bounded by ``capacity``.

    The bound keeps a long benchmark that creates records from growing the process without limit.
    """

    def __init__(
        self,
        *,
        capacity: int = 100_000,
        seed: Iterable[tuple[str, float, tuple[str, ...]]] = SEED_ITEMS,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._capacity = capacity
        self._clock = clock
        self._items: dict[int, Item] = {}
        self._orders: dict[int, Order] = {}
        self._next_item_id = 1
        self._next_order_id = 1
        for name, price, tags in seed:
            self.add_item(name, price, tags)

    def items(self, offset: int, limit: int) -> tuple[list[Item], int]:
        """One page of items in id order, and the total number of items."""
        return list(islice(self._items.values(), offset, offset + limit)), len(self._items)

    def item(self, item_id: int) -> Item | None:
        """The item with this id, if any."""
        return self._items.get(item_id)

    def add_item(self, name: str, price: float, tags: Iterable[str]) -> Item:
        """Create an item with the next id."""
        if len(self._items) >= self._capacity:
            raise CatalogFull("items", self._capacity)
        now = self._clock()
        item = Item(self._next_item_id, name, price, tuple(tags), now, now)
        self._next_item_id += 1
        self._items[item.id] = item
        return item

    def replace_item(
        self, item_id: int, name: str, price: float, tags: Iterable[str]
    ) -> Item | None:
        """Overwrite an item's fields (keeping its id and creation time); None if it is gone."""
        current = self._items.get(item_id)
        if current is None:
            return None
        item = Item(item_id, name, price, tuple(tags), current.created_at, self._clock())
        self._items[item_id] = item
        return item

    def remove_item(self, item_id: int) -> bool:
        """Delete an item; False if there was none. Its past orders are kept."""
        return self._items.pop(item_id, None) is not None

    def orders(self, offset: int, limit: int) -> tuple[list[Order], int]:
        """One page of orders in id order, and the total number of orders."""
        return list(islice(self._orders.values(), offset, offset + limit)), len(self._orders)

    def order(self, order_id: int) -> Order | None:
        """The order with this id, if any."""
        return self._orders.get(order_id)

    def add_order(self, item_id: int, quantity: int) -> Order:
        """Order ``quantity`` of an existing item at its current price (total rounded to cents)."""
        item = self._items.get(item_id)
        if item is None:
            raise UnknownItem(item_id)
        if len(self._orders) >= self._capacity:
            raise CatalogFull("orders", self._capacity)
        total = round(item.price * quantity, 2)
        order = Order(self._next_order_id, item_id, quantity, item.price, total, self._clock())
        self._next_order_id += 1
        self._orders[order.id] = order
        return order
