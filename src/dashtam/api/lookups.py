"""Loading rows or answering 404, shared by the routers so every "not found" reads the same."""

from __future__ import annotations

import uuid

from fastapi import HTTPException, status
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from dashtam.api.schemas import ProviderRead
from dashtam.models import ConnectionStatus, Provider, User


async def user_or_404(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"user {user_id} does not exist")
    return user


async def provider_or_404(
    session: AsyncSession, provider_id: uuid.UUID, *, user_id: uuid.UUID | None = None
) -> Provider:
    """The provider with its connection loaded; with `user_id`, only if that user owns it."""
    # populate_existing: a session that outlived an earlier request (as in tests) must not answer
    # from its identity map what another transaction has since changed.
    query = (
        select(Provider)
        .where(Provider.id == provider_id)
        .options(selectinload(Provider.connection))
        .execution_options(populate_existing=True)
    )
    if user_id is not None:
        query = query.where(Provider.user_id == user_id)
    provider = (await session.execute(query)).scalar_one_or_none()
    if provider is None:
        owner = f" for user {user_id}" if user_id is not None else ""
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"provider {provider_id} does not exist{owner}")
    return provider


def provider_read(provider: Provider) -> ProviderRead:
    """The API view of a provider (its connection must be loaded: lazy loads cannot run here)."""
    connection = provider.connection
    return ProviderRead(
        id=provider.id,
        user_id=provider.user_id,
        provider_key=provider.provider_key,
        alias=provider.alias,
        status=connection.status if connection is not None else ConnectionStatus.PENDING,
        connected_at=connection.connected_at if connection is not None else None,
        last_sync_at=connection.last_sync_at if connection is not None else None,
        created_at=provider.created_at,
    )
