"""Items and orders: CRUD, pagination, validation, capacity, per-app state, concurrency."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from bastion.demo import create_app
from bastion.demo.catalog import SEED_ITEMS, Catalog
from bastion.demo.resources import MAX_BODY

VALID = {"name": "Lamp", "price": 12.5, "tags": ["home"]}


def test_seeded_items_are_listed_in_id_order(client):
    response = client.get("/items")

    assert response.status_code == 200
    body = response.json()
    assert body["total"] == len(SEED_ITEMS)
    assert body["limit"] == 20
    assert body["offset"] == 0
    assert [item["id"] for item in body["items"]] == list(range(1, len(SEED_ITEMS) + 1))
    first = body["items"][0]
    assert set(first) == {"id", "name", "price", "tags", "created_at", "updated_at"}
    assert first["name"] == SEED_ITEMS[0][0]
    assert first["created_at"].endswith("Z")


def test_pagination_windows_the_list(client):
    body = client.get("/items", params={"limit": 2, "offset": 1}).json()

    assert [item["id"] for item in body["items"]] == [2, 3]
    assert body["total"] == len(SEED_ITEMS)
    assert (body["limit"], body["offset"]) == (2, 1)


def test_offset_past_the_end_is_an_empty_page(client):
    body = client.get("/items", params={"offset": 1000}).json()

    assert body["items"] == []
    assert body["total"] == len(SEED_ITEMS)


@pytest.mark.parametrize(
    ("query", "name", "error_type"),
    [
        pytest.param({"limit": "0"}, "limit", "out_of_range", id="limit-zero"),
        pytest.param({"limit": "101"}, "limit", "out_of_range", id="limit-over-100"),
        pytest.param({"limit": "ten"}, "limit", "int_parsing", id="limit-not-int"),
        pytest.param({"limit": "1.5"}, "limit", "int_parsing", id="limit-fraction"),
        pytest.param({"offset": "-1"}, "offset", "out_of_range", id="offset-negative"),
        pytest.param({"offset": "9" * 20}, "offset", "out_of_range", id="offset-huge"),
        pytest.param({"offset": "9" * 5000}, "offset", "int_parsing", id="offset-too-many-digits"),
        pytest.param({"limit": "1_0"}, "limit", "int_parsing", id="limit-underscore"),
        pytest.param({"limit": " 5"}, "limit", "int_parsing", id="limit-space"),
        pytest.param({"limit": "\u0665"}, "limit", "int_parsing", id="limit-arabic-digit"),
    ],
)
def test_bad_pagination_is_422(client, query, name, error_type):
    for path in ("/items", "/orders"):
        response = client.get(path, params=query)

        assert response.status_code == 422
        body = response.json()
        assert body["error"] == "validation_failed"
        assert body["errors"] == [
            {"loc": ["query", name], "msg": body["errors"][0]["msg"], "type": error_type}
        ]


def test_create_item_answers_201_with_location(client):
    response = client.post("/items", json=VALID)

    assert response.status_code == 201
    item = response.json()
    assert item["id"] == len(SEED_ITEMS) + 1
    assert (item["name"], item["price"], item["tags"]) == ("Lamp", 12.5, ["home"])
    assert item["created_at"] == item["updated_at"]
    assert response.headers["location"] == f"/items/{item['id']}"
    assert client.get(response.headers["location"]).json() == item


def test_create_item_tags_default_to_empty_and_integer_price_is_a_number(client):
    item = client.post("/items", json={"name": "Stool", "price": 3}).json()

    assert item["tags"] == []
    assert item["price"] == 3.0


def test_create_item_accepts_any_content_type_with_a_json_body(client):
    response = client.post(
        "/items", content=orjson.dumps(VALID), headers={"content-type": "text/plain"}
    )

    assert response.status_code == 201


INVALID_BODIES = [
    pytest.param(b"{", ["body"], "json_invalid", id="malformed-json"),
    pytest.param(b"", ["body"], "json_invalid", id="empty-body"),
    pytest.param(b"[1, 2]", ["body"], "model_type", id="array-not-object"),
    pytest.param(b'{"name": "x", "price": 1e400}', ["body"], "json_invalid", id="infinite-price"),
    pytest.param({"price": 1}, ["body", "name"], "missing", id="missing-name"),
    pytest.param({"name": "x"}, ["body", "price"], "missing", id="missing-price"),
    pytest.param({"name": "", "price": 1}, ["body", "name"], "string_too_short", id="empty-name"),
    pytest.param(
        {"name": "x" * 201, "price": 1}, ["body", "name"], "string_too_long", id="long-name"
    ),
    pytest.param({"name": 7, "price": 1}, ["body", "name"], "string_type", id="name-not-string"),
    pytest.param(
        {"name": "x", "price": -0.01}, ["body", "price"], "greater_than_equal", id="negative"
    ),
    pytest.param({"name": "x", "price": "1"}, ["body", "price"], "float_type", id="price-string"),
    pytest.param({"name": "x", "price": True}, ["body", "price"], "float_type", id="price-bool"),
    pytest.param({"name": "x", "price": None}, ["body", "price"], "float_type", id="price-null"),
    pytest.param(
        {"name": "x", "price": 1, "tags": "a"}, ["body", "tags"], "list_type", id="tags-string"
    ),
    pytest.param(
        {"name": "x", "price": 1, "tags": ["ok", 3]},
        ["body", "tags", 1],
        "string_type",
        id="tag-not-string",
    ),
    pytest.param(
        {"name": "x", "price": 1, "tags": ["t"] * 21}, ["body", "tags"], "too_long", id="many-tags"
    ),
    pytest.param(
        {"name": "x", "price": 1, "id": 99}, ["body", "id"], "extra_forbidden", id="extra-key"
    ),
]


def _send_body(client, method, path, body):
    if isinstance(body, bytes):
        return client.request(method, path, content=body)
    return client.request(method, path, json=body)


@pytest.mark.parametrize(("body", "loc", "error_type"), INVALID_BODIES)
@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_invalid_item_bodies_are_422_naming_the_field(client, method, body, loc, error_type):
    path = "/items" if method == "POST" else "/items/1"

    response = _send_body(client, method, path, body)

    assert response.status_code == 422
    errors = response.json()["errors"]
    assert {"loc": loc, "type": error_type} in [
        {"loc": e["loc"], "type": e["type"]} for e in errors
    ]
    assert client.get("/items").json()["total"] == len(SEED_ITEMS)
    assert client.get("/items/1").json()["name"] == SEED_ITEMS[0][0]


def test_oversized_body_is_413_before_reading_it(client):
    big = b'{"name": "' + b"x" * MAX_BODY + b'", "price": 1}'

    response = client.post("/items", content=big)

    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


async def test_oversized_body_without_content_length_is_413(asgi_call):
    response = await asgi_call(create_app(), "POST", "/items", b" " * (MAX_BODY + 1))

    assert response.status == 413


def test_unknown_item_is_json_404(client):
    for method in ("GET", "DELETE"):
        response = client.request(method, "/items/999")

        assert response.status_code == 404
        assert response.json() == {"error": "not_found", "detail": "item 999 not found"}
    assert client.put("/items/999", json=VALID).status_code == 404
    assert client.patch("/items/999", json={"price": 1}).status_code == 404


def test_non_integer_item_id_is_404(client):
    assert client.get("/items/abc").status_code == 404


def test_put_replaces_every_field_and_keeps_creation_time(client):
    before = client.get("/items/1").json()

    response = client.put("/items/1", json={"name": "Widget II", "price": 11})

    assert response.status_code == 200
    after = response.json()
    assert (after["id"], after["name"], after["price"], after["tags"]) == (1, "Widget II", 11, [])
    assert after["created_at"] == before["created_at"]
    assert after["updated_at"] >= before["updated_at"]
    assert client.get("/items/1").json() == after


def test_patch_changes_only_the_given_fields(client):
    before = client.get("/items/2").json()

    response = client.patch("/items/2", json={"price": 30, "tags": ["sale"]})

    assert response.status_code == 200
    after = response.json()
    assert after["name"] == before["name"]
    assert (after["price"], after["tags"]) == (30, ["sale"])


@pytest.mark.parametrize(
    ("changes", "loc", "error_type"),
    [
        pytest.param({"name": None}, ["body", "name"], "string_type", id="null-name"),
        pytest.param({"price": -5}, ["body", "price"], "greater_than_equal", id="negative-price"),
        pytest.param({"id": 7}, ["body", "id"], "extra_forbidden", id="id-not-writable"),
        pytest.param([1], ["body"], "model_type", id="not-an-object"),
    ],
)
def test_invalid_patch_is_422_and_changes_nothing(client, changes, loc, error_type):
    before = client.get("/items/2").json()

    response = client.patch("/items/2", json=changes)

    assert response.status_code == 422
    assert [(e["loc"], e["type"]) for e in response.json()["errors"]] == [(loc, error_type)]
    assert client.get("/items/2").json() == before


def test_delete_removes_the_item(client):
    response = client.delete("/items/3")

    assert response.status_code == 204
    assert response.content == b""
    assert client.get("/items/3").status_code == 404
    assert client.delete("/items/3").status_code == 404
    assert [item["id"] for item in client.get("/items").json()["items"]] == [1, 2, 4]


def test_order_for_an_item_is_201_with_total(client):
    response = client.post("/orders", json={"item_id": 1, "quantity": 3})

    assert response.status_code == 201
    order = response.json()
    unit_price = SEED_ITEMS[0][1]
    assert order["id"] == 1
    assert (order["item_id"], order["quantity"], order["unit_price"]) == (1, 3, unit_price)
    assert order["total"] == round(unit_price * 3, 2)
    assert response.headers["location"] == "/orders/1"
    assert client.get("/orders/1").json() == order
    assert client.get("/orders").json() == {"orders": [order], "total": 1, "limit": 20, "offset": 0}


@pytest.mark.parametrize(
    ("body", "loc", "error_type"),
    [
        pytest.param({"item_id": 999, "quantity": 1}, ["body", "item_id"], "unknown_item", id="ui"),
        pytest.param({"item_id": 1, "quantity": 0}, ["body", "quantity"], "greater_than_equal"),
        pytest.param({"item_id": 1, "quantity": 1001}, ["body", "quantity"], "less_than_equal"),
        pytest.param({"item_id": 1, "quantity": 1.0}, ["body", "quantity"], "int_type"),
        pytest.param({"item_id": "1", "quantity": 1}, ["body", "item_id"], "int_type"),
        pytest.param({"item_id": 0, "quantity": 1}, ["body", "item_id"], "greater_than_equal"),
        pytest.param({"quantity": 1}, ["body", "item_id"], "missing"),
    ],
)
def test_invalid_orders_are_422(client, body, loc, error_type):
    response = client.post("/orders", json=body)

    assert response.status_code == 422
    assert [(e["loc"], e["type"]) for e in response.json()["errors"]] == [(loc, error_type)]
    assert client.get("/orders").json()["total"] == 0


def test_unknown_order_is_404(client):
    response = client.get("/orders/5")

    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "detail": "order 5 not found"}


def test_orders_outlive_their_item_at_the_price_they_were_made(client):
    order = client.post("/orders", json={"item_id": 4, "quantity": 2}).json()
    client.delete("/items/4")

    assert client.get(f"/orders/{order['id']}").json() == order


def test_each_app_has_its_own_catalog(make_client):
    with make_client(create_app()) as first, make_client(create_app()) as second:
        assert first.post("/items", json=VALID).status_code == 201
        assert first.get("/items").json()["total"] == len(SEED_ITEMS) + 1
        assert second.get("/items").json()["total"] == len(SEED_ITEMS)


@pytest.mark.parametrize(
    ("path", "body"),
    [("/items", VALID), ("/orders", {"item_id": 1, "quantity": 1})],
)
def test_a_full_catalog_refuses_new_records_with_507(make_client, path, body):
    app = create_app(catalog=Catalog(capacity=len(SEED_ITEMS) + 1))

    with make_client(app) as client:
        assert client.post(path, json=body).status_code == 201
        if path == "/orders":
            for _ in range(len(SEED_ITEMS)):
                assert client.post(path, json=body).status_code == 201
        response = client.post(path, json=body)

    assert response.status_code == 507
    assert response.json()["error"] == "storage_full"


async def test_concurrent_creates_get_distinct_consecutive_ids(asgi_call):
    app = create_app(catalog=Catalog(seed=()))
    body = orjson.dumps(VALID)

    results = await asyncio.gather(*(asgi_call(app, "POST", "/items", body) for _ in range(50)))

    ids = sorted(orjson.loads(r.body)["id"] for r in results)
    assert [r.status for r in results] == [201] * 50
    assert ids == list(range(1, 51))
    listing = await asgi_call(app, "GET", "/items?limit=100")
    assert orjson.loads(listing.body)["total"] == 50
