"""poll()/apoll(): the first answer, at least one try, a bounded wait, one-line timeouts."""

from __future__ import annotations

import asyncio
import time

import pytest

from pytest_dashtam.errors import BackendError, DashtamError
from pytest_dashtam.poll import PollTimeout, apoll, first_line, poll


def test_returns_the_first_answer() -> None:
    answers = iter([None, None, "ready"])
    assert poll(lambda: next(answers), timeout=5.0, interval=0.001, what="x") == "ready"


def test_a_falsy_answer_is_an_answer() -> None:
    assert poll(lambda: 0, timeout=0.0, interval=0.001, what="x") == 0


def test_a_spent_timeout_still_gets_one_try() -> None:
    calls: list[int] = []

    def check() -> str:
        calls.append(1)
        return "yes"

    assert poll(check, timeout=0.0, interval=1.0, what="x") == "yes"
    assert calls == [1]


def test_timeout_is_one_line_naming_what_and_how_long() -> None:
    tries: list[float] = []
    started = time.monotonic()
    with pytest.raises(PollTimeout) as info:
        poll(lambda: tries.append(time.monotonic()), timeout=0.05, interval=0.01, what="the server to answer")
    assert str(info.value) == "gave up waiting for the server to answer after 0.05s"
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, BackendError)
    assert isinstance(info.value, DashtamError)
    assert len(tries) >= 2  # the first try and one at the deadline at least
    assert tries[-1] - started >= 0.05  # the last try is at the deadline, not before it


def test_retryable_errors_are_not_yet_and_the_last_one_is_told() -> None:
    errors = iter([ConnectionRefusedError("refused\nsecond line"), ConnectionResetError("reset")])

    def check() -> str | None:
        raise next(errors, ConnectionResetError("reset"))

    with pytest.raises(PollTimeout) as info:
        poll(check, timeout=0.02, interval=0.005, what="x", retry=(ConnectionError,))
    assert isinstance(info.value.last, ConnectionResetError)
    assert str(info.value).endswith("(last error: reset)")
    assert "\n" not in str(info.value)


def test_other_errors_end_the_wait_at_once() -> None:
    def check() -> None:
        raise ValueError("wrong password")

    started = time.monotonic()
    with pytest.raises(ValueError, match="wrong password"):
        poll(check, timeout=5.0, interval=0.001, what="x", retry=(ConnectionError,))
    assert time.monotonic() - started < 1.0


def test_interval_may_depend_on_the_time_waited() -> None:
    waited: list[float] = []

    def interval(seconds: float) -> float:
        waited.append(seconds)
        return 0.001

    answers = iter([None, None, None, True])
    assert poll(lambda: next(answers), timeout=5.0, interval=interval, what="x") is True
    assert len(waited) == 3
    assert waited == sorted(waited)


def test_apoll_has_the_same_rules() -> None:
    answers = iter([None, OSError("not yet"), "ready"])

    async def check() -> str | None:
        await asyncio.sleep(0)
        answer = next(answers)
        if isinstance(answer, OSError):
            raise answer
        return answer

    assert asyncio.run(apoll(check, timeout=5.0, interval=0.001, what="x", retry=(OSError,))) == "ready"

    async def never() -> None:
        return None

    with pytest.raises(PollTimeout, match=r"^gave up waiting for y after 0.02s$"):
        asyncio.run(apoll(never, timeout=0.02, interval=0.005, what="y"))


def test_first_line() -> None:
    assert first_line(ValueError("a\nb")) == "a"
    assert first_line(TimeoutError()) == "TimeoutError"
