"""Liveness that means something: the app answers only "ok" when both of its servers do."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Response, status
from sqlalchemy import text

from dashtam.api.schemas import CheckResult, HealthStatus
from dashtam.core.database import SessionDep
from dashtam.core.redis import RedisDep

router = APIRouter(tags=["health"])
logger = logging.getLogger(__name__)

# A health probe that hangs is worse than one that fails: orchestrators time out on their own.
CHECK_TIMEOUT_SECONDS = 3.0


async def _check(name: str, probe: Callable[[], Awaitable[object]]) -> CheckResult:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            await probe()
    except Exception as exc:  # any failure means "down"; the reason goes to the log, not the body
        logger.warning("health check: %s is unavailable: %s: %s", name, type(exc).__name__, exc)
        return "unavailable"
    return "ok"


@router.get(
    "/health",
    response_model=HealthStatus,
    responses={status.HTTP_503_SERVICE_UNAVAILABLE: {"model": HealthStatus}},
)
async def health(session: SessionDep, redis: RedisDep, response: Response) -> HealthStatus:
    """200 when PostgreSQL answers SELECT 1 and Redis answers PING; 503 naming what is down."""

    async def database_probe() -> None:
        await session.execute(text("SELECT 1"))

    async def redis_probe() -> None:
        await redis.ping()

    database = await _check("database", database_probe)
    if database != "ok":
        try:
            await session.rollback()
        except Exception:  # the connection is already broken; nothing more to undo
            logger.debug("health check: rollback after a failed probe failed too", exc_info=True)
    redis_state = await _check("redis", redis_probe)
    healthy = database == "ok" and redis_state == "ok"
    if not healthy:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return HealthStatus(status="ok" if healthy else "unavailable", database=database, redis=redis_state)
