"""The API's request and response bodies.

Each input field's published JSON Schema says exactly what its validator accepts, so the
OpenAPI document is a contract a client (or a fuzzer) can rely on: nothing it calls valid is
refused, and nothing it calls invalid is accepted.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)

from .models import DESCRIPTION_MAX_LENGTH, NAME_MAX_LENGTH, PRICE_DIGITS, PRICE_SCALE

MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50

WHOLE_DIGITS = PRICE_DIGITS - PRICE_SCALE
MAX_PRICE = Decimal(f"{'9' * WHOLE_DIGITS}.{'9' * PRICE_SCALE}")
PRICE_STRING = re.compile(rf"^[0-9]{{1,{WHOLE_DIGITS}}}(\.[0-9]{{1,{PRICE_SCALE}}})?$")
NO_NUL = r"^[^\x00]*$"
NOT_BLANK = r"\S"


def _storable(value: str) -> str:
    # Postgres text cannot hold NUL, and a lone surrogate cannot be encoded as UTF-8:
    # both would fail deep in the driver, so refuse them here with a 422.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


def _not_blank(value: str) -> str:
    if not re.search(NOT_BLANK, value):
        raise ValueError("must contain a non-space character")
    return value


def _price_text(value: Any) -> Any:
    if isinstance(value, str) and not PRICE_STRING.match(value):
        raise ValueError('must be a decimal string such as "12.50"')
    return value


Name = Annotated[
    str,
    Field(min_length=1, max_length=NAME_MAX_LENGTH),
    AfterValidator(_storable),
    AfterValidator(_not_blank),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": NAME_MAX_LENGTH,
            "pattern": rf"^[^\x00]*{NOT_BLANK}[^\x00]*$",
            "examples": ["Espresso cup"],
        },
        mode="validation",
    ),
]
Description = Annotated[
    str,
    Field(max_length=DESCRIPTION_MAX_LENGTH),
    AfterValidator(_storable),
    WithJsonSchema(
        {"type": "string", "maxLength": DESCRIPTION_MAX_LENGTH, "pattern": NO_NUL},
        mode="validation",
    ),
]
# JSON numbers arrive as Decimal (see berth/routing.py), so 0.29 is exactly 0.29, never a float.
Price = Annotated[
    Decimal,
    BeforeValidator(_price_text),
    Field(ge=0, le=MAX_PRICE, max_digits=PRICE_DIGITS, decimal_places=PRICE_SCALE),
    WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "number",
                    "minimum": 0,
                    "maximum": float(MAX_PRICE),
                    "multipleOf": 0.01,
                },
                {"type": "string", "pattern": PRICE_STRING.pattern},
            ],
            "examples": ["12.50"],
        },
        mode="validation",
    ),
]


class RequestBody(BaseModel):
    """A JSON object with no unknown fields. FastAPI validates bodies with
    from_attributes=True, which would read a bare JSON number (a Decimal here) as an object
    with no attributes: an all-optional model would accept it."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _must_be_an_object(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")
        return data


class ItemCreate(RequestBody):
    name: Name
    description: Description | None = None
    price: Price


class ItemUpdate(RequestBody):
    """A partial update: only the fields sent are changed."""

    name: Name = None  # type: ignore[assignment]  # absent means unchanged; null is refused
    description: Description | None = None
    price: Price = None  # type: ignore[assignment]


class ItemRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    description: str | None
    price: Annotated[Decimal, Field(examples=["12.50"])]
    created_at: datetime
    updated_at: datetime


class ItemPage(BaseModel):
    items: list[ItemRead]
    total: int
    limit: int
    offset: int
