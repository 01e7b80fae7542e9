"""Alembic's entry point for this service's migrations (`alembic upgrade head`).

Berth runs them (`berth/migrations.py`): under an advisory lock, so concurrent runs are safe,
in one transaction, with one line naming a failing revision. This file only says which
models autogenerate compares against.
"""

from __future__ import annotations

from app.models import Base
from berth.migrations import run_migrations

run_migrations(Base.metadata)
