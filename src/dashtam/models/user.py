"""Users of Dashtam."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from dashtam.models.base import Base, Timestamps, UUIDPrimaryKey

if TYPE_CHECKING:
    from dashtam.models.provider import Provider


class User(UUIDPrimaryKey, Timestamps, Base):
    __tablename__ = "users"

    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    is_active: Mapped[bool] = mapped_column(default=True, server_default="true")

    providers: Mapped[list[Provider]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True
    )
