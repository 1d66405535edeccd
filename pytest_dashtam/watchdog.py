"""A bound on every wait of the tests: the stack's servers are pinged while tests run, and a server that
stops answering stops the run with one line naming it.

A test blocked on a server that was stopped (SIGSTOP, a frozen VM, a paused container) waits forever: the
drivers set no deadline on a query, and a test's own query may legitimately take long, so a per-query
timeout would be the wrong bound. Instead a thread asks each server the cheapest question its protocol
has (PostgreSQL: an SSLRequest, answered with one byte before any authentication; Redis: PING, answered
even without a password with -NOAUTH) once a second. A server that refuses connections is gone; one that
accepts but gives no answer for `timeout` seconds is hung. Either way the thread records what happened
and interrupts the main thread, so the run ends through pytest's own interrupt path (teardown runs, the
summary says why) instead of hanging until someone kills it.
"""

from __future__ import annotations

import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pytest_dashtam.urls import host_port

# The SSLRequest message: length 8, then the magic code 1234.5679; any live server answers 'S' or 'N'.
_SSL_REQUEST = struct.pack("!II", 8, 80877103)
_INTERVAL = 1.0
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
            sock = socket.create_connection((server.host, server.port or 0), timeout=timeout)
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


class Watchdog:
    """Pings `servers` from a daemon thread between `start()` and `stop()`.

    `current()` says what the run is doing (the test's node id), for the message. When a server is gone or
    silent for `timeout` seconds, `fired` holds the one line and `interrupt` is called (by default: SIGINT
    to the main thread, so a test blocked in a socket wait is woken by EINTR).
    """

    def __init__(
        self,
        servers: list[Server],
        timeout: float,
        current: Callable[[], str],
        interrupt: Callable[[], None] | None = None,
    ) -> None:
        self.servers = servers
        self.timeout = timeout
        self.current = current
        self.fired: str | None = None
        self._interrupt = interrupt or _interrupt_main
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Held while either side decides: a check after a failed test and the thread never both report
        # (an interrupt landing in the middle of the main thread's own check would cut it short).
        self._deciding = threading.Lock()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="pytest-dashtam-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 2 * _INTERVAL)
            self._thread = None

    def check_now(self) -> str | None:
        """Ping every server once (after a test failed): the one line if one is gone or silent, else None.

        A failed test is often the first sign of a dead server; stopping there spares every remaining test
        the same connection error.
        """
        with self._deciding:
            if self.fired is not None:
                return self.fired
            for server in self.servers:
                problem = ping(server, timeout=min(2.0, self.timeout))
                if problem is None:
                    continue
                why = _GONE if problem == "refused" else f"did not answer a ping: {problem}"
                self.fired = f"{server.kind} at {server.where} {why}; the run was stopped after {self.current()}"
                return self.fired
            return None

    def _watch(self) -> None:
        last_answer = {s: time.monotonic() for s in self.servers}
        refusals = dict.fromkeys(self.servers, 0)
        while not self._stop.wait(_INTERVAL):
            for server in self.servers:
                problem = ping(server, timeout=min(2.0, self.timeout))
                if self._stop.is_set():
                    return
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
                    if self.fired is None and not self._stop.is_set():
                        self.fired = (
                            f"{server.kind} at {server.where} {why}; the run was stopped during {self.current()}"
                        )
                        self._interrupt()
                return


def _interrupt_main() -> None:
    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
