"""A bound on every wait of the tests: the stack's servers are pinged while tests run, and a server that
stops answering stops the run with one line naming it.

A test blocked on a server that was stopped (SIGSTOP, a frozen VM, a paused container) waits forever: the
drivers set no deadline on a query, and a test's own query may legitimately take long, so a per-query
timeout would be the wrong bound. Instead a thread asks each server the cheapest question its protocol
has (PostgreSQL: an SSLRequest, answered with one byte before any authentication; Redis: PING, answered
even without a password with -NOAUTH) once a second. A server that refuses connections is gone; one that
accepts but gives no answer for `timeout` seconds is hung.

What happens then is what a dead server would cause, only sooner: the thread shuts down this process's
TCP connections to the hung server (`sever`), and keeps doing so for any new one until the run's end, so
the test's blocked read, the fixtures' teardown (a rollback, a FLUSHDB, a pool's dispose) and the leases'
close each fail at once instead of waiting out a driver's timeout, or forever. The test fails, the next
report sees `fired` and the run stops through pytest's `shouldstop` (under xdist the worker ends normally,
so it is not replaced by a new one that would hang on the same server). Only when the main thread shows no
sign of life within a short grace (it is blocked on something severing cannot reach: a Unix socket, a
lock) is it interrupted with SIGINT, pytest's own interrupt path, and again if the first was swallowed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil

from pytest_dashtam.errors import BackendError
from pytest_dashtam.urls import host_port

if TYPE_CHECKING:
    from pytest_dashtam.backends.base import Stack

# The SSLRequest message: length 8, then the magic code 1234.5679; any live server answers 'S' or 'N'.
_SSL_REQUEST = struct.pack("!II", 8, 80877103)
_INTERVAL = 1.0
# How long a server may be silent when no --dashtam-timeout is given.
DEFAULT_TIMEOUT = 30.0
# Once fired: how often new connections to the hung server are severed (a driver's reconnect, a retry).
_SEVER_INTERVAL = 0.05
# Once fired: every how many severing rounds this process's children are checked (see stop_children_on).
_CHILDREN_EVERY = 5
# How long the main thread gets to show it noticed (a report after the severing) before the SIGINT.
_GRACE = 2.0
# How many interrupts a main thread that stays stuck gets (each a grace apart) before it is left to pytest.
_INTERRUPTS = 3
_GONE = "refuses connections: the test stack is gone (a server was stopped or killed)"
# A refused connection is final only when it repeats: a server restarting its listener refuses briefly.
_REFUSALS = 3


@dataclass(frozen=True)
class Server:
    """One server the watchdog pings: what to call it in the message, and where it listens."""

    kind: str  # "PostgreSQL" or "Redis"
    host: str
    port: int | None

    @property
    def where(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @classmethod
    def from_url(cls, kind: str, url: str) -> Server:
        host, port = host_port(url)
        return cls(kind, host, port)


def ping(server: Server, timeout: float) -> str | None:
    """None when the server answered its protocol's first question within `timeout`, else what went wrong."""
    try:
        if server.host.startswith("/"):  # a Unix socket: PostgreSQL's directory, or Redis's socket itself
            path = f"{server.host}/.s.PGSQL.{server.port or 5432}" if server.kind == "PostgreSQL" else server.host
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(path)
        else:
            sock = _connect_tcp(server.host, server.port or 0, timeout)
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return f"unreachable ({exc.strerror or exc})"
    try:
        sock.settimeout(timeout)
        sock.sendall(_SSL_REQUEST if server.kind == "PostgreSQL" else b"PING\r\n")
        return None if sock.recv(16) else "closed"
    except TimeoutError:
        return "silent"
    except OSError as exc:
        return f"unreachable ({exc.strerror or exc})"
    finally:
        sock.close()


