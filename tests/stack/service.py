"""The service's own requests, as the stack tests send them: one place names them, so the
rest of tests/stack/ tests the stack whatever the service serves.

Berth's are the items example's. A project generated without the example gets the empty
service's version of this file (.copier/empty/tests/stack/service.py): its reads ask a
health endpoint, and the tests that need more skip, each saying why.
"""

from __future__ import annotations

import time

import httpx
import pytest

# A GET that the app answers from the database with 200: its path (also its route, as the
# metrics and the access log name it) and its query.
READ_PATH = "/api/items"
READ_PARAMS = {"limit": 5}

# The tables the service's migrations create, besides Alembic's own.
TABLES = ("items",)

# Tests that need the service's own reads and writes (`read`, `write` and their answers).
needs_resource = pytest.mark.skipif(False, reason="the items example reads and writes")
# Tests that use the items example's routes or table by name: kept to prove the stack with
# a real resource, and left out, by a skip, of a service generated without the example.
example_only = pytest.mark.skipif(False, reason="the items example is here")


def read(client: httpx.Client, worker: int, number: int) -> tuple[httpx.Response, str]:
    return client.get(READ_PATH, params=READ_PARAMS), ""


def write(client: httpx.Client, worker: int, number: int) -> tuple[httpx.Response, str]:
    """Creates a row; the tag says which (the item's name)."""
    name = f"load-{worker}-{number}-{time.time_ns()}"
    return client.post("/api/items", json={"name": name, "price": "1.00"}), name


def mixed(client: httpx.Client, worker: int, number: int) -> tuple[httpx.Response, str]:
    """A service's usual traffic: one write for two reads."""
    return (write if number % 3 == 0 else read)(client, worker, number)
