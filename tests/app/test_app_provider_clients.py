"""The provider interface, the offline sandbox and the registry."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from dashtam.core.config import Settings
from dashtam.providers import (
    ProviderClient,
    ProviderError,
    ProviderRegistry,
    SandboxProvider,
    TokenSet,
    UnknownProviderError,
)


def sandbox(secret: str = "s3cret") -> SandboxProvider:
    return SandboxProvider(
        client_id="cid", client_secret=secret, authorize_url="https://auth.example/authorize", scopes=["a", "b"]
    )


def test_sandbox_is_a_provider_client() -> None:
    assert isinstance(sandbox(), ProviderClient)


def test_authorization_url_carries_the_oauth_parameters() -> None:
    url = urlsplit(sandbox().authorization_url("st&ate", "http://127.0.0.1:8182/callback"))
    assert (url.scheme, url.netloc, url.path) == ("https", "auth.example", "/authorize")
    assert parse_qs(url.query) == {
        "response_type": ["code"],
        "client_id": ["cid"],
        "redirect_uri": ["http://127.0.0.1:8182/callback"],
        "scope": ["a b"],
        "state": ["st&ate"],
    }


@pytest.mark.asyncio
async def test_exchange_is_deterministic_per_code_and_secret() -> None:
    redirect = "http://127.0.0.1:8182/callback"
    one = await sandbox().exchange_code("code-1", redirect)
    assert one.access_token == (await sandbox().exchange_code("code-1", redirect)).access_token
    assert one.access_token != (await sandbox().exchange_code("code-2", redirect)).access_token
    assert one.access_token != (await sandbox("other").exchange_code("code-1", redirect)).access_token
    assert one.access_token != one.refresh_token
    assert (one.token_type, one.expires_in, one.scope) == ("Bearer", 3600, "a b")


@pytest.mark.asyncio
@pytest.mark.parametrize("code", ["", "denied", "denied-by-user", "bad\ncode", "x" * 513])
async def test_exchange_refuses_denied_and_malformed_codes(code: str) -> None:
    with pytest.raises(ProviderError) as refused:
        await sandbox().exchange_code(code, "http://127.0.0.1:8182/callback")
    assert refused.value.retryable is False


def test_issued_codes_are_per_state() -> None:
    assert sandbox().issue_code("s1") == sandbox().issue_code("s1") != sandbox().issue_code("s2")


def test_token_set_repr_hides_the_tokens() -> None:
    tokens = TokenSet(access_token="AT-secret", refresh_token="RT-secret", expires_in=60)
    assert "secret" not in repr(tokens)


def test_registry_picks_the_configured_provider() -> None:
    settings = Settings(_env_file=None, ENVIRONMENT="testing", PROVIDER_CLIENT_ID="from-settings")
    registry = ProviderRegistry.from_settings(settings)
    assert registry.keys == ["sandbox"]
    client = registry.get("sandbox")
    assert isinstance(client, SandboxProvider)
    assert client.client_id == "from-settings"
    with pytest.raises(UnknownProviderError, match="provider_key 'plaid'"):
        registry.get("plaid")


def test_registry_refuses_an_unknown_provider_name() -> None:
    settings = Settings(_env_file=None, ENVIRONMENT="testing", PROVIDER_NAME="nosuch")
    with pytest.raises(UnknownProviderError, match="PROVIDER_NAME='nosuch' is not a built-in provider"):
        ProviderRegistry.from_settings(settings)
