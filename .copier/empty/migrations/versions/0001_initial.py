"""The service's first revision, made before it has any table.

Readiness waits for the database to be at the code's head revision, so even a service with
no tables starts from one. Your first table's migration (`make makemigration`) follows it.
"""

revision = "0001"
down_revision = None


def upgrade() -> None:
    """Nothing to create yet."""


def downgrade() -> None:
    """Nothing to drop."""
