"""Routers, one module per resource, and the route class they share."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

# Python refuses to convert longer digit strings to int (CVE-2020-10735); refuse them as
# malformed JSON (422) instead of letting the parser's ValueError become a 400.
MAX_INTEGER_DIGITS = 4300


def _bounded_int(literal: str) -> int:
    if len(literal.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise json.JSONDecodeError(
            f"integer literal longer than {MAX_INTEGER_DIGITS} digits", literal, 0
        )
    return int(literal)


class _JSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = json.loads(await self.body(), parse_int=_bounded_int)
        return self._json


class JSONRoute(APIRoute):
    """Parses request bodies with `_JSONRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            return await handler(_JSONRequest(request.scope, request.receive))

        return bounded
