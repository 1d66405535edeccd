"""The OAuth callback server: where the provider sends the user's browser back after consent.

It is its own small ASGI app (`uvicorn dashtam.callback:app --port 8182`, or
`python -m dashtam.callback`) so that the API never has to be reachable from a browser at the
provider's redirect URI. It forwards `code` and `state` to the API's callback endpoint and shows
the person a page saying what happened. The API client it forwards with is the dependency
`get_api_client`: tests override it with a client over the API app's ASGI transport.

With the sandbox provider it also plays the provider's consent step (`/sandbox/authorize`), so
the whole flow runs offline: point PROVIDER_AUTHORIZE_URL at it.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import AsyncGenerator
from html import escape
from typing import Annotated, Any
from urllib.parse import urlencode

import httpx
from fastapi import Depends, FastAPI, Query, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from dashtam.api.oauth import CALLBACK_PATH, redirect_uri
from dashtam.core.config import Settings, get_settings
from dashtam.providers.sandbox import SandboxProvider

SettingsDep = Annotated[Settings, Depends(get_settings)]
FORWARD_TIMEOUT_SECONDS = 15.0


def api_verify(settings: Settings) -> ssl.SSLContext | bool:
    """What the forwarding client verifies the API's certificate with: API_CA_FILE alone when set (the dev
    environment's self-signed certificate), else the system's CAs. Never off."""
    if settings.API_CA_FILE is None:
        return True
    return ssl.create_default_context(cafile=str(settings.API_CA_FILE))


async def get_api_client(settings: SettingsDep) -> AsyncGenerator[httpx.AsyncClient, None]:
    """The client that forwards to the API at settings.API_BASE_URL (tests override this)."""
    async with httpx.AsyncClient(
        base_url=settings.API_BASE_URL, timeout=FORWARD_TIMEOUT_SECONDS, verify=api_verify(settings)
    ) as client:
        yield client


ApiClientDep = Annotated[httpx.AsyncClient, Depends(get_api_client)]


def _page(title: str, message: str, status_code: int) -> HTMLResponse:
    ok = status_code < 400
    body = f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Dashtam: {escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem}}
h1{{color:{"#1a7f37" if ok else "#b42318"}}}</style></head>
<body><h1>{escape(title)}</h1><p id="message">{escape(message)}</p>
<p>{"You can close this window." if ok else "Close this window and start the connection again in Dashtam."}</p>
</body></html>
"""
    return HTMLResponse(body, status_code=status_code)


def _provider_id(state: str, explicit: str | None) -> uuid.UUID | None:
    """The provider the state was issued for: explicit `provider_id`, else the state's prefix."""
    candidate = explicit if explicit else state.partition(".")[0]
    try:
        return uuid.UUID(candidate)
    except ValueError:
        return None


def _api_error(response: httpx.Response) -> str:
    try:
        detail: Any = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):  # FastAPI's validation errors
        return "; ".join(str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in detail)
    return f"the Dashtam API answered HTTP {response.status_code}"


def create_callback_app() -> FastAPI:
    app = FastAPI(title="Dashtam OAuth callback", version="0.1.0", docs_url=None, redoc_url=None)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(CALLBACK_PATH, response_class=HTMLResponse)
    async def callback(
        api: ApiClientDep,
        code: str | None = None,
        state: str | None = None,
        provider_id: str | None = None,
        error: str | None = None,
        error_description: str | None = None,
    ) -> HTMLResponse:
        """Forward the provider's redirect to the API and show its outcome."""
        if error:
            reason = f"{error}: {error_description}" if error_description else error
            return _page("Access was not granted", f"The provider said: {reason}", status.HTTP_400_BAD_REQUEST)
        if not code or not state:
            return _page(
                "Incomplete redirect",
                "The provider's redirect carried no code or no state.",
                status.HTTP_400_BAD_REQUEST,
            )
        target = _provider_id(state, provider_id)
        if target is None:
            return _page(
                "Unknown connection",
                "The state does not name a provider connection of this Dashtam.",
                status.HTTP_400_BAD_REQUEST,
            )
        try:
            response = await api.get(
                f"/api/v1/providers/{target}/authorization/callback", params={"code": code, "state": state}
            )
        except httpx.HTTPError as exc:
            return _page(
                "Dashtam is unreachable",
                f"The Dashtam API did not answer ({type(exc).__name__}); try again in a moment.",
                status.HTTP_502_BAD_GATEWAY,
            )
        if response.is_success:
            scope = response.json().get("scope")
            granted = f" with access to: {scope}" if scope else ""
            return _page("Connected", f"Your account is connected{granted}.", status.HTTP_200_OK)
        return _page("Connection failed", _api_error(response), response.status_code)

    @app.get("/sandbox/authorize", response_model=None)
    async def sandbox_authorize(
        settings: SettingsDep,
        state: Annotated[str, Query(min_length=1)],
        redirect_uri_: Annotated[str, Query(alias="redirect_uri")],
        client_id: str | None = None,
    ) -> Response:
        """The sandbox provider's consent step: approve at once and redirect back with a code."""
        if settings.PROVIDER_NAME != "sandbox":
            return _page("Not available", "The sandbox provider is not configured.", status.HTTP_404_NOT_FOUND)
        # Only ever redirect to our own callback: anything else would be an open redirect.
        if redirect_uri_ != redirect_uri(settings) or client_id != settings.PROVIDER_CLIENT_ID:
            return _page(
                "Invalid authorization request",
                "The redirect_uri or client_id does not match this Dashtam's configuration.",
                status.HTTP_400_BAD_REQUEST,
            )
        code = SandboxProvider.from_settings(settings).issue_code(state)
        return RedirectResponse(
            f"{redirect_uri_}?{urlencode({'code': code, 'state': state})}", status_code=status.HTTP_302_FOUND
        )

    return app


app = create_callback_app()


def main() -> None:
    """Serve the callback app on settings.CALLBACK_HOST:CALLBACK_PORT."""
    import uvicorn

    settings = get_settings()
    uvicorn.run(app, host=settings.CALLBACK_HOST, port=settings.CALLBACK_PORT)


if __name__ == "__main__":
    main()
