"""Asked for anyway, the Redis fixture says why there is none (run on its own by the outer test)."""


async def test_asks_for_redis(redis_client):
    pass
