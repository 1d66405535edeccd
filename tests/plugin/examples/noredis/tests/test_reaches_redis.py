"""Code that reaches for a Redis anyway (a fixed address) is refused by the guard, with the reason."""

import redis


def test_reaches_for_the_machines_redis():
    redis.Redis(host="127.0.0.1", port=6379, db=0).ping()
