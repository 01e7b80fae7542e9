"""The service's own requests, as the stack tests send them: one place names them, so the
rest of tests/stack/ tests the stack whatever the service serves.

The service has no resource yet: reads ask /health/ready (answered from the database), and
the tests that need more skip, each saying why. When it has its first resource, name its
read and write here (Berth's own tests/stack/service.py does it for the items example),
list its tables, and make `needs_resource` run: `pytest.mark.skipif(False, reason=...)`.
"""

from __future__ import annotations

import httpx
import pytest

# A GET that the app answers from the database with 200: its path (also its route, as the
# metrics and the access log name it) and its query.
READ_PATH = "/health/ready"
READ_PARAMS: dict[str, int] = {}

# The tables the service's migrations create, besides Alembic's own.
TABLES: tuple[str, ...] = ()

# Tests that need the service's own reads and writes (`read`, `write` and their answers).
needs_resource = pytest.mark.skip(
    reason="the service has no resource yet: name its reads and writes in tests/stack/service.py"
)
# Tests that use the items example's routes or table by name: this service was generated
# without the example. Write their like for your own resource, next to them.
example_only = pytest.mark.skip(reason="uses the items example, which this service left out")


def read(client: httpx.Client, worker: int, number: int) -> tuple[httpx.Response, str]:
    return client.get(READ_PATH, params=READ_PARAMS), ""


def write(client: httpx.Client, worker: int, number: int) -> tuple[httpx.Response, str]:
    """Nothing to write yet: only tests marked `needs_resource` or `example_only` call it."""
    pytest.skip("the service has no resource to write yet: name one in tests/stack/service.py")


def mixed(client: httpx.Client, worker: int, number: int) -> tuple[httpx.Response, str]:
    """A service's usual traffic: with nothing to write yet, reads only."""
    return read(client, worker, number)
