"""Users: create and read."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, HTTPException, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from dashtam.api.lookups import user_or_404
from dashtam.api.schemas import UserCreate, UserRead
from dashtam.core.database import SessionDep
from dashtam.models import User

router = APIRouter(prefix="/users", tags=["users"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=UserRead)
async def create_user(body: UserCreate, session: SessionDep) -> UserRead:
    """Create a user; 409 if the email is taken (checked first, and enforced by the unique index)."""
    taken = f"a user with email {body.email!r} already exists"
    if (await session.execute(select(User.id).where(User.email == body.email))).first() is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, taken)
    user = User(email=body.email, name=body.name)
    session.add(user)
    try:
        await session.flush()
        result = UserRead.model_validate(user)
        await session.commit()
    except IntegrityError:
        # A concurrent request won the race between our check and our insert.
        await session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, taken) from None
    return result


@router.get("/{user_id}", response_model=UserRead)
async def get_user(user_id: uuid.UUID, session: SessionDep) -> UserRead:
    return UserRead.model_validate(await user_or_404(session, user_id))
