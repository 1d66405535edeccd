"""A user's connections to financial providers, their OAuth tokens and the audit trail."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, Enum, ForeignKey, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from dashtam.models.base import Base, Timestamps, UUIDPrimaryKey, utcnow

if TYPE_CHECKING:
    from dashtam.models.user import User


class ConnectionStatus(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    ERROR = "error"
    REVOKED = "revoked"


class Provider(UUIDPrimaryKey, Timestamps, Base):
    """A user's connection to one provider under an alias of the user's choosing."""

    __tablename__ = "providers"
    __table_args__ = (UniqueConstraint("user_id", "alias"),)

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    provider_key: Mapped[str] = mapped_column(String(64))
    alias: Mapped[str] = mapped_column(String(100))

    user: Mapped[User] = relationship(back_populates="providers")
    connection: Mapped[ProviderConnection | None] = relationship(
        back_populates="provider", cascade="all, delete-orphan", passive_deletes=True, uselist=False
    )
    token: Mapped[ProviderToken | None] = relationship(
        back_populates="provider", cascade="all, delete-orphan", passive_deletes=True, uselist=False
    )
    audit_logs: Mapped[list[ProviderAuditLog]] = relationship(
        back_populates="provider", cascade="all, delete-orphan", passive_deletes=True
    )


class ProviderConnection(UUIDPrimaryKey, Timestamps, Base):
    """The state of a provider's link: whether it is authorised, and when it last synced."""

    __tablename__ = "provider_connections"

    provider_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("providers.id", ondelete="CASCADE"), unique=True)
    status: Mapped[ConnectionStatus] = mapped_column(
        Enum(ConnectionStatus, name="connection_status", values_callable=lambda e: [m.value for m in e]),
        default=ConnectionStatus.PENDING,
    )
    connected_at: Mapped[datetime | None]
    last_sync_at: Mapped[datetime | None]
    error_message: Mapped[str | None] = mapped_column(Text)

    provider: Mapped[Provider] = relationship(back_populates="connection")


class ProviderToken(UUIDPrimaryKey, Timestamps, Base):
    """OAuth tokens, stored only as ciphertext (see dashtam.core.security)."""

    __tablename__ = "provider_tokens"

    provider_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("providers.id", ondelete="CASCADE"), unique=True)
    access_token_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    refresh_token_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary)
    token_type: Mapped[str] = mapped_column(String(32), default="Bearer")
    scope: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime | None]

    provider: Mapped[Provider] = relationship(back_populates="token")


class ProviderAuditLog(UUIDPrimaryKey, Base):
    """What happened to a provider connection, by whom, when. Kept with the provider, gone with it."""

    __tablename__ = "provider_audit_logs"

    provider_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("providers.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    action: Mapped[str] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    ip_address: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    provider: Mapped[Provider] = relationship(back_populates="audit_logs")
