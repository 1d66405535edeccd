"""provider connections, tokens and audit logs

Revision ID: 0002_connections_tokens
Revises: 0001_users_providers
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_connections_tokens"
down_revision: str | None = "0001_users_providers"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

connection_status = sa.Enum("pending", "active", "error", "revoked", name="connection_status")


def _provider_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["provider_id"], ["providers.id"], name=f"fk_{table}_provider_id_providers", ondelete="CASCADE"
    )


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "provider_connections",
        sa.Column("provider_id", sa.Uuid(), nullable=False),
        sa.Column("status", connection_status, nullable=False),
        sa.Column("connected_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_sync_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        *_timestamps(),
        _provider_fk("provider_connections"),
        sa.PrimaryKeyConstraint("id", name="pk_provider_connections"),
        sa.UniqueConstraint("provider_id", name="uq_provider_connections_provider_id"),
    )
    op.create_table(
        "provider_tokens",
        sa.Column("provider_id", sa.Uuid(), nullable=False),
        sa.Column("access_token_encrypted", sa.LargeBinary(), nullable=False),
        sa.Column("refresh_token_encrypted", sa.LargeBinary(), nullable=True),
        sa.Column("token_type", sa.String(32), nullable=False),
        sa.Column("scope", sa.Text(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        *_timestamps(),
        _provider_fk("provider_tokens"),
        sa.PrimaryKeyConstraint("id", name="pk_provider_tokens"),
        sa.UniqueConstraint("provider_id", name="uq_provider_tokens_provider_id"),
    )
    op.create_table(
        "provider_audit_logs",
        sa.Column("provider_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("ip_address", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        _provider_fk("provider_audit_logs"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_provider_audit_logs_user_id_users", ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_provider_audit_logs"),
    )
    op.create_index("ix_provider_audit_logs_provider_id", "provider_audit_logs", ["provider_id"])


def downgrade() -> None:
    op.drop_index("ix_provider_audit_logs_provider_id", table_name="provider_audit_logs")
    op.drop_table("provider_audit_logs")
    op.drop_table("provider_tokens")
    op.drop_table("provider_connections")
    connection_status.drop(op.get_bind(), checkfirst=True)
