"""The route class every router shares: strict JSON request bodies."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from decimal import Decimal
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
            body = await self.body()
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as exc:
                # JSON is UTF-8 (RFC 8259): anything else is malformed JSON, a 422.
                raise json.JSONDecodeError(
                    "body is not valid UTF-8", repr(body), exc.start
                ) from None
            # Decimal, not float: prices must arrive exactly as the client wrote them.
            self._json = json.loads(text, parse_int=_bounded_int, parse_float=Decimal)
        return self._json


class JSONRoute(APIRoute):
    """Parses request bodies with `_JSONRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if getattr(self, "body_field", None) is None:
            return handler  # no body to parse: no wrapper (2 us of a /health/live request)

        async def bounded(request: Request) -> Response:
            return await handler(_JSONRequest(request.scope, request.receive))

        return bounded
