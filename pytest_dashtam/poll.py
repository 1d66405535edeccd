"""Waiting for something to become true, always with a deadline.

Every readiness wait (a server accepting logins, a container turning healthy, a process gone) has the same
shape: try, and if not yet, sleep a little and try again until a deadline, then fail with one line that says
what was awaited and for how long. Written once here, no wait can be unbounded or give up before its one
fair try, and a timeout reads the same everywhere.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pytest_dashtam.errors import BackendError

T = TypeVar("T")

# A fixed pause, or one chosen from the seconds waited so far (probe fast at first, then back off).
Interval = float | Callable[[float], float]


class PollTimeout(BackendError, TimeoutError):
    """What was awaited did not happen in time; `last` is the last error a try was allowed to raise."""

    def __init__(self, what: str, timeout: float, last: BaseException | None = None) -> None:
        self.what = what
        self.timeout = timeout
        self.last = last
        cause = f" (last error: {first_line(last)})" if last is not None else ""
        super().__init__(f"gave up waiting for {what} after {timeout:g}s{cause}")


def first_line(exc: BaseException) -> str:
    """An exception as one line: its message's first line, else its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _pause(interval: Interval, waited: float) -> float:
    return interval(waited) if callable(interval) else interval


def poll(
    check: Callable[[], T | None],
    *,
    timeout: float,
    interval: Interval,
    what: str,
    retry: tuple[type[BaseException], ...] = (),
) -> T:
    """The first value of `check()` that is not None, tried until `timeout` seconds have passed.

    `check` is always tried at least once, and once more at the deadline, so a zero or spent timeout still
    gets a fair answer. An exception of a type in `retry` counts as "not yet" (it becomes `last` of the
    `PollTimeout`); any other exception ends the wait at once, which is how a check says "this will never
    succeed" (a server that exited, a wrong password).
    """
    started = time.monotonic()
    deadline = started + timeout
    last: BaseException | None = None
    while True:
        try:
            value = check()
        except retry as exc:
            last, value = exc, None
        if value is not None:
            return value
        now = time.monotonic()
        if now >= deadline:
            raise PollTimeout(what, timeout, last)
        time.sleep(min(_pause(interval, now - started), deadline - now))


async def apoll(
    check: Callable[[], Awaitable[T | None]],
    *,
    # Bounds the tries, not one await (asyncio.timeout would cancel a try mid-way, and skip the last one).
    timeout: float,  # noqa: ASYNC109
    interval: Interval,
    what: str,
    retry: tuple[type[BaseException], ...] = (),
) -> T:
    """`poll` for a check that must await (an asyncpg connection); the same rules."""
    started = time.monotonic()
    deadline = started + timeout
    last: BaseException | None = None
    while True:
        try:
            value = await check()
        except retry as exc:
            last, value = exc, None
        if value is not None:
            return value
        now = time.monotonic()
        if now >= deadline:
            raise PollTimeout(what, timeout, last)
        await asyncio.sleep(min(_pause(interval, now - started), deadline - now))
