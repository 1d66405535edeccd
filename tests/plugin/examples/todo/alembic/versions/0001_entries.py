"""entries"""

import sqlalchemy as sa
from alembic import op

revision = "0001_entries"
down_revision = None


def upgrade() -> None:
    op.create_table("entries", sa.Column("id", sa.Integer, primary_key=True), sa.Column("title", sa.String(200)))


def downgrade() -> None:
    op.drop_table("entries")
