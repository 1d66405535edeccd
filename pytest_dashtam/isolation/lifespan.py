"""The app's ASGI lifespan, run as a server runs it: startup before the first request, shutdown at the end.

`httpx.ASGITransport` sends requests only, so an app that opens its engine, Redis pool or outbound clients in
its lifespan (and keeps them on `app.state`, or yields them as lifespan state) would find nothing there under
`client`. `Lifespan` is what asgi-lifespan's `LifespanManager` and Starlette's `TestClient` do, without a
dependency: it calls the app with a `lifespan` scope in a task of the running loop, sends `lifespan.startup`
and waits for `lifespan.startup.complete` (or `.failed`), and at the end sends `lifespan.shutdown`, each step
under a deadline (https://asgi.readthedocs.io/en/latest/specs/lifespan.html).

The task lives in one event loop, so what the lifespan opens belongs to that loop: `LoopLifespans` keeps the
lifespans of one pytest-asyncio loop scope (once per session for tests in the session loop, once per test for
tests in function loops). Two of them can overlap (a function-loop test inside a session-loop suite), so
`app.state` is put back as it was before each startup when its lifespan shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

from pytest_dashtam.errors import DashtamError
from pytest_dashtam.urls import mask_urls_in

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

# What a startup may take (connecting, warming caches) and what a shutdown may take (closing pools).
STARTUP_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 10.0
# How long the app's task may take to end once it answered (or after it is cancelled).
_GRACE = 2.0


class LifespanError(DashtamError):
    """The app's lifespan failed or hung at startup or shutdown (one line naming the app)."""


def _one_line(exc: BaseException) -> str:
    """`Type: message` of what the lifespan raised, on one line, URLs masked; a lone grouped error unwrapped
    (anyio task groups in lifespans wrap what failed)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    text = " ".join(str(exc).split())
    return mask_urls_in(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _last_line(text: str) -> str:
    """The last line of a `lifespan.*.failed` message (Starlette sends the whole traceback there)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return mask_urls_in(lines[-1]) if lines else "no message"


