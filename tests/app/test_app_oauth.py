"""The OAuth flow: one-time state in Redis (TTL, single use, bound to its provider), the code
exchange, encrypted token storage, and all-or-nothing writes."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from app_support import asgi_client, build_app, create_provider, create_user, start_authorization
from redis.asyncio import Redis
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from dashtam.core.config import Settings
from dashtam.core.security import encryptor_from_settings
from dashtam.models import ProviderAuditLog, ProviderConnection, ProviderToken
from dashtam.providers import ProviderError, ProviderRegistry, SandboxProvider, TokenSet


def callback_url(provider_id: str) -> str:
    return f"/api/v1/providers/{provider_id}/authorization/callback"


async def new_provider(client: httpx.AsyncClient) -> dict[str, str]:
    user = await create_user(client)
    return await create_provider(client, user["id"])


async def audit_actions(session: AsyncSession, provider_id: str) -> list[str]:
    query = (
        select(ProviderAuditLog.action)
        .where(ProviderAuditLog.provider_id == uuid.UUID(provider_id))
        .order_by(ProviderAuditLog.created_at)
    )
    return list((await session.execute(query)).scalars())


async def token_count(session: AsyncSession, provider_id: str) -> int:
    count = await session.scalar(
        select(func.count()).select_from(ProviderToken).where(ProviderToken.provider_id == uuid.UUID(provider_id))
    )
    return int(count or 0)


async def connection_status(session: AsyncSession, provider_id: str) -> str:
    query = select(ProviderConnection.status).where(ProviderConnection.provider_id == uuid.UUID(provider_id))
    return str((await session.execute(query)).scalar_one())


@pytest.mark.asyncio
async def test_start_stores_one_time_state_with_ttl(
    client: httpx.AsyncClient, redis_client: Redis, dashtam_settings: Settings
) -> None:
    provider = await new_provider(client)
    auth = await start_authorization(client, provider["id"])
    state = auth["state"]
    assert state.startswith(f"{provider['id']}.")
    assert await redis_client.get(f"oauth_state:{state}") == provider["id"]
    ttl = await redis_client.ttl(f"oauth_state:{state}")
    assert 0 < ttl <= dashtam_settings.OAUTH_STATE_TTL_SECONDS
    assert auth["expires_in"] == dashtam_settings.OAUTH_STATE_TTL_SECONDS

    url = urlsplit(auth["authorization_url"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == dashtam_settings.PROVIDER_AUTHORIZE_URL
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert query == {
        "response_type": "code",
        "client_id": dashtam_settings.PROVIDER_CLIENT_ID,
        "redirect_uri": f"http://{dashtam_settings.CALLBACK_HOST}:{dashtam_settings.CALLBACK_PORT}/callback",
        "scope": dashtam_settings.PROVIDER_SCOPES,
        "state": state,
    }
    # Each start issues a fresh state; earlier ones stay valid until used or expired.
    again = await start_authorization(client, provider["id"])
    assert again["state"] != state
    assert await redis_client.exists(f"oauth_state:{state}", f"oauth_state:{again['state']}") == 2


@pytest.mark.asyncio
async def test_start_for_unknown_provider_is_404_and_stores_nothing(
    client: httpx.AsyncClient, redis_client: Redis
) -> None:
    missing = uuid.uuid4()
    response = await client.post(f"/api/v1/providers/{missing}/authorization")
    assert response.status_code == 404
    assert response.json() == {"detail": f"provider {missing} does not exist"}
    assert await redis_client.keys("oauth_state:*") == []


@pytest.mark.asyncio
async def test_callback_stores_tokens_activates_and_audits(
    client: httpx.AsyncClient, db_session: AsyncSession, redis_client: Redis, dashtam_settings: Settings
) -> None:
    provider = await new_provider(client)
    auth = await start_authorization(client, provider["id"])
    response = await client.get(callback_url(provider["id"]), params={"code": "good-code", "state": auth["state"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["provider_id"] == provider["id"]
    assert body["status"] == "active"
    assert body["scope"] == dashtam_settings.PROVIDER_SCOPES
    assert body["token_expires_at"] is not None
    # The tokens themselves never leave the server.
    assert set(body) == {"provider_id", "status", "connected_at", "token_expires_at", "scope"}

    assert await redis_client.exists(f"oauth_state:{auth['state']}") == 0  # consumed
    assert await connection_status(db_session, provider["id"]) == "active"
    assert await audit_actions(db_session, provider["id"]) == [
        "provider.created",
        "oauth.authorization_started",
        "oauth.connected",
    ]
    listed = await client.get(f"/api/v1/users/{provider['user_id']}/providers/{provider['id']}")
    assert listed.json()["status"] == "active"
    assert listed.json()["connected_at"] is not None

    # The stored tokens are exactly what the provider issued for this code.
    expected = await SandboxProvider.from_settings(dashtam_settings).exchange_code(
        "good-code", f"http://{dashtam_settings.CALLBACK_HOST}:{dashtam_settings.CALLBACK_PORT}/callback"
    )
    token = (
        await db_session.execute(select(ProviderToken).where(ProviderToken.provider_id == uuid.UUID(provider["id"])))
    ).scalar_one()
    await db_session.refresh(token)
    encryptor = encryptor_from_settings(dashtam_settings)
    assert encryptor.decrypt(token.access_token_encrypted) == expected.access_token
    assert token.refresh_token_encrypted is not None
    assert encryptor.decrypt(token.refresh_token_encrypted) == expected.refresh_token
    assert token.token_type == "Bearer"


@pytest.mark.asyncio
async def test_tokens_are_stored_encrypted_at_rest(
    client: httpx.AsyncClient, db_session: AsyncSession, dashtam_settings: Settings
) -> None:
    provider = await new_provider(client)
    auth = await start_authorization(client, provider["id"])
    assert (await client.get(callback_url(provider["id"]), params={"code": "c", "state": auth["state"]})).is_success
    issued = await SandboxProvider.from_settings(dashtam_settings).exchange_code(
        "c", f"http://{dashtam_settings.CALLBACK_HOST}:{dashtam_settings.CALLBACK_PORT}/callback"
    )
    assert issued.refresh_token is not None
    # Read the raw column bytes with plain SQL, bypassing the ORM entirely.
    raw_access, raw_refresh = (
        await db_session.execute(
            text(
                "SELECT access_token_encrypted, refresh_token_encrypted FROM provider_tokens WHERE provider_id = :pid"
            ),
            {"pid": uuid.UUID(provider["id"])},
        )
    ).one()
    for raw, plain in [(bytes(raw_access), issued.access_token), (bytes(raw_refresh), issued.refresh_token)]:
        assert plain.encode() not in raw
        assert raw != plain.encode()
        assert encryptor_from_settings(dashtam_settings).decrypt(raw) == plain


@pytest.mark.asyncio
async def test_replayed_state_is_400_and_changes_nothing(client: httpx.AsyncClient, db_session: AsyncSession) -> None:
    provider = await new_provider(client)
    auth = await start_authorization(client, provider["id"])
    first = await client.get(callback_url(provider["id"]), params={"code": "one", "state": auth["state"]})
    assert first.status_code == 200
    replay = await client.get(callback_url(provider["id"]), params={"code": "two", "state": auth["state"]})
    assert replay.status_code == 400
    assert "unknown, expired or already used" in replay.json()["detail"]
    assert await token_count(db_session, provider["id"]) == 1
    assert (await audit_actions(db_session, provider["id"])).count("oauth.connected") == 1


@pytest.mark.asyncio
async def test_concurrent_callbacks_with_one_state_succeed_once(client: httpx.AsyncClient, redis_client: Redis) -> None:
    # GETDEL makes check-and-consume atomic: of two racing callbacks exactly one finds the state.
    provider = await new_provider(client)
    auth = await start_authorization(client, provider["id"])
    key = f"oauth_state:{auth['state']}"
    results = await asyncio.gather(redis_client.getdel(key), redis_client.getdel(key))
    assert sorted(results, key=lambda r: r is None) == [provider["id"], None]


@pytest.mark.asyncio
async def test_unknown_state_is_400(client: httpx.AsyncClient, db_session: AsyncSession) -> None:
    provider = await new_provider(client)
    response = await client.get(callback_url(provider["id"]), params={"code": "c", "state": f"{provider['id']}.forged"})
    assert response.status_code == 400
    assert f"POST /api/v1/providers/{provider['id']}/authorization" in response.json()["detail"]
    assert await token_count(db_session, provider["id"]) == 0
    assert await connection_status(db_session, provider["id"]) == "pending"


@pytest.mark.asyncio
async def test_state_of_another_provider_is_400(
    client: httpx.AsyncClient, db_session: AsyncSession, redis_client: Redis
) -> None:
    mine, theirs = await new_provider(client), await new_provider(client)
    auth = await start_authorization(client, theirs["id"])
    response = await client.get(callback_url(mine["id"]), params={"code": "c", "state": auth["state"]})
    assert response.status_code == 400
    assert "another provider" in response.json()["detail"]
    assert await token_count(db_session, mine["id"]) == 0
    assert await token_count(db_session, theirs["id"]) == 0
    # A state presented at the wrong door is burnt too: it may have leaked.
    assert await redis_client.exists(f"oauth_state:{auth['state']}") == 0


@pytest.mark.asyncio
async def test_expired_state_is_400(db_session: AsyncSession, redis_client: Redis, dashtam_settings: Settings) -> None:
    short = dashtam_settings.model_copy(update={"OAUTH_STATE_TTL_SECONDS": 1})
    async with asgi_client(build_app(db_session, redis_client, settings=short)) as api:
        provider = await new_provider(api)
        auth = await start_authorization(api, provider["id"])
        assert auth["expires_in"] == 1
        assert 0 < await redis_client.pttl(f"oauth_state:{auth['state']}") <= 1000
        await asyncio.sleep(1.2)
        response = await api.get(callback_url(provider["id"]), params={"code": "c", "state": auth["state"]})
    assert response.status_code == 400
    assert "expired" in response.json()["detail"]
    assert await token_count(db_session, provider["id"]) == 0


@pytest.mark.asyncio
async def test_refused_code_is_400_audited_and_stores_no_token(
    client: httpx.AsyncClient, db_session: AsyncSession, redis_client: Redis
) -> None:
    provider = await new_provider(client)
    auth = await start_authorization(client, provider["id"])
    response = await client.get(callback_url(provider["id"]), params={"code": "denied-by-user", "state": auth["state"]})
    assert response.status_code == 400
    assert "invalid_grant" in response.json()["detail"]
    assert await token_count(db_session, provider["id"]) == 0
    assert await connection_status(db_session, provider["id"]) == "pending"
    assert (await audit_actions(db_session, provider["id"]))[-1] == "oauth.exchange_failed"
    assert await redis_client.exists(f"oauth_state:{auth['state']}") == 0


class _FlakyProvider:
    """A provider whose token endpoint is down."""

    key = "sandbox"

    def authorization_url(self, state: str, redirect_uri: str) -> str:
        return f"https://flaky.invalid/authorize?state={state}"

    async def exchange_code(self, code: str, redirect_uri: str) -> TokenSet:
        raise ProviderError("token endpoint answered 503", retryable=True)


@pytest.mark.asyncio
async def test_provider_outage_is_502(db_session: AsyncSession, redis_client: Redis) -> None:
    registry = ProviderRegistry({"sandbox": _FlakyProvider()})
    async with asgi_client(build_app(db_session, redis_client, registry=registry)) as api:
        provider = await new_provider(api)
        auth = await start_authorization(api, provider["id"])
        assert auth["authorization_url"].startswith("https://flaky.invalid/")
        response = await api.get(callback_url(provider["id"]), params={"code": "c", "state": auth["state"]})
    assert response.status_code == 502
    assert "token endpoint answered 503" in response.json()["detail"]
    assert await token_count(db_session, provider["id"]) == 0


@pytest.mark.asyncio
async def test_provider_no_longer_configured_is_409(db_session: AsyncSession, redis_client: Redis) -> None:
    async with asgi_client(build_app(db_session, redis_client)) as api:
        provider = await new_provider(api)
    async with asgi_client(build_app(db_session, redis_client, registry=ProviderRegistry({}))) as api:
        response = await api.post(f"/api/v1/providers/{provider['id']}/authorization")
    assert response.status_code == 409
    assert "provider_key 'sandbox'" in response.json()["detail"]
    assert await redis_client.keys("oauth_state:*") == []


@pytest.mark.asyncio
@pytest.mark.parametrize("missing", ["code", "state"])
async def test_callback_without_code_or_state_is_422(client: httpx.AsyncClient, missing: str) -> None:
    provider = await new_provider(client)
    params = {"code": "c", "state": "s"}
    del params[missing]
    response = await client.get(callback_url(provider["id"]), params=params)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", missing]


@pytest.mark.asyncio
async def test_callback_for_unknown_provider_is_404_and_keeps_the_state(
    client: httpx.AsyncClient, redis_client: Redis
) -> None:
    provider = await new_provider(client)
    auth = await start_authorization(client, provider["id"])
    response = await client.get(callback_url(str(uuid.uuid4())), params={"code": "c", "state": auth["state"]})
    assert response.status_code == 404
    assert await redis_client.exists(f"oauth_state:{auth['state']}") == 1


@pytest.mark.asyncio
async def test_reauthorization_replaces_the_token_in_place(
    client: httpx.AsyncClient, db_session: AsyncSession, dashtam_settings: Settings
) -> None:
    provider = await new_provider(client)
    for code in ("first", "second"):
        auth = await start_authorization(client, provider["id"])
        response = await client.get(callback_url(provider["id"]), params={"code": code, "state": auth["state"]})
        assert response.status_code == 200, response.text
    assert await token_count(db_session, provider["id"]) == 1
    raw = await db_session.scalar(
        text("SELECT access_token_encrypted FROM provider_tokens WHERE provider_id = :pid"),
        {"pid": uuid.UUID(provider["id"])},
    )
    second = await SandboxProvider.from_settings(dashtam_settings).exchange_code(
        "second", f"http://{dashtam_settings.CALLBACK_HOST}:{dashtam_settings.CALLBACK_PORT}/callback"
    )
    assert encryptor_from_settings(dashtam_settings).decrypt(bytes(raw)) == second.access_token


@pytest.mark.asyncio
async def test_failure_while_storing_leaves_nothing_half_written(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    provider = await new_provider(client)
    auth = await start_authorization(client, provider["id"])
    # Make the last write of the callback (the audit row) fail inside PostgreSQL. The trigger is
    # created in the test's outer transaction, so it disappears with it.
    suffix = uuid.uuid4().hex[:8]
    await db_session.execute(
        text(
            f"CREATE FUNCTION refuse_audit_{suffix}() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'audit log is read-only in this test'; END $$"
        )
    )
    await db_session.execute(
        text(
            f"CREATE TRIGGER refuse_audit_{suffix} BEFORE INSERT ON provider_audit_logs "
            f"FOR EACH ROW EXECUTE FUNCTION refuse_audit_{suffix}()"
        )
    )
    await db_session.commit()

    response = await client.get(callback_url(provider["id"]), params={"code": "c", "state": auth["state"]})
    assert response.status_code == 500
    assert "nothing was saved" in response.json()["detail"]
    # The token upsert and the status change ran before the failing insert; both were undone.
    assert await token_count(db_session, provider["id"]) == 0
    assert await connection_status(db_session, provider["id"]) == "pending"
    assert "oauth.connected" not in await audit_actions(db_session, provider["id"])