def _connect_tcp(host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to `host`; an address literal (what the stacks' URLs hold) is connected to without a
    name lookup: the ping runs once a second beside the tests, and a lookup is theirs to make or fake."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.create_connection((host, port), timeout=timeout)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _addresses(server: Server) -> set[tuple[str, int]]:
    """The (address, port) pairs a TCP connection to `server` has as its peer; none for a Unix socket."""
    if server.host.startswith("/"):
        return set()
    port = server.port or (5432 if server.kind == "PostgreSQL" else 6379)
    try:
        infos = socket.getaddrinfo(server.host, port, type=socket.SOCK_STREAM)
    except OSError:
        return set()
    found = {(str(info[4][0]), port) for info in infos}
    # An IPv4 peer of a dual-stack socket shows as ::ffff:a.b.c.d.
    return found | {(f"::ffff:{ip}", p) for ip, p in found if ":" not in ip}


def sever(addresses: set[tuple[str, int]]) -> int:
    """Shut down (both ways) every TCP connection of this process whose peer is one of `addresses`; how many.

    What a hung server's clients wait for is an answer or the end of the connection: `shutdown()` gives
    them the end at once (a blocked read returns EOF, a write fails), as if the server had closed it. The
    socket is reached through a duplicate of its descriptor and checked by its peer name first, since a
    descriptor listed a moment ago may have been closed and reused since. Unix sockets are not reached.
    """
    if not addresses:
        return 0
    count = 0
    try:
        connections = psutil.Process().net_connections(kind="tcp")
    except psutil.Error:
        return 0
    for conn in connections:
        if conn.fd < 0 or not conn.raddr or (conn.raddr.ip, conn.raddr.port) not in addresses:
            continue
        try:
            duplicate = socket.socket(fileno=os.dup(conn.fd))
        except OSError:
            continue
        with duplicate, contextlib.suppress(OSError):
            peer = duplicate.getpeername()
            if (str(peer[0]), int(peer[1])) in addresses:
                duplicate.shutdown(socket.SHUT_RDWR)
                count += 1
    return count


def stop_children_on(addresses: set[tuple[str, int]]) -> int:
    """SIGKILL this process's descendants that hold a TCP connection to one of `addresses`; how many.

    Their sockets are beyond `sever`'s reach, and what they wait for will not come: the migration's
    `alembic upgrade` child, for one, would otherwise wait out its own timeout (minutes) on a hung server.
    The servers a local stack runs are children too, but their connections have the server's port as the
    local end, never as the peer.
    """
    if not addresses:
        return 0
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return 0
    count = 0
    for child in children:
        with contextlib.suppress(psutil.Error):
            if any(c.raddr and (c.raddr.ip, c.raddr.port) in addresses for c in child.net_connections(kind="tcp")):
                child.kill()
                count += 1
    return count


class Watchdog:
    """Pings `servers` from a daemon thread between `start()` and `stop()`; once fired, severs instead.

    `doing` (or `current()`) says what the run is doing (the stack's preparation, a test's node id), for the
    message. When a server is gone or silent for `timeout` seconds, `fired` holds the one line and this
    process's connections to it are severed from then on. `after_report()` (the main thread, after each
    report) returns the line once fired. Between `tests_begin()` and `end_of_tests()`, a main thread that
    shows no sign of life within the grace after the firing is interrupted (by default: SIGINT to it).
    """

    def __init__(
        self,
        servers: list[Server],
        timeout: float,
        current: Callable[[], str] | None = None,
        interrupt: Callable[[], None] | None = None,
        *,
        grace: float = _GRACE,
    ) -> None:
        self.servers = servers
        self.timeout = timeout
        self.doing = "the run"
        self.current = current or (lambda: self.doing)
        self.grace = grace
        self.fired: str | None = None
        self.hung: Server | None = None
        self.severed = 0  # connections shut down since firing (for tests and the curious)
        self._interrupt = interrupt or _interrupt_main
        self._in_tests = threading.Event()  # a stuck main thread may be interrupted (pytest's interrupt path)
        self._stopped = threading.Event()
        self._wake = threading.Event()
        self._fired_at = 0.0
        self._progress = 0.0  # when the main thread last reported after the firing (0: not yet)
        self._thread: threading.Thread | None = None
        # The latest completed ping of each server by the thread (None: it answered).
        self._last: dict[Server, str | None] = {}
        # Held while either side decides: a check after a failed test and the thread never both report
        # (an interrupt landing in the middle of the main thread's own check would cut it short).
        self._deciding = threading.Lock()

    @classmethod
    def for_stack(cls, stack: Stack, timeout: float) -> Watchdog:
        """A watchdog of the stack's servers (PostgreSQL, and Redis unless the project has none)."""
        servers = [Server.from_url("PostgreSQL", stack.postgres_url)]
        if stack.has_redis:
            servers.append(Server.from_url("Redis", stack.redis_url))
        return cls(servers, timeout)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="pytest-dashtam-watchdog", daemon=True)
        self._thread.start()

    def tests_begin(self) -> None:
        """From now until `end_of_tests()`, a main thread stuck after the firing is interrupted."""
        self.doing = "the first test's setup"
        self._in_tests.set()
        if self.fired is not None:
            self._progress = time.monotonic()  # fired during the preparation: the first report will say so

    def end_of_tests(self) -> None:
        """No more interrupts: the fixtures' teardown and the run's finish are left to severing alone (an
        interrupt there would cut short the stopping of the stack)."""
        self._in_tests.clear()
        self.doing = "the end of the run (teardown)"

    def stop(self) -> None:
        """The run is done with the servers: the thread ends."""
        self._in_tests.clear()
        self._stopped.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=min(2.0, self.timeout) + _SEVER_INTERVAL)
            self._thread = None

    def after_report(self, failed: bool) -> str | None:
        """The main thread, after each test phase's report: the one line once a server is gone or hung.

        A report after the firing shows the main thread was not stuck (no interrupt is needed). After a
        failure the servers are checked at once: a failed test is often the first sign of a dead server, and
        stopping there spares every remaining test the same connection error.
        """
        if self.fired is not None:
            self._progress = time.monotonic()
            return self.fired
        return self.check_now() if failed else None

    def check_now(self) -> str | None:
        """The one line if a server is gone or silent now, else None; what the thread last saw counts.

        A server whose latest ping by the thread went unanswered is not pinged again (that would add a
        ping's timeout to the end of a run that is already failing on it).
        """
        with self._deciding:
            if self.fired is not None:
                return self.fired
            for server in self.servers:
                problem = self._last.get(server) or ping(server, timeout=min(2.0, self.timeout))
                if problem is None:
                    continue
                why = _GONE if problem == "refused" else f"did not answer a ping: {problem}"
                self._fire(server, f"{server.kind} at {server.where} {why}; the run was stopped after {self.current()}")
                self._progress = time.monotonic()  # the main thread itself: it is not stuck
                return self.fired
            return None

    def _fire(self, server: Server, line: str) -> None:
        """Record the line and start severing (the caller holds `_deciding`)."""
        self.fired, self.hung = line, server
        self._fired_at = time.monotonic()
        self.severed += sever(_addresses(server))
        self._wake.set()

    def _watch(self) -> None:
        last_answer = {s: time.monotonic() for s in self.servers}
        refusals = dict.fromkeys(self.servers, 0)
        while self.fired is None and not self._stopped.is_set():
            self._wake.wait(_INTERVAL)
            self._wake.clear()
            for server in self.servers:
                if self.fired is not None or self._stopped.is_set():
                    break
                problem = ping(server, timeout=min(2.0, self.timeout))
                self._last[server] = problem
                now = time.monotonic()
                if problem is None:
                    last_answer[server], refusals[server] = now, 0
                    continue
                refusals[server] = refusals[server] + 1 if problem == "refused" else 0
                quiet = now - last_answer[server]
                if refusals[server] >= _REFUSALS:
                    why = _GONE
                elif quiet >= self.timeout:
                    why = f"has not answered for {quiet:.0f} s (limit {self.timeout:g} s, --dashtam-timeout): {problem}"
                else:
                    continue
                with self._deciding:
                    if self.fired is None and not self._stopped.is_set():
                        line = f"{server.kind} at {server.where} {why}; the run was stopped during {self.current()}"
                        self._fire(server, line)
                break
        if self.fired is not None:
            self._sever_until_stopped()

    def _sever_until_stopped(self) -> None:
        """Sever new connections to the hung server until stop(); interrupt a main thread that stays stuck.

        Stuck means: no report within the grace after the firing, or, once it reported, none for `timeout`
        seconds while the tests run (a teardown blocked on something severing cannot reach). An interrupt
        that brings no report within the grace is sent again, up to `_INTERRUPTS` in all: the first SIGINT
        under an asyncio.Runner (pytest-asyncio's) only cancels the running task, and code that takes the
        CancelledError for a timeout of its own goes on waiting; the Runner turns the next into
        KeyboardInterrupt.
        """
        assert self.hung is not None
        addresses = _addresses(self.hung)
        interrupts = 0
        last_interrupt = 0.0
        rounds = 0
        while not self._stopped.is_set():
            self.severed += sever(addresses)
            if rounds % _CHILDREN_EVERY == 0:  # walking the process table costs more than our own sockets
                self.severed += stop_children_on(addresses)
            rounds += 1
            if interrupts and self._progress <= last_interrupt:  # interrupted, and no report since
                quiet, limit = time.monotonic() - last_interrupt, self.grace
            else:
                quiet = time.monotonic() - max(self._fired_at, self._progress)
                limit = self.timeout if self._progress else self.grace
            if interrupts < _INTERRUPTS and self._in_tests.is_set() and quiet >= limit:
                interrupts += 1
                last_interrupt = time.monotonic()
                self._interrupt()
            self._stopped.wait(_SEVER_INTERVAL)


@contextlib.contextmanager
def watching(stack: Stack, timeout: float | None, doing: str) -> Iterator[None]:
    """A watchdog of the stack's servers around a block (severing only, no interrupt): a block that fails
    because a server went silent fails with the watchdog's line."""
    watchdog = Watchdog.for_stack(stack, timeout or DEFAULT_TIMEOUT)
    watchdog.doing = doing
    watchdog.start()
    try:
        yield
    except Exception:
        if watchdog.fired is not None:
            raise BackendError(watchdog.fired) from None
        raise
    finally:
        watchdog.stop()


def _interrupt_main() -> None:
    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
