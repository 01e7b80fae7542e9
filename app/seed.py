"""Demo data: the demo's seed service runs this module (`[--reset] [--count N]`).

Makes the same few thousand items every time (a fixed random seed), with varied names,
descriptions and prices. Running it again adds nothing: items are inserted by name, and
names that exist are left alone. `--reset` empties the table first, so the demo returns to
exactly its seeded state.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import SQLAlchemyError

from berth.db import Database, describe
from berth.preflight import EX_CONFIG
from berth.settings import ConfigError, load_settings

from .models import Item

DEFAULT_COUNT = 3000
SEED = 20261124
BATCH = 500

ADJECTIVES = [
    "Amber", "Arctic", "Brushed", "Classic", "Coastal", "Compact", "Copper", "Crimson",
    "Everyday", "Field", "Folding", "Forest", "Glazed", "Hand-thrown", "Heritage", "Indigo",
    "Linen", "Matte", "Midnight", "Modular", "Nordic", "Olive", "Pocket", "Rustic", "Saffron",
    "Slate", "Smoked", "Speckled", "Stoneware", "Studio", "Tall", "Travel", "Walnut", "Woven",
]  # fmt: skip
MATERIALS = [
    "oak", "ceramic", "cast-iron", "linen", "enamel", "bamboo", "glass", "leather", "steel",
    "wool", "porcelain", "cork", "brass", "cotton", "stone", "copper", "birch", "clay",
]  # fmt: skip
THINGS = [
    ("mug", 8, 28), ("teapot", 25, 90), ("chopping board", 18, 75), ("skillet", 30, 140),
    ("lamp", 35, 260), ("throw", 40, 180), ("serving bowl", 15, 70), ("notebook", 6, 24),
    ("backpack", 45, 220), ("vase", 12, 95), ("candle", 9, 38), ("clock", 30, 150),
    ("pour-over kettle", 35, 120), ("side table", 80, 420), ("plant pot", 10, 60),
    ("desk tidy", 12, 48), ("wall shelf", 35, 160), ("tote bag", 14, 55), ("apron", 18, 62),
    ("coaster set", 9, 32),
]  # fmt: skip
QUALITIES = [
    "Made in small batches", "Dishwasher safe", "Finished by hand", "Ships flat",
    "Lifetime guarantee", "Sustainably sourced", "Gift boxed", "Oil before first use",
    "Each one slightly different", "Designed to stack",
]  # fmt: skip


def demo_items(count: int = DEFAULT_COUNT) -> list[dict[str, Any]]:
    """`count` distinct items, the same ones on every call."""
    rng = random.Random(SEED)  # noqa: S311 - demo data, not secrets
    items: list[dict[str, Any]] = []
    names: set[str] = set()
    while len(items) < count:
        adjective, material = rng.choice(ADJECTIVES), rng.choice(MATERIALS)
        thing, low, high = rng.choice(THINGS)
        name = f"{adjective} {material} {thing}"
        if name in names:
            name = f"{name} No. {len(items) + 1}"
        names.add(name)
        cents = rng.randint(low * 100, high * 100)
        price = Decimal(cents - cents % 5) / 100  # prices end in 0 or 5 cents
        qualities = ", ".join(rng.sample(QUALITIES, k=rng.randint(1, 3))).lower()
        article = "An" if material[0] in "aeiou" else "A"
        description = (
            f"{article} {material} {thing}. {qualities.capitalize()}."
            if rng.random() > 0.1
            else None  # some items have no description
        )
        items.append({"name": name, "description": description, "price": price})
    return items


async def seed(count: int, reset: bool) -> tuple[int, int]:
    """Returns (items added, items in the table)."""
    database = Database.from_settings(load_settings())
    try:
        async with database.sessionmaker() as session:
            if reset:
                await session.execute(text("TRUNCATE items RESTART IDENTITY"))
            added = 0
            items = demo_items(count)
            for start in range(0, len(items), BATCH):
                statement = (
                    insert(Item)
                    .values(items[start : start + BATCH])
                    .on_conflict_do_nothing(index_elements=["name"])
                    .returning(Item.id)
                )
                added += len((await session.execute(statement)).all())
            total = await session.scalar(select(func.count()).select_from(Item))
            await session.commit()
        return added, total or 0
    finally:
        await database.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description="Seed the demo data (idempotent).")
    parser.add_argument("--reset", action="store_true", help="empty the items table first")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="items to make")
    arguments = parser.parse_args()
    try:
        added, total = asyncio.run(seed(arguments.count, arguments.reset))
    except ConfigError as exc:
        print(f"berth: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except (SQLAlchemyError, OSError) as exc:
        print(f"berth: seeding failed, nothing was changed: {describe(exc)}", file=sys.stderr)
        return 1
    action = "reset and seeded" if arguments.reset else "seeded"
    print(f"berth: {action}: {added} items added, {total} in the table", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
