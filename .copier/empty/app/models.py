"""Database tables. Alembic's autogenerate compares migrations against these.

None yet: add a table as a class of `Base`, then `make makemigration m="add notes"` writes
its migration (README, "Make it yours", adds a whole resource step by step).
"""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

from berth.models import NAMING_CONVENTION


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
