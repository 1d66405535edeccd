"""Servers that misbehave on purpose, for the hang cases of the reliability suite.

* `FakeServer("silent")`: accepts connections and never answers (a server whose kernel still completes the
  TCP handshake while the process is stopped, or a firewall that swallows the packets).
* `FakeServer("once", kind)`: answers the first question of the first connection as the real server would
  (PostgreSQL's SSLRequest with 'N', Redis's PING with +PONG), then nothing more, on any connection.
* `FreezableProxy(host, port)`: forwards to a real server until `freeze()`, then keeps every connection
  open and accepts new ones but forwards nothing: what SIGSTOP of the server looks like to its clients,
  without stopping a server other runs (or other people) share.

Each listens on 127.0.0.1 on a free port, serves from one daemon thread and is closed with `close()` (or
as a context manager). Nothing here depends on other processes on the machine.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from typing import Literal, Self

_SSL_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"


class _Loop:
    """A listener and its connections served by one selector thread."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.port: int = self.listener.getsockname()[1]
        self.accepted = 0
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ, None)
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, name=f"fake-server-{self.port}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def url_netloc(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._closed.is_set():
            for key, _events in self._selector.select(timeout=0.05):
                if key.fileobj is self.listener:
                    with contextlib.suppress(BlockingIOError, OSError):
                        conn, _addr = self.listener.accept()
                        conn.setblocking(False)
                        self.accepted += 1
                        self._sockets.append(conn)
                        self.on_accept(conn)
                else:
                    self.on_readable(key.fileobj, key.data)  # type: ignore[arg-type]

    def watch(self, sock: socket.socket, data: object) -> None:
        self._selector.register(sock, selectors.EVENT_READ, data)

    def forget(self, sock: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(sock)
        with contextlib.suppress(OSError):
            sock.close()

    def on_accept(self, conn: socket.socket) -> None:
        """A new connection: by default it is kept open and never read (the client waits for an answer)."""

    def on_readable(self, sock: socket.socket, data: object) -> None:
        """Bytes (or the end) from a watched socket."""

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        for sock in [*self._sockets, self.listener]:
            with contextlib.suppress(OSError):
                sock.close()
        self._selector.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FakeServer(_Loop):
    """`silent`: never answers; `once`: answers the first question of the first connection, then never again;
    `noauth` (Redis): answers every command with -NOAUTH, as a server with a password the client lacks."""

    def __init__(
        self, behaviour: Literal["silent", "once", "noauth"], kind: Literal["PostgreSQL", "Redis"] = "Redis"
    ) -> None:
        super().__init__()
        self.behaviour = behaviour
        self.kind = kind
        self.answered = 0

    def on_accept(self, conn: socket.socket) -> None:
        if (self.behaviour == "once" and self.answered == 0) or self.behaviour == "noauth":
            self.watch(conn, None)

    def on_readable(self, sock: socket.socket, data: object) -> None:
        try:
            chunk = sock.recv(65536)
        except OSError:
            chunk = b""
        if not chunk:
            self.forget(sock)
            return
        if self.behaviour == "noauth":
            sock.sendall(b"-NOAUTH Authentication required.\r\n" * max(1, chunk.count(b"*")))
            self.answered += 1
            return
        if self.answered == 0:
            if self.kind == "PostgreSQL" and chunk.startswith(_SSL_REQUEST):
                sock.sendall(b"N")  # "no SSL here": the client goes on to its startup message, never answered
                self.answered += 1
            elif self.kind == "Redis" and b"PING" in chunk.upper():
                sock.sendall(b"+PONG\r\n")  # then HELLO, INFO, CLIENT SETNAME...: never answered
                self.answered += 1
        # Nothing more is read from it: the client waits, as on a stopped server.
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)


class FreezableProxy(_Loop):
    """Forwards TCP to `host:port` until `freeze()`; then accepts and holds connections but forwards nothing."""

    def __init__(self, host: str, port: int, *, freeze_at: int | None = None) -> None:
        super().__init__()
        self.target = (host, port)
        self.frozen = threading.Event()
        self.freeze_at = freeze_at  # freeze when this many connections were accepted (the last one held)

    def freeze(self) -> None:
        self.frozen.set()

    def on_accept(self, conn: socket.socket) -> None:
        if self.freeze_at is not None and self.accepted >= self.freeze_at:
            self.frozen.set()
        if self.frozen.is_set():
            return  # held open, never served
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            self.forget(conn)
            return
        upstream.setblocking(False)
        self._sockets.append(upstream)
        self.watch(conn, upstream)
        self.watch(upstream, conn)

    def on_readable(self, sock: socket.socket, data: object) -> None:
        if self.frozen.is_set():
            # Stop reading from everyone: the bytes stay in the kernel's buffers, nobody hears back.
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            return
        peer = data
        assert isinstance(peer, socket.socket)
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.forget(sock)
            self.forget(peer)
            return
        try:
            peer.setblocking(True)
            peer.sendall(chunk)
            peer.setblocking(False)
        except OSError:
            self.forget(sock)
            self.forget(peer)
