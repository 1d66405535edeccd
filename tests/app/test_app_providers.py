"""A user's providers: create, list, get, delete, and their 404 / 409 / 422 answers."""

from __future__ import annotations

import uuid

import httpx
import pytest
from app_support import create_provider, create_user, start_authorization
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dashtam.models import Provider, ProviderAuditLog, ProviderConnection, ProviderToken


@pytest.mark.asyncio
async def test_create_provider_is_pending_and_audited(client: httpx.AsyncClient, db_session: AsyncSession) -> None:
    user = await create_user(client)
    response = await client.post(
        f"/api/v1/users/{user['id']}/providers", json={"provider_key": "sandbox", "alias": " Checking "}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["user_id"] == user["id"]
    assert (body["provider_key"], body["alias"], body["status"]) == ("sandbox", "Checking", "pending")
    assert body["connected_at"] is None
    provider_id = uuid.UUID(body["id"])
    connection = (
        await db_session.execute(select(ProviderConnection).where(ProviderConnection.provider_id == provider_id))
    ).scalar_one()
    assert connection.status == "pending"
    actions = (
        (await db_session.execute(select(ProviderAuditLog.action).where(ProviderAuditLog.provider_id == provider_id)))
        .scalars()
        .all()
    )
    assert actions == ["provider.created"]


@pytest.mark.asyncio
async def test_list_and_get_providers(client: httpx.AsyncClient) -> None:
    user = await create_user(client)
    first = await create_provider(client, user["id"], alias="first")
    second = await create_provider(client, user["id"], alias="second")
    other_user = await create_user(client)
    await create_provider(client, other_user["id"], alias="first")  # not listed for `user`

    listed = await client.get(f"/api/v1/users/{user['id']}/providers")
    assert listed.status_code == 200
    assert sorted(p["id"] for p in listed.json()) == sorted([first["id"], second["id"]])

    got = await client.get(f"/api/v1/users/{user['id']}/providers/{first['id']}")
    assert got.status_code == 200
    assert got.json() == first


@pytest.mark.asyncio
async def test_list_is_empty_for_a_user_without_providers(client: httpx.AsyncClient) -> None:
    user = await create_user(client)
    response = await client.get(f"/api/v1/users/{user['id']}/providers")
    assert response.status_code == 200
    assert response.json() == []


@pytest.mark.asyncio
async def test_duplicate_alias_is_409_per_user_only(client: httpx.AsyncClient, db_session: AsyncSession) -> None:
    user = await create_user(client)
    await create_provider(client, user["id"], alias="savings")
    duplicate = await client.post(
        f"/api/v1/users/{user['id']}/providers", json={"provider_key": "sandbox", "alias": "savings"}
    )
    assert duplicate.status_code == 409
    assert "savings" in duplicate.json()["detail"]
    count = await db_session.scalar(
        select(func.count()).select_from(Provider).where(Provider.user_id == uuid.UUID(user["id"]))
    )
    assert count == 1
    # Another user may use the same alias.
    other = await create_user(client)
    await create_provider(client, other["id"], alias="savings")


@pytest.mark.asyncio
@pytest.mark.parametrize("method", ["POST", "GET_LIST", "GET_ONE", "DELETE"])
async def test_unknown_user_is_404(client: httpx.AsyncClient, method: str) -> None:
    missing = uuid.uuid4()
    base = f"/api/v1/users/{missing}/providers"
    if method == "POST":
        response = await client.post(base, json={"provider_key": "sandbox", "alias": "x"})
    elif method == "GET_LIST":
        response = await client.get(base)
    elif method == "GET_ONE":
        response = await client.get(f"{base}/{uuid.uuid4()}")
    else:
        response = await client.delete(f"{base}/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.json() == {"detail": f"user {missing} does not exist"}


@pytest.mark.asyncio
async def test_unknown_or_foreign_provider_is_404(client: httpx.AsyncClient) -> None:
    owner = await create_user(client)
    provider = await create_provider(client, owner["id"])
    stranger = await create_user(client)
    for user_id, provider_id in [(owner["id"], str(uuid.uuid4())), (stranger["id"], provider["id"])]:
        url = f"/api/v1/users/{user_id}/providers/{provider_id}"
        got, deleted = await client.get(url), await client.delete(url)
        assert (got.status_code, deleted.status_code) == (404, 404)
        assert f"provider {provider_id} does not exist" in got.json()["detail"]
    # The stranger's DELETE did not touch the owner's provider.
    assert (await client.get(f"/api/v1/users/{owner['id']}/providers/{provider['id']}")).status_code == 200


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"provider_key": "nosuchbank", "alias": "x"}, "provider_key", "unknown provider_key 'nosuchbank'"),
        ({"provider_key": "Bad Key!", "alias": "x"}, "provider_key", "pattern"),
        ({"provider_key": "sandbox", "alias": ""}, "alias", "at least 1"),
        ({"provider_key": "sandbox", "alias": "a" * 101}, "alias", "at most 100"),
        ({"alias": "x"}, "provider_key", "required"),
    ],
)
async def test_bad_provider_input_is_422(
    client: httpx.AsyncClient, db_session: AsyncSession, body: dict[str, str], field: str, message: str
) -> None:
    user = await create_user(client)
    response = await client.post(f"/api/v1/users/{user['id']}/providers", json=body)
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(e["loc"][-1] == field and message in e["msg"] for e in errors), errors
    count = await db_session.scalar(
        select(func.count()).select_from(Provider).where(Provider.user_id == uuid.UUID(user["id"]))
    )
    assert count == 0


@pytest.mark.asyncio
async def test_delete_removes_provider_with_its_connection_tokens_and_audit_trail(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    user = await create_user(client)
    provider = await create_provider(client, user["id"])
    auth = await start_authorization(client, provider["id"])
    done = await client.get(
        f"/api/v1/providers/{provider['id']}/authorization/callback", params={"code": "c1", "state": auth["state"]}
    )
    assert done.status_code == 200, done.text

    url = f"/api/v1/users/{user['id']}/providers/{provider['id']}"
    response = await client.delete(url)
    assert response.status_code == 204
    assert response.content == b""
    assert (await client.get(url)).status_code == 404
    assert (await client.delete(url)).status_code == 404
    provider_id = uuid.UUID(provider["id"])
    for model in (ProviderConnection, ProviderToken, ProviderAuditLog):
        count = await db_session.scalar(select(func.count()).select_from(model).where(model.provider_id == provider_id))
        assert count == 0, model.__name__
    assert (await client.get(f"/api/v1/users/{user['id']}")).status_code == 200
