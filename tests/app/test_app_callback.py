"""The OAuth callback server, forwarding to the real API app through its ASGI transport."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from app_support import asgi_client, closed_port, create_provider, create_user, start_authorization
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dashtam.callback import create_callback_app, get_api_client
from dashtam.core.config import Settings, get_settings
from dashtam.models import ConnectionStatus, ProviderConnection


def callback_app(settings: Settings, api: httpx.AsyncClient) -> FastAPI:
    """The callback server with its forwarding client replaced (the test owns `api`'s lifetime)."""

    async def _api() -> AsyncIterator[httpx.AsyncClient]:
        yield api

    app = create_callback_app()
    app.dependency_overrides[get_api_client] = _api
    app.dependency_overrides[get_settings] = lambda: settings
    return app


def refusing_api() -> httpx.AsyncClient:
    """An API client that fails the test if the callback server forwards anything."""

    def handler(request: httpx.Request) -> httpx.Response:
        pytest.fail(f"the callback server should not have called the API: {request.url}")

    return httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://api")


async def consent(server: httpx.AsyncClient, authorization_url: str) -> str:
    """Play the sandbox provider's consent step; return the redirect target (path and query)."""
    query = parse_qs(urlsplit(authorization_url).query)
    response = await server.get(
        "/sandbox/authorize",
        params={key: query[key][0] for key in ("state", "redirect_uri", "client_id")},
    )
    assert response.status_code == 302, response.text
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == query["redirect_uri"][0]
    return f"{location.path}?{location.query}"


@pytest.mark.asyncio
async def test_full_flow_through_the_callback_server(
    client: httpx.AsyncClient, db_session: AsyncSession, dashtam_settings: Settings
) -> None:
    user = await create_user(client)
    provider = await create_provider(client, user["id"])
    auth = await start_authorization(client, provider["id"])
    async with asgi_client(callback_app(dashtam_settings, client)) as server:
        target = await consent(server, auth["authorization_url"])
        page = await server.get(target)
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        assert "Connected" in page.text
        assert dashtam_settings.PROVIDER_SCOPES in page.text

        status = await db_session.scalar(
            select(ProviderConnection.status).where(ProviderConnection.provider_id == uuid.UUID(provider["id"]))
        )
        assert status == ConnectionStatus.ACTIVE

        # The browser's back button or a leaked URL replays the redirect: the API refuses it.
        replay = await server.get(target)
    assert replay.status_code == 400
    assert "Connection failed" in replay.text
    assert "already used" in replay.text


@pytest.mark.asyncio
async def test_api_validation_errors_are_shown(client: httpx.AsyncClient, dashtam_settings: Settings) -> None:
    async with asgi_client(callback_app(dashtam_settings, client)) as server:
        page = await server.get("/callback", params={"code": "x" * 3000, "state": f"{uuid.uuid4()}.s"})
    assert page.status_code == 422
    assert "at most 2048 characters" in page.text


@pytest.mark.asyncio
async def test_unknown_provider_is_shown_as_404(client: httpx.AsyncClient, dashtam_settings: Settings) -> None:
    missing = uuid.uuid4()
    async with asgi_client(callback_app(dashtam_settings, client)) as server:
        page = await server.get("/callback", params={"code": "c", "state": f"{missing}.s"})
    assert page.status_code == 404
    assert f"provider {missing} does not exist" in page.text


@pytest.mark.asyncio
async def test_explicit_provider_id_wins_over_the_state_prefix(
    client: httpx.AsyncClient, dashtam_settings: Settings
) -> None:
    missing = uuid.uuid4()
    async with asgi_client(callback_app(dashtam_settings, client)) as server:
        page = await server.get(
            "/callback", params={"code": "c", "state": f"{uuid.uuid4()}.s", "provider_id": str(missing)}
        )
    assert page.status_code == 404
    assert str(missing) in page.text


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("params", "title", "text"),
    [
        ({"error": "access_denied", "error_description": "User said no"}, "Access was not granted", "User said no"),
        ({"state": "s"}, "Incomplete redirect", "no code or no state"),
        ({"code": "c"}, "Incomplete redirect", "no code or no state"),
        ({"code": "c", "state": "not-a-provider.s"}, "Unknown connection", "does not name a provider"),
    ],
)
async def test_bad_redirects_are_answered_without_calling_the_api(
    dashtam_settings: Settings, params: dict[str, str], title: str, text: str
) -> None:
    async with refusing_api() as api, asgi_client(callback_app(dashtam_settings, api)) as server:
        page = await server.get("/callback", params=params)
    assert page.status_code == 400
    assert title in page.text
    assert text in page.text


@pytest.mark.asyncio
async def test_page_escapes_what_the_provider_sent(dashtam_settings: Settings) -> None:
    async with refusing_api() as api, asgi_client(callback_app(dashtam_settings, api)) as server:
        page = await server.get("/callback", params={"error": "<script>alert(1)</script>"})
    assert page.status_code == 400
    assert "<script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


@pytest.mark.asyncio
async def test_unreachable_api_is_502(dashtam_settings: Settings) -> None:
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{closed_port()}", timeout=2) as api,
        asgi_client(callback_app(dashtam_settings, api)) as server,
    ):
        page = await server.get("/callback", params={"code": "c", "state": f"{uuid.uuid4()}.s"})
    assert page.status_code == 502
    assert "did not answer" in page.text


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "tamper",
    [
        lambda s: {"redirect_uri": "https://evil.example/callback", "client_id": s.PROVIDER_CLIENT_ID},
        lambda s: {
            "redirect_uri": f"http://{s.CALLBACK_HOST}:{s.CALLBACK_PORT}/callback",
            "client_id": "someone-else",
        },
    ],
)
async def test_sandbox_consent_refuses_foreign_redirects_and_clients(
    dashtam_settings: Settings, tamper: Callable[[Settings], dict[str, str]]
) -> None:
    async with refusing_api() as api, asgi_client(callback_app(dashtam_settings, api)) as server:
        page = await server.get("/sandbox/authorize", params={"state": "s", **tamper(dashtam_settings)})
    assert page.status_code == 400
    assert "location" not in page.headers


@pytest.mark.asyncio
async def test_sandbox_consent_is_off_for_other_providers(dashtam_settings: Settings) -> None:
    other = dashtam_settings.model_copy(update={"PROVIDER_NAME": "realbank"})
    async with refusing_api() as api, asgi_client(callback_app(other, api)) as server:
        page = await server.get("/sandbox/authorize", params={"state": "s", "redirect_uri": "x", "client_id": "y"})
    assert page.status_code == 404


@pytest.mark.asyncio
async def test_default_forwarding_client_targets_api_base_url(dashtam_settings: Settings) -> None:
    clients = get_api_client(dashtam_settings)
    api = await anext(clients)
    try:
        assert str(api.base_url).rstrip("/") == dashtam_settings.API_BASE_URL.rstrip("/")
    finally:
        await clients.aclose()
    assert api.is_closed


@pytest.mark.asyncio
async def test_callback_server_health(dashtam_settings: Settings) -> None:
    async with refusing_api() as api, asgi_client(callback_app(dashtam_settings, api)) as server:
        response = await server.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
