"""Queries, kept out of the routes so each route reads as HTTP only."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, get_args

from sqlalchemy import ColumnElement, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from .models import Item

ItemSort = Literal[
    "id", "-id", "name", "-name", "price", "-price",
    "created_at", "-created_at", "updated_at", "-updated_at",
]  # fmt: skip
ITEM_SORTS: tuple[str, ...] = get_args(ItemSort)


class DuplicateNameError(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"an item named {name!r} already exists")


@contextlib.contextmanager
def _unique_name(values: Mapping[str, Any]) -> Iterator[None]:
    try:
        yield
    except IntegrityError as exc:
        if getattr(exc.orig, "sqlstate", None) == "23505":  # unique_violation
            raise DuplicateNameError(str(values.get("name"))) from exc
        raise


class ItemRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, item_id: int) -> Item | None:
        return await self.session.get(Item, item_id)

    async def page(self, *, limit: int, offset: int, sort: ItemSort) -> tuple[Sequence[Item], int]:
        rows = await self.session.scalars(
            select(Item).order_by(*_ordering(sort)).limit(limit).offset(offset)
        )
        total = await self.session.scalar(select(func.count()).select_from(Item))
        return rows.all(), total or 0

    async def create(self, values: Mapping[str, Any]) -> Item:
        with _unique_name(values):
            result = await self.session.execute(insert(Item).values(**values).returning(Item))
            return result.scalar_one()

    async def update(self, item_id: int, changes: Mapping[str, Any]) -> Item | None:
        statement = (
            update(Item)
            .where(Item.id == item_id)
            .values(**changes, updated_at=func.now())
            .returning(Item)
        )
        with _unique_name(changes):
            return await self.session.scalar(statement)

    async def delete(self, item_id: int) -> bool:
        deleted = await self.session.scalar(
            delete(Item).where(Item.id == item_id).returning(Item.id)
        )
        return deleted is not None


def _ordering(sort: ItemSort) -> list[ColumnElement[Any]]:
    column = getattr(Item, sort.lstrip("-"))
    primary = column.desc() if sort.startswith("-") else column.asc()
    # id breaks ties, so pages never repeat or skip rows that share a sort value.
    return [primary] if sort.lstrip("-") == "id" else [primary, Item.id.asc()]
