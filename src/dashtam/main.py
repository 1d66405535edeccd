"""The Dashtam API application.

`create_app()` builds a fresh app (tests build as many as they like, each with its own
dependency overrides); `app` is the one uvicorn serves (`uvicorn dashtam.main:app`). Neither
reads settings nor opens a connection: the dependencies do that on the first request, after a
test runner has exported its environment.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from dashtam.api import api_router, health_router
from dashtam.core.database import dispose_default_engine
from dashtam.core.redis import close_default_redis
from dashtam.core.security import TokenEncryptionError
from dashtam.providers import UnknownProviderError

API_PREFIX = "/api/v1"


async def _configuration_error(request: Request, exc: Exception) -> JSONResponse:
    # A server misconfiguration (bad key, unknown PROVIDER_NAME): say what to fix, hide the traceback.
    return JSONResponse(status_code=status.HTTP_500_INTERNAL_SERVER_ERROR, content={"detail": str(exc)})


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Nothing to open: connections are made on first use. On shutdown, close what was made, so the
    # server leaves no connection for PostgreSQL to time out.
    yield
    await dispose_default_engine()
    await close_default_redis()


def create_app() -> FastAPI:
    # FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from the fastapi-offline package
    # (/static-offline-docs), not from a CDN, so they render on a machine without internet.
    app = FastAPIOffline(
        lifespan=lifespan,
        title="Dashtam",
        summary="Connects a user's accounts at financial providers through OAuth and keeps the tokens.",
        version="0.1.0",
    )
    app.include_router(health_router)
    app.include_router(api_router, prefix=API_PREFIX)
    app.add_exception_handler(UnknownProviderError, _configuration_error)
    app.add_exception_handler(TokenEncryptionError, _configuration_error)
    return app


app = create_app()
