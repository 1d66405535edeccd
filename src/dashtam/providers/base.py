"""What the application needs from an OAuth provider, and nothing more.

Handlers depend on `ProviderClient`, never on a concrete provider, so that tests and offline
development swap in the sandbox (or a fake) through the registry dependency.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable


class ProviderError(Exception):
    """The provider refused or failed the exchange.

    `retryable` separates "the provider is down, try again" (a 502) from "this code is no good,
    start over" (a 400).
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True, repr=False)
class TokenSet:
    """Tokens from a code exchange. `repr` hides the secrets so they never reach a log line."""

    access_token: str
    refresh_token: str | None = None
    token_type: str = "Bearer"
    expires_in: int | None = None
    scope: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def expires_at(self, now: datetime) -> datetime | None:
        return None if self.expires_in is None else now + timedelta(seconds=self.expires_in)

    def __repr__(self) -> str:
        return (
            f"TokenSet(access_token='***', refresh_token={'***' if self.refresh_token else None!r}, "
            f"token_type={self.token_type!r}, expires_in={self.expires_in!r}, scope={self.scope!r})"
        )


@runtime_checkable
class ProviderClient(Protocol):
    """One OAuth 2.0 authorization-code provider."""

    key: str

    def authorization_url(self, state: str, redirect_uri: str) -> str:
        """Where to send the user to grant access; the provider redirects back with code and state."""
        ...

    async def exchange_code(self, code: str, redirect_uri: str) -> TokenSet:
        """Trade an authorization code for tokens; raises ProviderError if the provider refuses."""
        ...
