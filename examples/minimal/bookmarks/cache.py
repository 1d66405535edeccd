"""The Redis client and its dependency: the bookmark cache and the rate limit live here."""

from redis.asyncio import Redis

from bookmarks.config import settings

redis = Redis.from_url(settings.redis_url, decode_responses=True)


async def get_redis() -> Redis:
    return redis
