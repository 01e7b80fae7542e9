"""Invalid input gets a 422 that names the field, never a 500."""

from __future__ import annotations

import httpx
import pytest


def field_errors(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {
        ".".join(str(part) for part in error["loc"]): error["msg"]
        for error in response.json()["detail"]
    }


async def post_raw(client: httpx.AsyncClient, raw: bytes) -> httpx.Response:
    return await client.post(
        "/api/items", content=raw, headers={"content-type": "application/json"}
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"price": "1"}, "body.name"),
        ({"name": "x"}, "body.price"),
        ({"name": "", "price": "1"}, "body.name"),
        ({"name": "   ", "price": "1"}, "body.name"),
        ({"name": "x" * 201, "price": "1"}, "body.name"),
        ({"name": "x", "price": "1", "description": "d" * 2001}, "body.description"),
        ({"name": 5, "price": "1"}, "body.name"),
        ({"name": "x", "price": "cheap"}, "body.price"),
        ({"name": "x", "price": -1}, "body.price"),
        ({"name": "x", "price": "1.001"}, "body.price"),
        ({"name": "x", "price": 1e20}, "body.price"),
        ({"name": "x", "price": "NaN"}, "body.price"),
        ({"name": "x", "price": "Infinity"}, "body.price"),
        ({"name": "x", "price": True}, "body.price"),
        ({"name": "x\x00y", "price": "1"}, "body.name"),
        ({"name": "x", "price": "1", "colour": "red"}, "body.colour"),
        ({"name": ["x"], "price": "1"}, "body.name"),
    ],
)
async def test_bad_create_bodies_are_422_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, object], field: str
) -> None:
    assert field in field_errors(await client.post("/api/items", json=body))


async def test_lone_surrogate_is_422(client: httpx.AsyncClient) -> None:
    raw = b'{"name": "bad \\ud800 text", "price": "1"}'
    response = await post_raw(client, raw)
    assert "body.name" in field_errors(response)


async def test_huge_number_is_422(client: httpx.AsyncClient) -> None:
    raw = b'{"name": "x", "price": 1e400}'
    response = await post_raw(client, raw)
    assert "body.price" in field_errors(response)


async def test_number_with_thousands_of_digits_is_422(client: httpx.AsyncClient) -> None:
    raw = b'{"name": "x", "price": ' + b"9" * 5000 + b"}"
    response = await post_raw(client, raw)
    assert response.status_code == 422


async def test_malformed_json_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/items", content=b'{"name": "x", ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "JSON" in response.text


async def test_non_object_body_is_422(client: httpx.AsyncClient) -> None:
    item = (await client.post("/api/items", json={"name": "target", "price": "1"})).json()
    for raw in (b"[]", b'"x"', b"null", b"12", b"5.5", b"-1.4e16", b"true"):
        response = await post_raw(client, raw)
        assert response.status_code == 422, raw
        response = await client.patch(
            f"/api/items/{item['id']}", content=raw, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422, raw


async def test_patch_refuses_null_for_required_fields(client: httpx.AsyncClient) -> None:
    item = (await client.post("/api/items", json={"name": "n", "price": "1"})).json()
    errors = field_errors(
        await client.patch(f"/api/items/{item['id']}", json={"name": None, "price": None})
    )
    assert {"body.name", "body.price"} <= set(errors)


async def test_patch_refuses_unknown_fields(client: httpx.AsyncClient) -> None:
    item = (await client.post("/api/items", json={"name": "n", "price": "1"})).json()
    errors = field_errors(await client.patch(f"/api/items/{item['id']}", json={"id": 7}))
    assert "body.id" in errors


@pytest.mark.parametrize("item_id", ["abc", "0", "-5", "1.5", str(2**63), "9" * 40])
async def test_bad_ids_are_422(client: httpx.AsyncClient, item_id: str) -> None:
    for method in ("GET", "DELETE"):
        response = await client.request(method, f"/api/items/{item_id}")
        assert "path.item_id" in field_errors(response), method


async def test_largest_bigint_id_is_a_plain_404(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/api/items/{2**63 - 1}")
    assert response.status_code == 404


async def test_non_utf8_body_is_422(client: httpx.AsyncClient) -> None:
    response = await post_raw(client, b'{"name": "\xff\xfe", "price": "1"}')
    assert response.status_code == 422
    assert "not valid UTF-8" in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize("price", ["1e2", "+1", " 1", "1.", ".5", "12.500", "0x10", "١٢"])
async def test_price_strings_must_be_plain_decimals(client: httpx.AsyncClient, price: str) -> None:
    assert "body.price" in field_errors(
        await client.post("/api/items", json={"name": "x", "price": price})
    )


async def test_price_numbers_are_taken_exactly(client: httpx.AsyncClient) -> None:
    # As floats, 0.29 and 0.1 + 0.2 would be 0.28999... and 0.30000000000000004.
    response = await post_raw(client, b'{"name": "exact", "price": 0.29}')
    assert response.json()["price"] == "0.29"
    response = await post_raw(client, b'{"name": "trailing zero", "price": 12.500}')
    assert response.json()["price"] == "12.50"
    response = await post_raw(client, b'{"name": "noisy", "price": 0.30000000000000004}')
    assert "body.price" in field_errors(response)


async def test_names_are_stored_verbatim(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/items", json={"name": "  padded  ", "price": "1"})
    assert response.json()["name"] == "  padded  "


async def test_405_lists_every_allowed_method(client: httpx.AsyncClient) -> None:
    response = await client.put("/api/items")
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}
    response = await client.post("/api/items/1")
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD", "PATCH", "DELETE"}
