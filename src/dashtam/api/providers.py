"""A user's provider connections: create, list, read, delete."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, HTTPException, Response, status
from fastapi.exceptions import RequestValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import selectinload

from dashtam.api.lookups import provider_or_404, provider_read, user_or_404
from dashtam.api.schemas import ProviderCreate, ProviderRead
from dashtam.core.database import SessionDep
from dashtam.models import ConnectionStatus, Provider, ProviderAuditLog, ProviderConnection
from dashtam.providers import ProviderRegistryDep

router = APIRouter(prefix="/users/{user_id}/providers", tags=["providers"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ProviderRead)
async def create_provider(
    user_id: uuid.UUID, body: ProviderCreate, session: SessionDep, registry: ProviderRegistryDep
) -> ProviderRead:
    """Add a connection (pending until authorized); 409 if the user already has this alias."""
    await user_or_404(session, user_id)
    if body.provider_key not in registry:
        # Same shape as FastAPI's own 422s, so clients handle one error format.
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("body", "provider_key"),
                    "msg": f"unknown provider_key {body.provider_key!r}; "
                    f"this server offers: {', '.join(registry.keys) or 'none'}",
                    "input": body.provider_key,
                }
            ]
        )
    taken = f"user {user_id} already has a provider named {body.alias!r}; choose another alias"
    existing = select(Provider.id).where(Provider.user_id == user_id, Provider.alias == body.alias)
    if (await session.execute(existing)).first() is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, taken)

    provider = Provider(user_id=user_id, provider_key=body.provider_key, alias=body.alias)
    provider.connection = ProviderConnection(status=ConnectionStatus.PENDING)
    session.add(provider)
    try:
        await session.flush()
        session.add(
            ProviderAuditLog(
                provider_id=provider.id,
                user_id=user_id,
                action="provider.created",
                details={"provider_key": body.provider_key, "alias": body.alias},
            )
        )
        await session.flush()
        result = provider_read(provider)
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, taken) from None
    return result


@router.get("", response_model=list[ProviderRead])
async def list_providers(user_id: uuid.UUID, session: SessionDep) -> list[ProviderRead]:
    await user_or_404(session, user_id)
    query = (
        select(Provider)
        .where(Provider.user_id == user_id)
        .options(selectinload(Provider.connection))
        .order_by(Provider.created_at, Provider.alias)
        .execution_options(populate_existing=True)
    )
    return [provider_read(p) for p in (await session.execute(query)).scalars()]


@router.get("/{provider_id}", response_model=ProviderRead)
async def get_provider(user_id: uuid.UUID, provider_id: uuid.UUID, session: SessionDep) -> ProviderRead:
    await user_or_404(session, user_id)
    return provider_read(await provider_or_404(session, provider_id, user_id=user_id))


@router.delete("/{provider_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
async def delete_provider(user_id: uuid.UUID, provider_id: uuid.UUID, session: SessionDep) -> Response:
    """Delete the connection with its tokens and audit trail (ON DELETE CASCADE does the rest)."""
    await user_or_404(session, user_id)
    provider = await provider_or_404(session, provider_id, user_id=user_id)
    await session.delete(provider)
    await session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
