"""The HTTP API: `api_router` is mounted under /api/v1, `health_router` at the root."""

from fastapi import APIRouter

from dashtam.api import oauth, providers, users
from dashtam.api.health import router as health_router

api_router = APIRouter()
api_router.include_router(users.router)
api_router.include_router(providers.router)
api_router.include_router(oauth.router)

__all__ = ["api_router", "health_router"]
