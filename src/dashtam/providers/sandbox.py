"""A provider that runs in-process, so development and tests need no network and no account.

It behaves like a strict OAuth server where that matters to the application: its authorization
URL carries the usual parameters, it refuses malformed and denied codes, and its tokens are
derived from the code with an HMAC under the client secret, so the same code always yields the
same tokens (tests can predict them) while different codes or secrets never collide.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlencode

from dashtam.core.config import Settings
from dashtam.providers.base import ProviderError, TokenSet

# Codes the sandbox refuses, so the failure path of the exchange can be exercised on purpose.
DENIED_CODE_PREFIX = "denied"
TOKEN_LIFETIME_SECONDS = 3600


class SandboxProvider:
    key = "sandbox"

    def __init__(self, *, client_id: str, client_secret: str, authorize_url: str, scopes: list[str]) -> None:
        self.client_id = client_id
        self._secret = client_secret.encode("utf-8")
        self.authorize_url = authorize_url
        self.scopes = scopes

    @classmethod
    def from_settings(cls, settings: Settings) -> SandboxProvider:
        return cls(
            client_id=settings.PROVIDER_CLIENT_ID,
            client_secret=settings.PROVIDER_CLIENT_SECRET.get_secret_value(),
            authorize_url=settings.PROVIDER_AUTHORIZE_URL,
            scopes=settings.provider_scopes,
        )

    def authorization_url(self, state: str, redirect_uri: str) -> str:
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": redirect_uri,
                "scope": " ".join(self.scopes),
                "state": state,
            }
        )
        return f"{self.authorize_url}?{query}"

    def issue_code(self, state: str) -> str:
        """The code the sandbox's consent step would hand back for `state` (dev and tests)."""
        return "sbx_code_" + self._derive("code", state)[:32]

    async def exchange_code(self, code: str, redirect_uri: str) -> TokenSet:
        if not code or len(code) > 512 or not code.isascii() or not code.isprintable():
            raise ProviderError("invalid_request: the authorization code is empty or malformed")
        if code.startswith(DENIED_CODE_PREFIX):
            raise ProviderError("invalid_grant: the authorization code was refused by the sandbox provider")
        material = f"{code}\n{redirect_uri}"
        return TokenSet(
            access_token="sbx_at_" + self._derive("access", material),
            refresh_token="sbx_rt_" + self._derive("refresh", material),
            token_type="Bearer",
            expires_in=TOKEN_LIFETIME_SECONDS,
            scope=" ".join(self.scopes),
        )

    def _derive(self, purpose: str, material: str) -> str:
        return hmac.new(self._secret, f"{purpose}\n{material}".encode(), hashlib.sha256).hexdigest()
