"""add bookmarks.visits

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-03 14:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("bookmarks", sa.Column("visits", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("bookmarks", "visits")
