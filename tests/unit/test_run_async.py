"""`run_async`: sync code running a coroutine still stops on Ctrl-C, whatever the coroutine does with cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Iterator

import pytest

from pytest_dashtam.isolation import run_async


@contextlib.contextmanager
def interrupted_soon(delay: float = 0.2) -> Iterator[None]:
    """Ctrl-C (SIGINT to this process) `delay` seconds in, and KeyboardInterrupt expected out of the block."""
    timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        timer.cancel()


def test_ctrl_c_reaches_the_caller_even_when_the_coroutine_swallows_cancellation() -> None:
    """asyncio.run / asyncio.Runner turn SIGINT into a cancellation and lose it when the code under them takes
    the CancelledError for a timeout; the run would go on after Ctrl-C. Here it must not."""
    unwound: list[str] = []

    async def swallows() -> str:
        for _ in range(15):
            try:
                await asyncio.sleep(0.1)
            except asyncio.CancelledError:
                unwound.append("cancelled")  # taken for a timeout and retried: what some drivers do
        return "went on after Ctrl-C"

    with interrupted_soon():
        run_async(swallows)
    # The interrupted coroutine was cancelled and given its bounded time to unwind, not left pending.
    assert unwound


def test_the_interrupted_coroutine_closes_what_it_opened() -> None:
    closed = threading.Event()

    async def holds() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            closed.set()

    with interrupted_soon():
        run_async(holds)
    assert closed.is_set()


def test_results_and_errors_pass_through() -> None:
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    async def fails() -> None:
        raise ValueError("boom")

    assert run_async(answer) == 42
    with pytest.raises(ValueError, match="boom"):
        run_async(fails)


def test_inside_a_running_loop_the_work_goes_to_a_thread() -> None:
    async def outer() -> int:
        async def inner() -> int:
            return 7

        return run_async(inner)

    assert asyncio.run(outer()) == 7
