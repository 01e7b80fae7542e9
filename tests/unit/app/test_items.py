"""The items resource: every status code it promises."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx


async def create(
    client: httpx.AsyncClient, name: str, price: str = "9.99", **extra: object
) -> dict[str, Any]:
    response = await client.post("/api/items", json={"name": name, "price": price, **extra})
    assert response.status_code == 201, response.text
    item: dict[str, Any] = response.json()
    return item


async def test_create_returns_the_item_and_its_location(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/items", json={"name": "Espresso cup", "description": "white", "price": 12.5}
    )
    assert response.status_code == 201
    item = response.json()
    assert item["name"] == "Espresso cup"
    assert item["description"] == "white"
    assert item["price"] == "12.50"
    assert response.headers["location"] == f"/api/items/{item['id']}"
    assert item["created_at"] == item["updated_at"]
    assert datetime.fromisoformat(item["created_at"]).tzinfo is not None


async def test_created_item_can_be_read_back(client: httpx.AsyncClient) -> None:
    item = await create(client, "Saucer")
    response = await client.get(f"/api/items/{item['id']}")
    assert response.status_code == 200
    assert response.json() == item


async def test_unknown_id_is_404_for_read_update_and_delete(client: httpx.AsyncClient) -> None:
    for method, body in (("GET", None), ("PATCH", {"price": "1"}), ("DELETE", None)):
        response = await client.request(method, "/api/items/999999", json=body)
        assert response.status_code == 404, method
        assert response.json() == {"detail": "item 999999 not found"}


async def test_duplicate_name_is_409_on_create(client: httpx.AsyncClient) -> None:
    await create(client, "Teapot")
    response = await client.post("/api/items", json={"name": "Teapot", "price": "1"})
    assert response.status_code == 409
    assert "Teapot" in response.json()["detail"]


async def test_duplicate_name_is_409_on_update_and_leaves_item_unchanged(
    client: httpx.AsyncClient,
) -> None:
    await create(client, "Mug")
    other = await create(client, "Bowl")
    response = await client.patch(f"/api/items/{other['id']}", json={"name": "Mug"})
    assert response.status_code == 409
    assert (await client.get(f"/api/items/{other['id']}")).json()["name"] == "Bowl"


async def test_patch_changes_only_the_fields_sent(client: httpx.AsyncClient) -> None:
    item = await create(client, "Jug", price="3.00", description="blue")
    response = await client.patch(f"/api/items/{item['id']}", json={"price": "4.25"})
    assert response.status_code == 200
    updated = response.json()
    assert updated["price"] == "4.25"
    assert updated["name"] == "Jug"
    assert updated["description"] == "blue"
    assert updated["updated_at"] > item["updated_at"]
    assert updated["created_at"] == item["created_at"]


async def test_patch_can_clear_the_description(client: httpx.AsyncClient) -> None:
    item = await create(client, "Plate", description="round")
    response = await client.patch(f"/api/items/{item['id']}", json={"description": None})
    assert response.status_code == 200
    assert response.json()["description"] is None


async def test_empty_patch_returns_the_item_unchanged(client: httpx.AsyncClient) -> None:
    item = await create(client, "Fork")
    response = await client.patch(f"/api/items/{item['id']}", json={})
    assert response.status_code == 200
    assert response.json() == item


async def test_delete_removes_the_item(client: httpx.AsyncClient) -> None:
    item = await create(client, "Knife")
    response = await client.delete(f"/api/items/{item['id']}")
    assert response.status_code == 204
    assert response.content == b""
    assert (await client.get(f"/api/items/{item['id']}")).status_code == 404


async def test_list_defaults_to_50_and_reports_the_total(client: httpx.AsyncClient) -> None:
    for number in range(55):
        await create(client, f"item-{number:02d}")
    page = (await client.get("/api/items")).json()
    assert page["limit"] == 50
    assert page["offset"] == 0
    assert page["total"] == 55
    assert len(page["items"]) == 50


async def test_list_pages_neither_repeat_nor_skip(client: httpx.AsyncClient) -> None:
    for number in range(7):
        await create(client, f"p{number}", price="5.00")  # one shared sort value
    seen = []
    for offset in range(0, 7, 3):
        page = (
            await client.get("/api/items", params={"limit": 3, "offset": offset, "sort": "price"})
        ).json()
        seen += [item["name"] for item in page["items"]]
    assert sorted(seen) == [f"p{number}" for number in range(7)]
    assert len(seen) == 7


async def test_list_sorts_descending_with_a_minus(client: httpx.AsyncClient) -> None:
    for name, price in (("cheap", "1.00"), ("dear", "99.00"), ("middling", "10.00")):
        await create(client, name, price=price)
    page = (await client.get("/api/items", params={"sort": "-price"})).json()
    assert [item["name"] for item in page["items"]] == ["dear", "middling", "cheap"]
    page = (await client.get("/api/items", params={"sort": "name"})).json()
    assert [item["name"] for item in page["items"]] == ["cheap", "dear", "middling"]


async def test_list_offset_past_the_end_is_an_empty_page(client: httpx.AsyncClient) -> None:
    await create(client, "only")
    page = (await client.get("/api/items", params={"offset": 10})).json()
    assert page["items"] == []
    assert page["total"] == 1


async def test_list_limit_bounds(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/items", params={"limit": 500})).status_code == 200
    for bad in (0, -1, 501, 10**30):
        response = await client.get("/api/items", params={"limit": bad})
        assert response.status_code == 422, bad
        assert response.json()["detail"][0]["loc"] == ["query", "limit"]
    response = await client.get("/api/items", params={"offset": -1})
    assert response.status_code == 422
    response = await client.get("/api/items", params={"sort": "password"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "sort"]
