"""The OAuth authorization-code flow: start it (issue a one-time state), finish it (the callback).

The state lives in Redis under `oauth_state:<state>` with a TTL and is consumed with GETDEL, so
checking and consuming it is one atomic step: a replayed or raced callback finds nothing. It
starts with the provider id (`<provider id>.<random>`) so the callback server can route the
provider's redirect to the right provider without a redirect URI per provider.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from dashtam.api.lookups import provider_or_404
from dashtam.api.schemas import AuthorizationResult, AuthorizationStart
from dashtam.core.config import Settings, get_settings
from dashtam.core.database import SessionDep
from dashtam.core.redis import RedisDep
from dashtam.core.security import TokenEncryptorDep
from dashtam.models import ConnectionStatus, ProviderAuditLog, ProviderConnection, ProviderToken
from dashtam.models.base import utcnow
from dashtam.providers import ProviderClient, ProviderError, ProviderRegistryDep, UnknownProviderError
from dashtam.providers.registry import ProviderRegistry

router = APIRouter(prefix="/providers/{provider_id}/authorization", tags=["oauth"])
logger = logging.getLogger(__name__)

SettingsDep = Annotated[Settings, Depends(get_settings)]
STATE_KEY_PREFIX = "oauth_state:"
CALLBACK_PATH = "/callback"


def state_key(state: str) -> str:
    return f"{STATE_KEY_PREFIX}{state}"


def new_state(provider_id: uuid.UUID) -> str:
    return f"{provider_id}.{secrets.token_urlsafe(32)}"


def redirect_uri(settings: Settings) -> str:
    """The callback server's address, which must be identical in both legs of the flow."""
    return f"{settings.CALLBACK_SCHEME}://{settings.CALLBACK_HOST}:{settings.CALLBACK_PORT}{CALLBACK_PATH}"


def _client_for(registry: ProviderRegistry, provider_key: str) -> ProviderClient:
    try:
        return registry.get(provider_key)
    except UnknownProviderError as exc:
        # The row is fine; this server's configuration no longer offers its provider.
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None


def _client_ip(request: Request) -> str | None:
    return request.client.host[:64] if request.client is not None else None


@router.post("", status_code=status.HTTP_201_CREATED, response_model=AuthorizationStart)
async def start_authorization(
    provider_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    redis: RedisDep,
    registry: ProviderRegistryDep,
    settings: SettingsDep,
) -> AuthorizationStart:
    """Issue a one-time state (TTL OAUTH_STATE_TTL_SECONDS) and the provider URL carrying it."""
    provider = await provider_or_404(session, provider_id)
    client = _client_for(registry, provider.provider_key)
    user_id = provider.user_id
    state = new_state(provider_id)
    ttl = settings.OAUTH_STATE_TTL_SECONDS
    # NX: a collision of 256 random bits is not expected, but must never overwrite a live state.
    if not await redis.set(state_key(state), str(provider_id), ex=ttl, nx=True):
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "could not store the OAuth state; try again")
    url = client.authorization_url(state, redirect_uri(settings))
    session.add(
        ProviderAuditLog(
            provider_id=provider_id,
            user_id=user_id,
            action="oauth.authorization_started",
            details={"ttl_seconds": ttl},
            ip_address=_client_ip(request),
        )
    )
    await session.commit()
    return AuthorizationStart(authorization_url=url, state=state, expires_in=ttl)


@router.get("/callback", response_model=AuthorizationResult)
async def finish_authorization(
    provider_id: uuid.UUID,
    code: Annotated[str, Query(min_length=1, max_length=2048)],
    state: Annotated[str, Query(min_length=1, max_length=512)],
    request: Request,
    session: SessionDep,
    redis: RedisDep,
    registry: ProviderRegistryDep,
    encryptor: TokenEncryptorDep,
    settings: SettingsDep,
) -> AuthorizationResult:
    """Consume the state, exchange the code, and store the tokens encrypted, all or nothing."""
    provider = await provider_or_404(session, provider_id)
    user_id, provider_key = provider.user_id, provider.provider_key
    owner = await redis.getdel(state_key(state))
    if owner is None:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            "the OAuth state is unknown, expired or already used; start the authorization again "
            f"(POST /api/v1/providers/{provider_id}/authorization)",
        )
    if owner != str(provider_id):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            "the OAuth state was issued for another provider; start the authorization again",
        )
    client = _client_for(registry, provider_key)
    ip = _client_ip(request)

    try:
        tokens = await client.exchange_code(code, redirect_uri(settings))
    except ProviderError as exc:
        await _record_failure(session, provider_id, user_id, ip, str(exc))
        if exc.retryable:
            raise HTTPException(
                status.HTTP_502_BAD_GATEWAY, f"the provider could not exchange the code: {exc}"
            ) from None
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"the provider refused the code: {exc}") from None

    now = utcnow()
    expires_at = tokens.expires_at(now)
    values = {
        "access_token_encrypted": encryptor.encrypt(tokens.access_token),
        "refresh_token_encrypted": (
            encryptor.encrypt(tokens.refresh_token) if tokens.refresh_token is not None else None
        ),
        "token_type": tokens.token_type,
        "scope": tokens.scope,
        "expires_at": expires_at,
        "updated_at": now,
    }
    try:
        # A real upsert: two callbacks racing for one provider cannot both insert.
        await session.execute(
            insert(ProviderToken)
            .values(id=uuid.uuid4(), provider_id=provider_id, created_at=now, **values)
            .on_conflict_do_update(index_elements=[ProviderToken.provider_id], set_=values)
        )
        activated = await session.execute(
            update(ProviderConnection)
            .where(ProviderConnection.provider_id == provider_id)
            .values(status=ConnectionStatus.ACTIVE, connected_at=now, error_message=None, updated_at=now)
            .execution_options(synchronize_session="fetch")
        )
        if activated.rowcount == 0:  # type: ignore[attr-defined]
            session.add(ProviderConnection(provider_id=provider_id, status=ConnectionStatus.ACTIVE, connected_at=now))
        await session.flush()
        session.add(
            ProviderAuditLog(
                provider_id=provider_id,
                user_id=user_id,
                action="oauth.connected",
                details={
                    "token_type": tokens.token_type,
                    "scope": tokens.scope,
                    "expires_at": expires_at.isoformat() if expires_at is not None else None,
                    "has_refresh_token": tokens.refresh_token is not None,
                },
                ip_address=ip,
            )
        )
        await session.commit()
    except SQLAlchemyError:
        await session.rollback()
        logger.exception("storing the tokens of provider %s failed; rolled back", provider_id)
        raise HTTPException(
            status.HTTP_500_INTERNAL_SERVER_ERROR,
            "the tokens could not be stored and nothing was saved; start the authorization again",
        ) from None
    return AuthorizationResult(
        provider_id=provider_id,
        status=ConnectionStatus.ACTIVE,
        connected_at=now,
        token_expires_at=expires_at,
        scope=tokens.scope,
    )


async def _record_failure(
    session: AsyncSession, provider_id: uuid.UUID, user_id: uuid.UUID, ip: str | None, message: str
) -> None:
    """Audit a refused exchange. Tokens and status stay as they were: an old grant may still be valid."""
    session.add(
        ProviderAuditLog(
            provider_id=provider_id,
            user_id=user_id,
            action="oauth.exchange_failed",
            details={"error": message[:500]},
            ip_address=ip,
        )
    )
    try:
        await session.commit()
    except SQLAlchemyError:
        await session.rollback()
        logger.exception("recording the failed exchange of provider %s failed", provider_id)
