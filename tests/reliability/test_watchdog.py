"""The watchdog's means, one by one, without a test stack: severing frees a wait on a hung server, new
connections to it are severed too, a child stuck on it is stopped, a failed test is judged by what the
thread already saw, and a main thread that reports in time is not interrupted.

The hung server is a FakeServer that accepts and never answers (tests/support/fake_servers.py).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from fake_servers import FakeServer

from pytest_dashtam.backends.base import Stack
from pytest_dashtam.errors import BackendError
from pytest_dashtam.watchdog import Server, Watchdog, _addresses, sever, watching


@pytest.fixture
def hung() -> Iterator[FakeServer]:
    with FakeServer("silent", "Redis") as server:
        yield server


def _blocked_read(port: int) -> tuple[socket.socket, threading.Thread, list[bytes | BaseException]]:
    """A socket to `port` and a thread blocked reading it (no timeout: it waits for ever unless freed)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"PING\r\n")
    got: list[bytes | BaseException] = []

    def read() -> None:
        try:
            got.append(sock.recv(16))
        except OSError as exc:
            got.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return sock, reader, got


def test_sever_frees_a_read_blocked_on_a_hung_server_and_nothing_else(hung: FakeServer) -> None:
    other = FakeServer("silent", "Redis")
    with other:
        sock, reader, got = _blocked_read(hung.port)
        bystander, bystander_reader, bystander_got = _blocked_read(other.port)
        time.sleep(0.2)
        assert reader.is_alive()
        assert sever(_addresses(Server("Redis", "127.0.0.1", hung.port))) == 1
        reader.join(5)
        assert got == [b""]  # the end of the connection, as if the server had closed it
        assert bystander_reader.is_alive()  # a connection to another server is left alone
        assert bystander_got == []
        sock.close()
        bystander.close()


def test_once_fired_new_connections_to_the_hung_server_are_severed_too(hung: FakeServer) -> None:
    watchdog = Watchdog([Server("Redis", "127.0.0.1", hung.port)], 1.0)
    watchdog.start()
    try:
        deadline = time.monotonic() + 15
        while watchdog.fired is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watchdog.fired is not None
        sock, reader, got = _blocked_read(hung.port)  # a driver's reconnect after the firing
        reader.join(5)
        assert got == [b""]
        sock.close()
    finally:
        watchdog.stop()


def test_a_child_stuck_on_the_hung_server_is_stopped(hung: FakeServer) -> None:
    code = (
        "import socket, sys\n"
        f"s = socket.create_connection(('127.0.0.1', {hung.port}))\n"
        "s.sendall(b'PING\\r\\n'); print('connected', flush=True); s.recv(16)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "connected\n"
        watchdog = Watchdog([Server("Redis", "127.0.0.1", hung.port)], 1.0)
        watchdog.start()
        try:
            child.wait(20)  # a migration's child would otherwise wait out its own timeout
        finally:
            watchdog.stop()
        assert watchdog.fired is not None
        assert child.returncode == -9
    finally:
        child.kill()
        child.wait()


def test_after_a_failed_test_what_the_thread_saw_is_not_pinged_again(hung: FakeServer) -> None:
    watchdog = Watchdog([Server("Redis", "127.0.0.1", hung.port)], 30.0)  # never fires by itself here
    watchdog.start()
    try:
        deadline = time.monotonic() + 15
        while watchdog._last.get(watchdog.servers[0]) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.monotonic()
        line = watchdog.after_report(failed=True)
        assert time.monotonic() - started < 1.0  # no second ping's wait of 2 s
        assert line is not None
        assert line.startswith(f"Redis at 127.0.0.1:{hung.port} did not answer a ping: silent")
    finally:
        watchdog.stop()


def test_a_main_thread_that_reports_after_the_firing_is_not_interrupted(hung: FakeServer) -> None:
    interrupted = threading.Event()
    watchdog = Watchdog([Server("Redis", "127.0.0.1", hung.port)], 1.0, interrupt=interrupted.set, grace=1.0)
    watchdog.start()
    watchdog.tests_begin()
    try:
        deadline = time.monotonic() + 15
        while watchdog.fired is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watchdog.after_report(failed=True) == watchdog.fired
        watchdog.end_of_tests()
        assert not interrupted.wait(2.0)  # severing freed it; teardown is never interrupted
    finally:
        watchdog.stop()


def test_watching_turns_a_failure_on_the_hung_server_into_the_watchdogs_line(hung: FakeServer) -> None:
    stack = Stack(
        backend="external",
        env="test",
        postgres_url=f"postgresql://postgres@127.0.0.1:{hung.port}/postgres",  # pinged as PostgreSQL: silent too
        redis_url=f"redis://127.0.0.1:{hung.port}",
        postgres_version="15",
        redis_version="7",
        tuning={},
        owns_servers=False,
        started=False,
    )
    sock = socket.create_connection(("127.0.0.1", hung.port))

    def a_lease_query() -> None:
        with watching(stack, 1.0, "the opening of the stack (leases)"):
            sock.sendall(b"PING\r\n")
            if not sock.recv(16):  # freed by the severing, as a lease's query would be
                raise ConnectionError("connection closed")

    with pytest.raises(BackendError, match=rf"at 127.0.0.1:{hung.port} has not answered for .*the opening"):
        a_lease_query()
    sock.close()


def test_a_main_thread_that_stays_stuck_is_interrupted_again_until_it_reports(hung: FakeServer) -> None:
    """An asyncio.Runner (pytest-asyncio's) turns the first SIGINT into a cancellation a test may swallow."""
    interrupts: list[float] = []
    reported = threading.Event()

    def interrupt() -> None:
        interrupts.append(time.monotonic())
        if len(interrupts) == 2:  # the second one gets through: the main thread reports from then on
            reported.set()

    watchdog = Watchdog([Server("Redis", "127.0.0.1", hung.port)], 1.0, interrupt=interrupt, grace=0.5)
    watchdog.start()
    watchdog.tests_begin()
    try:
        assert reported.wait(20)
        watchdog.after_report(failed=True)
        count = len(interrupts)
        time.sleep(0.9)  # within the timeout after that report: no third interrupt
        assert len(interrupts) == count == 2
        assert interrupts[1] - interrupts[0] >= 0.5
    finally:
        watchdog.stop()


def test_a_main_thread_that_never_reports_gets_a_bounded_number_of_interrupts(hung: FakeServer) -> None:
    interrupts: list[float] = []
    watchdog = Watchdog(
        [Server("Redis", "127.0.0.1", hung.port)], 1.0, interrupt=lambda: interrupts.append(1.0), grace=0.2
    )
    watchdog.start()
    watchdog.tests_begin()
    try:
        deadline = time.monotonic() + 20
        while len(interrupts) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.6)
        assert len(interrupts) == 3
    finally:
        watchdog.stop()
