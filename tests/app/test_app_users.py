"""POST /api/v1/users and GET /api/v1/users/{id}."""

from __future__ import annotations

import uuid

import httpx
import pytest
from app_support import create_user, unique_email
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dashtam.models import User


@pytest.mark.asyncio
async def test_create_user_returns_it_and_stores_it(client: httpx.AsyncClient, db_session: AsyncSession) -> None:
    email = unique_email()
    response = await client.post("/api/v1/users", json={"email": f"  {email.upper()} ", "name": " Ada "})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["email"] == email  # stripped and lower-cased: one address, one account
    assert body["name"] == "Ada"
    assert body["is_active"] is True
    stored = (await db_session.execute(select(User).where(User.id == uuid.UUID(body["id"])))).scalar_one()
    assert (stored.email, stored.name) == (email, "Ada")


@pytest.mark.asyncio
async def test_get_user(client: httpx.AsyncClient) -> None:
    user = await create_user(client)
    response = await client.get(f"/api/v1/users/{user['id']}")
    assert response.status_code == 200
    assert response.json() == user


@pytest.mark.asyncio
async def test_get_unknown_user_is_404(client: httpx.AsyncClient) -> None:
    missing = uuid.uuid4()
    response = await client.get(f"/api/v1/users/{missing}")
    assert response.status_code == 404
    assert response.json() == {"detail": f"user {missing} does not exist"}


@pytest.mark.asyncio
async def test_get_user_with_malformed_id_is_422(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/users/not-a-uuid")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "user_id"]


@pytest.mark.asyncio
async def test_duplicate_email_is_409_and_adds_no_row(client: httpx.AsyncClient, db_session: AsyncSession) -> None:
    user = await create_user(client)
    response = await client.post("/api/v1/users", json={"email": user["email"].upper(), "name": "Other"})
    assert response.status_code == 409
    assert "already exists" in response.json()["detail"]
    rows = (await db_session.execute(select(User).where(User.email == user["email"]))).scalars().all()
    assert len(rows) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not-an-email", "name": "Ada"}, "email"),
        ({"email": "a@example.com", "name": "   "}, "name"),
        ({"email": "a@example.com"}, "name"),
        ({"name": "Ada"}, "email"),
        ({"email": "a@example.com", "name": "Ada", "is_admin": True}, "is_admin"),
    ],
)
async def test_bad_user_input_is_422_naming_the_field(
    client: httpx.AsyncClient, db_session: AsyncSession, body: dict[str, object], field: str
) -> None:
    before = await db_session.scalar(select(func.count()).select_from(User))
    response = await client.post("/api/v1/users", json=body)
    assert response.status_code == 422
    assert field in {error["loc"][-1] for error in response.json()["detail"]}
    assert await db_session.scalar(select(func.count()).select_from(User)) == before
