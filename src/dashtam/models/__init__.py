"""The Dashtam schema. `Base.metadata` is what migrations are checked against."""

from dashtam.models.base import Base
from dashtam.models.provider import (
    ConnectionStatus,
    Provider,
    ProviderAuditLog,
    ProviderConnection,
    ProviderToken,
)
from dashtam.models.user import User

__all__ = [
    "Base",
    "ConnectionStatus",
    "Provider",
    "ProviderAuditLog",
    "ProviderConnection",
    "ProviderToken",
    "User",
]
