"""The minimal PostgreSQL/Redis protocol code, against scripted servers on real sockets."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest

from pytest_dashtam.backends._local_wire import WireError, parse_info, pg_query, redis_commands


def _serve_once(reply: Callable[[socket.socket], None]) -> Iterator[tuple[str, int]]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def run() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(4096)
            reply(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield server.getsockname()
    thread.join(5)
    server.close()


def _pg_msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


@pytest.fixture
def starting_up_pg() -> Iterator[tuple[str, int]]:
    body = b"SFATAL\0C57P03\0Mthe database system is starting up\0\0"
    yield from _serve_once(lambda conn: conn.sendall(_pg_msg(b"E", body)))


@pytest.fixture
def password_pg() -> Iterator[tuple[str, int]]:
    yield from _serve_once(lambda conn: conn.sendall(_pg_msg(b"R", struct.pack("!I", 10))))


def test_pg_starting_up_is_retryable(starting_up_pg: tuple[str, int]) -> None:
    with pytest.raises(WireError, match="starting up") as info:
        pg_query(starting_up_pg, ["SHOW fsync"])
    assert info.value.retryable


def test_pg_asking_for_a_password_is_not_retryable(password_pg: tuple[str, int]) -> None:
    with pytest.raises(WireError, match="authentication") as info:
        pg_query(password_pg, ["SHOW fsync"])
    assert not info.value.retryable


def test_pg_nothing_listening_is_an_os_error() -> None:
    with pytest.raises(FileNotFoundError):
        pg_query("/nonexistent/.s.PGSQL.1", ["SHOW fsync"])


@pytest.fixture
def loading_redis() -> Iterator[tuple[str, int]]:
    yield from _serve_once(lambda conn: conn.sendall(b"-LOADING Redis is loading the dataset in memory\r\n"))


@pytest.fixture
def chatty_redis() -> Iterator[tuple[str, int]]:
    info = b"# Server\r\nredis_version:7.2.4\r\nx:1\r\n"
    replies = b"+PONG\r\n$%d\r\n%s\r\n*2\r\n$9\r\ndatabases\r\n$2\r\n16\r\n" % (len(info), info)
    yield from _serve_once(lambda conn: conn.sendall(replies))


def test_redis_loading_is_retryable(loading_redis: tuple[str, int]) -> None:
    with pytest.raises(WireError, match="LOADING") as info:
        redis_commands(loading_redis, [["PING"]])
    assert info.value.retryable


def test_redis_replies_parsed(chatty_redis: tuple[str, int]) -> None:
    pong, info, databases = redis_commands(chatty_redis, [["PING"], ["INFO", "server"], ["CONFIG", "GET", "databases"]])
    assert pong == "PONG"
    assert parse_info(str(info)) == {"redis_version": "7.2.4", "x": "1"}
    assert databases == ["databases", "16"]
