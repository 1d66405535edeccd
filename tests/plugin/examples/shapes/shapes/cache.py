"""The Redis client at import time."""

from redis.asyncio import Redis

from shapes.config import settings

redis = Redis.from_url(settings.redis_url, decode_responses=True)


async def get_redis() -> Redis:
    return redis
