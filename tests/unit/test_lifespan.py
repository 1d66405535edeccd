"""isolation/lifespan.py: the app's ASGI lifespan run as a server runs it, on plain ASGI apps and FastAPI apps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from pytest_dashtam.isolation import Lifespan, LifespanError, LoopLifespans, RunningLifespans, dependency_overrides


def _app(events: list[str], *, fail: BaseException | None = None, fail_at_shutdown: bool = False) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        events.append("startup")
        if fail is not None and not fail_at_shutdown:
            raise fail
        app.state.pool = "open"
        yield {"greeting": "hello"}
        events.append("shutdown")
        if fail is not None:
            raise fail

    app = FastAPI(lifespan=lifespan)

    @app.get("/")
    async def index(request: Request) -> dict[str, Any]:
        events.append("request")
        return {"pool": request.app.state.pool, "greeting": request.state.greeting}

    return app


@pytest.mark.asyncio
async def test_startup_before_the_first_request_and_shutdown_at_the_end() -> None:
    events: list[str] = []
    app = _app(events)
    app.state.before = "kept"
    lifespan = Lifespan(app, "myapp.main:app")
    await lifespan.startup()
    assert lifespan.started
    assert lifespan.supported
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=lifespan.app), base_url="http://test") as http:
        assert (await http.get("/")).json() == {"pool": "open", "greeting": "hello"}  # app.state and lifespan state
    await lifespan.shutdown()
    assert events == ["startup", "request", "shutdown"]
    # app.state is as it was before the startup (what the lifespan put there is gone, the rest kept).
    assert not hasattr(app.state, "pool")
    assert app.state.before == "kept"
    await lifespan.shutdown()  # a second shutdown does nothing
    assert events == ["startup", "request", "shutdown"]


@pytest.mark.asyncio
async def test_a_failed_startup_is_one_line_naming_the_app_with_urls_masked() -> None:
    events: list[str] = []
    app = _app(events, fail=ValueError("no database at postgresql://u:secret@db/x\nsee the docs"))
    lifespan = Lifespan(app, "myapp.main:app")
    with pytest.raises(LifespanError) as info:
        await lifespan.startup()
    message = str(info.value)
    assert message.startswith("the lifespan of myapp.main:app failed at startup: ValueError: no database at ")
    assert message.endswith("see the docs")
    assert "\n" not in message
    assert "secret" not in message
    assert not lifespan.started
    assert not hasattr(app.state, "pool")


@pytest.mark.asyncio
async def test_a_lone_error_in_a_task_group_is_shown_unwrapped() -> None:
    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        await receive()
        raise ExceptionGroup("unhandled errors in a TaskGroup", [ConnectionRefusedError("redis is down")])

    with pytest.raises(LifespanError, match=r"failed at startup: ConnectionRefusedError: redis is down$"):
        await Lifespan(app, "a").startup()


@pytest.mark.asyncio
async def test_an_app_that_raises_on_the_lifespan_scope_does_not_support_lifespans() -> None:
    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"

    lifespan = Lifespan(app, "a")
    await lifespan.startup()
    assert not lifespan.supported
    assert not lifespan.started
    await lifespan.shutdown()


@pytest.mark.asyncio
async def test_an_app_that_returns_on_the_lifespan_scope_does_not_support_lifespans() -> None:
    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        return None

    lifespan = Lifespan(app, "a")
    await lifespan.startup()
    assert not lifespan.supported


@pytest.mark.asyncio
async def test_an_app_that_crashes_after_receiving_the_startup_failed() -> None:
    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        await receive()
        raise KeyError("MAILER_KEY")

    with pytest.raises(LifespanError, match=r"^the lifespan of a failed at startup: KeyError: 'MAILER_KEY'$"):
        await Lifespan(app, "a").startup()


@pytest.mark.asyncio
async def test_a_startup_failed_message_without_an_exception_shows_its_last_line() -> None:
    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "Traceback...\n  File x\nOSError: port taken\n"})

    with pytest.raises(LifespanError, match=r"failed at startup: OSError: port taken$"):
        await Lifespan(app, "a").startup()


@pytest.mark.asyncio
async def test_a_hanging_startup_is_cut_at_its_deadline() -> None:
    cancelled = asyncio.Event()

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        await receive()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(LifespanError, match=r"^the lifespan of a did not finish its startup within 0.1s; "):
        await Lifespan(app, "a", startup_timeout=0.1).startup()
    assert cancelled.is_set()


@pytest.mark.asyncio
async def test_a_failed_shutdown_is_a_lifespan_error() -> None:
    events: list[str] = []
    app = _app(events, fail=RuntimeError("pool would not close"), fail_at_shutdown=True)
    lifespan = Lifespan(app, "a")
    await lifespan.startup()
    with pytest.raises(
        LifespanError, match=r"^the lifespan of a failed at shutdown: RuntimeError: pool would not close$"
    ):
        await lifespan.shutdown()
    assert not hasattr(app.state, "pool")


@pytest.mark.asyncio
async def test_a_hanging_shutdown_is_cut_at_its_deadline() -> None:
    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await asyncio.sleep(3600)

    lifespan = Lifespan(app, "a", shutdown_timeout=0.1)
    await lifespan.startup()
    with pytest.raises(LifespanError, match=r"did not finish its shutdown within 0.1s \(cancelled\)$"):
        await lifespan.shutdown()


@pytest.mark.asyncio
async def test_an_inner_lifespan_puts_the_outer_one_s_app_state_back() -> None:
    runs = iter(range(1, 10))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.run = next(runs)
        yield

    app = FastAPI(lifespan=lifespan)
    outer, inner = Lifespan(app, "a"), Lifespan(app, "a")
    await outer.startup()
    assert app.state.run == 1
    await inner.startup()  # e.g. a test in a function loop, inside a session-loop suite
    assert app.state.run == 2
    await inner.shutdown()
    assert app.state.run == 1
    await outer.shutdown()
    assert not hasattr(app.state, "run")


@pytest.mark.asyncio
async def test_a_loop_scope_starts_each_app_s_lifespan_once_and_shuts_them_down_last_first() -> None:
    events: list[str] = []

    def app_with(name: str) -> FastAPI:
        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            events.append(f"startup {name}")
            yield
            events.append(f"shutdown {name}")

        return FastAPI(lifespan=lifespan)

    first, second = app_with("first"), app_with("second")
    lifespans = LoopLifespans()
    served = await lifespans.serve(first, "first")
    assert await lifespans.serve(first, "first") is not first  # the app wrapped with its lifespan state
    await lifespans.serve(second, "second")
    await lifespans.serve(first, "first")
    assert events == ["startup first", "startup second"]
    assert await lifespans.shutdown() == []
    assert events == ["startup first", "startup second", "shutdown second", "shutdown first"]
    assert served is not first


@pytest.mark.asyncio
async def test_a_failed_startup_is_remembered_for_the_loop_scope() -> None:
    events: list[str] = []
    app = _app(events, fail=RuntimeError("no key"))
    lifespans = LoopLifespans()
    for _ in range(2):
        with pytest.raises(LifespanError, match=r"^the lifespan of a failed at startup: RuntimeError: no key$"):
            await lifespans.serve(app, "a")
    assert events == ["startup"]  # not tried again
    assert await lifespans.shutdown() == []


@pytest.mark.asyncio
async def test_shutdown_problems_are_returned_one_line_each() -> None:
    events: list[str] = []
    lifespans = LoopLifespans()
    await lifespans.serve(_app(events, fail=RuntimeError("stuck"), fail_at_shutdown=True), "a")

    async def no_lifespan(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        raise RuntimeError("http only")

    assert await lifespans.serve(no_lifespan, "b") is no_lifespan  # no lifespan support: served as it is
    assert await lifespans.shutdown() == ["the lifespan of a failed at shutdown: RuntimeError: stuck"]


def test_the_running_lifespans_are_the_running_loop_s() -> None:
    lifespans = RunningLifespans()
    mine = LoopLifespans()
    registered = lifespans.running(mine)

    async def enter() -> LoopLifespans | None:
        registered.__enter__()
        return lifespans.current()

    async def leave() -> LoopLifespans | None:
        registered.__exit__(None, None, None)
        return lifespans.current()

    async def look() -> LoopLifespans | None:
        return lifespans.current()

    with asyncio.Runner() as first, asyncio.Runner() as second:
        assert first.run(enter()) is mine
        assert second.run(look()) is None  # another loop: what the lifespan opened is not for it
        assert first.run(look()) is mine
        assert first.run(leave()) is None


@pytest.mark.asyncio
async def test_a_plain_asgi_app_with_a_lifespan_and_nothing_to_override() -> None:
    """Not FastAPI: the lifespan protocol by hand, state through the scope, no dependency_overrides at all."""
    events: list[str] = []

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                events.append(message["type"])
                if message["type"] == "lifespan.startup":
                    scope["state"]["token"] = "t"
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["state"]["token"].encode()})

    lifespans = LoopLifespans()
    served = await lifespans.serve(app, "plain:app")
    with dependency_overrides(app, {}):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=served), base_url="http://test") as http:
            assert (await http.get("/")).text == "t"
    assert await lifespans.shutdown() == []
    assert events == ["lifespan.startup", "lifespan.shutdown"]
