"""The API's request and response bodies."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.models import DESCRIPTION_MAX_LENGTH, NAME_MAX_LENGTH, PRICE_DIGITS, PRICE_SCALE

MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50


def _storable_text(value: str) -> str:
    # Postgres text cannot hold NUL, and a lone surrogate cannot be encoded as UTF-8:
    # both would fail deep in the driver, so refuse them here with a 422.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


Name = Annotated[
    str,
    Field(min_length=1, max_length=NAME_MAX_LENGTH, examples=["Espresso cup"]),
    AfterValidator(_storable_text),
]
Description = Annotated[
    str, Field(max_length=DESCRIPTION_MAX_LENGTH), AfterValidator(_storable_text)
]
Price = Annotated[
    Decimal,
    Field(
        ge=0,
        max_digits=PRICE_DIGITS,
        decimal_places=PRICE_SCALE,
        allow_inf_nan=False,
        examples=["12.50"],
    ),
]


class ItemCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: Name
    description: Description | None = None
    price: Price


class ItemUpdate(BaseModel):
    """A partial update: only the fields sent are changed."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: Name = None  # type: ignore[assignment]  # absent means unchanged; null is refused
    description: Description | None = None
    price: Price = None  # type: ignore[assignment]


class ItemRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    description: str | None
    price: Decimal
    created_at: datetime
    updated_at: datetime


class ItemPage(BaseModel):
    items: list[ItemRead]
    total: int
    limit: int
    offset: int


class Problem(BaseModel):
    """The body of every error response that is not a validation error."""

    detail: str
