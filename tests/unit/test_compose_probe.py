"""The compose backend's probe of a Redis that answers but refuses (a password the project's Redis asks for):
one line at once, the password masked, not a retried wait nor a traceback."""

from __future__ import annotations

import time

import pytest
from fake_servers import FakeServer

from pytest_dashtam.backends._compose_probe import ProbeError, redis_facts


def test_a_refusing_redis_is_one_line_at_once_with_the_password_masked() -> None:
    with FakeServer("noauth", "Redis") as server:
        started = time.monotonic()
        with pytest.raises(ProbeError) as info:
            redis_facts(f"redis://:s3cret@127.0.0.1:{server.port}", timeout=30)
        waited = time.monotonic() - started
    message = str(info.value)
    assert message == f"Redis at redis://:***@127.0.0.1:{server.port} refused the plugin: Authentication required."
    assert "s3cret" not in message
    assert waited < 30  # refused at the first answer, not retried until the timeout