class Lifespan:
    """One run of `app`'s lifespan in the running event loop; `label` names the app in every message.

    `startup()` raises `LifespanError` when the app reports a failed startup, raises after it received the
    startup event, or does not answer in time; an app that raises (or returns) before it even receives the
    event does not support lifespans (the spec: the server then goes on without), and `supported` is False.
    `app` is the app as requests must reach it: each request's scope carries a copy of the lifespan state.
    """

    def __init__(
        self,
        app: Any,
        label: str,
        *,
        startup_timeout: float = STARTUP_TIMEOUT,
        shutdown_timeout: float = SHUTDOWN_TIMEOUT,
    ) -> None:
        self.target = app
        self.label = label
        self.startup_timeout = startup_timeout
        self.shutdown_timeout = shutdown_timeout
        self.state: dict[str, Any] = {}
        self.supported = True
        self.started = False
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._received = False
        self._task: asyncio.Task[None] | None = None
        self._saved_state: dict[str, Any] | None = None

    @property
    def app(self) -> ASGIApp:
        """The app, its requests given the lifespan state (what Starlette's `request.state` reads)."""
        target, state = self.target, self.state

        async def with_state(scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
            if scope.get("type") in ("http", "websocket") and "state" not in scope:
                scope = {**scope, "state": dict(state)}  # a shallow copy per request, as the spec says
            await target(scope, receive, send)

        return with_state

    # --- the ASGI side ---
    async def _receive(self) -> Message:
        self._received = True
        return await self._inbox.get()

    async def _send(self, message: Message) -> None:
        await self._outbox.put(message)

    async def _run(self, scope: MutableMapping[str, Any]) -> None:
        await self.target(scope, self._receive, self._send)

    async def _next(self, seconds: float) -> Message | None:
        """The app's next message; None when its task ended without one. TimeoutError when neither came."""
        assert self._task is not None
        if self._outbox.empty() and not self._task.done():
            getter = asyncio.ensure_future(self._outbox.get())
            try:
                await asyncio.wait({getter, self._task}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not getter.done():
                    getter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await getter
            if getter.done() and not getter.cancelled():
                return getter.result()
            if not self._task.done():
                raise TimeoutError
        return None if self._outbox.empty() else self._outbox.get_nowait()

    async def _ended(self, *, cancel: bool = False) -> BaseException | None:
        """Wait (briefly) for the app's task to end: what it raised, if anything; cancelled if it hangs (or at
        once with `cancel`: it missed its deadline)."""
        task = self._task
        if task is None:
            return None
        if not task.done() and not cancel:
            await asyncio.wait({task}, timeout=_GRACE)
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=_GRACE)
        if not task.done() or task.cancelled():
            return None
        return task.exception()

    # --- startup and shutdown ---
    async def startup(self) -> None:
        """Run the startup; returns once the app has started (or turned out not to support lifespans)."""
        self._saved_state = _state_of(self.target)
        scope: dict[str, Any] = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        scope["state"] = self.state
        self._task = asyncio.get_running_loop().create_task(self._run(scope), name=f"lifespan of {self.label}")
        await self._inbox.put({"type": "lifespan.startup"})
        try:
            message = await self._next(self.startup_timeout)
        except TimeoutError:
            await self._ended(cancel=True)
            self._restore()
            raise LifespanError(
                f"the lifespan of {self.label} did not finish its startup within {self.startup_timeout:g}s; "
                "find what it waits for (a server it connects to, a lock)"
            ) from None
        if message is not None and message.get("type") == "lifespan.startup.complete":
            self.started = True
            return
        error = await self._ended()
        self._restore()
        if message is None and not self._received:
            # Raised or returned before receiving the startup event: no lifespan support (the spec's server
            # goes on without one; so does `client`).
            self.supported = False
            return
        if error is not None:
            detail = _one_line(error)
        elif message is not None and message.get("type") == "lifespan.startup.failed":
            detail = _last_line(str(message.get("message") or ""))
        else:
            detail = f"it ended without completing the startup (sent {message!r})"
        raise LifespanError(f"the lifespan of {self.label} failed at startup: {detail}")

    async def shutdown(self) -> None:
        """Run the shutdown (if the startup completed); `app.state` is put back as it was before the startup."""
        if not self.started:
            return
        self.started = False
        try:
            await self._shutdown()
        finally:
            self._restore()

    async def _shutdown(self) -> None:
        assert self._task is not None
        if self._task.done():
            error = await self._ended()
            if error is not None:
                raise LifespanError(f"the lifespan of {self.label} ended before its shutdown: {_one_line(error)}")
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        try:
            message = await self._next(self.shutdown_timeout)
        except TimeoutError:
            await self._ended(cancel=True)
            raise LifespanError(
                f"the lifespan of {self.label} did not finish its shutdown within {self.shutdown_timeout:g}s "
                "(cancelled)"
            ) from None
        error = await self._ended()
        if message is not None and message.get("type") == "lifespan.shutdown.failed":
            detail = _one_line(error) if error is not None else _last_line(str(message.get("message") or ""))
            raise LifespanError(f"the lifespan of {self.label} failed at shutdown: {detail}")
        if error is not None:
            raise LifespanError(f"the lifespan of {self.label} failed at shutdown: {_one_line(error)}")

    def _restore(self) -> None:
        store = _state_store(self.target)
        if store is not None and self._saved_state is not None:
            store.clear()
            store.update(self._saved_state)
        self._saved_state = None


def _state_store(app: Any) -> dict[str, Any] | None:
    """The dict behind Starlette's `app.state` (a `State` keeps its attributes in `_state`), if there is one."""
    store = getattr(getattr(app, "state", None), "_state", None)
    return store if isinstance(store, dict) else None


def _state_of(app: Any) -> dict[str, Any] | None:
    store = _state_store(app)
    return dict(store) if store is not None else None


class LoopLifespans:
    """The lifespans started in one loop scope's event loop, one per app, shut down together when it ends.

    `client` asks for its app on first use (`serve`), so the lifespan starts before the first request of that
    loop; a startup failure is remembered, and every later `serve` of that app says the same line.
    """

    def __init__(self) -> None:
        self._apps: dict[int, tuple[Any, Lifespan]] = {}  # id(app): (the app, kept alive for its id; its run)
        self._failures: dict[int, str] = {}

    async def serve(self, app: Any, label: str) -> ASGIApp:
        """The app as `client` must send it requests: with its lifespan started (once) in this loop."""
        key = id(app)
        if key in self._failures:
            raise LifespanError(self._failures[key])
        entry = self._apps.get(key)
        if entry is None:
            lifespan = Lifespan(app, label)
            try:
                await lifespan.startup()
            except LifespanError as exc:
                self._failures[key] = str(exc)
                raise
            entry = self._apps[key] = (app, lifespan)
        lifespan = entry[1]
        return lifespan.app if lifespan.started else app

    async def shutdown(self) -> list[str]:
        """Shut every lifespan down, the last started first; the problems, one line each."""
        problems: list[str] = []
        while self._apps:
            _, lifespan = self._apps.pop(next(reversed(self._apps)))
            try:
                await lifespan.shutdown()
            except LifespanError as exc:
                problems.append(str(exc))
        self._failures.clear()
        return problems


class RunningLifespans:
    """Each event loop's `LoopLifespans`, for `client` to find its loop's."""

    def __init__(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopLifespans] = weakref.WeakKeyDictionary()

    @contextlib.contextmanager
    def running(self, lifespans: LoopLifespans) -> Iterator[None]:
        """`lifespans` are the running loop's while the block runs."""
        loop = asyncio.get_running_loop()
        self._by_loop[loop] = lifespans
        try:
            yield
        finally:
            if self._by_loop.get(loop) is lifespans:
                del self._by_loop[loop]

    def current(self) -> LoopLifespans | None:
        """The running loop's lifespans, if its loop scope keeps some."""
        return self._by_loop.get(asyncio.get_running_loop())
