"""The items resource: /api/items."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Response, status

from berth.db import SessionDep
from berth.errors import Problem
from berth.routing import JSONRoute

from ..repository import DuplicateNameError, ItemRepository, ItemSort
from ..schemas import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    ItemCreate,
    ItemPage,
    ItemRead,
    ItemUpdate,
)

router = APIRouter(prefix="/api/items", tags=["items"], route_class=JSONRoute)

# Ids are Postgres bigints: a larger number can't name an item, so it's a 422, not a 500.
ItemId = Annotated[int, Path(ge=1, le=2**63 - 1)]
NOT_FOUND: dict[int | str, dict[str, object]] = {404: {"model": Problem}}
CONFLICT: dict[int | str, dict[str, object]] = {409: {"model": Problem}}


def _not_found(item_id: int) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"item {item_id} not found")


def _conflict(exc: DuplicateNameError) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, str(exc))


@router.get("", response_model=ItemPage)
async def list_items(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    sort: Annotated[ItemSort, Query(description="Sort field; prefix with - to descend")] = "id",
) -> ItemPage:
    items, total = await ItemRepository(session).page(limit=limit, offset=offset, sort=sort)
    return ItemPage(
        items=[ItemRead.model_validate(item) for item in items],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ItemRead, responses=CONFLICT)
async def create_item(body: ItemCreate, session: SessionDep, response: Response) -> ItemRead:
    try:
        item = await ItemRepository(session).create(body.model_dump())
    except DuplicateNameError as exc:
        raise _conflict(exc) from None
    response.headers["Location"] = f"{router.prefix}/{item.id}"
    return ItemRead.model_validate(item)


@router.get("/{item_id}", response_model=ItemRead, responses=NOT_FOUND)
async def read_item(item_id: ItemId, session: SessionDep) -> ItemRead:
    item = await ItemRepository(session).get(item_id)
    if item is None:
        raise _not_found(item_id)
    return ItemRead.model_validate(item)


@router.patch("/{item_id}", response_model=ItemRead, responses={**NOT_FOUND, **CONFLICT})
async def update_item(item_id: ItemId, body: ItemUpdate, session: SessionDep) -> ItemRead:
    changes = body.model_dump(exclude_unset=True)
    repository = ItemRepository(session)
    try:
        item = await (repository.update(item_id, changes) if changes else repository.get(item_id))
    except DuplicateNameError as exc:
        raise _conflict(exc) from None
    if item is None:
        raise _not_found(item_id)
    return ItemRead.model_validate(item)


@router.delete("/{item_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
async def delete_item(item_id: ItemId, session: SessionDep) -> None:
    if not await ItemRepository(session).delete(item_id):
        raise _not_found(item_id)
