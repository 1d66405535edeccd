"""Just enough of the PostgreSQL and Redis wire protocols to wait for readiness and read settings.

Blocking sockets and no driver: `start()` is synchronous, runs before any event loop exists, and
every millisecond of import or loop setup counts against the warm-start budget. The servers are
ours and use trust authentication, so the PostgreSQL side needs no auth exchange.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence

# SQLSTATE 57P03 cannot_connect_now: "the database system is starting up" (or shutting down).
_STARTING_UP = "57P03"


class WireError(Exception):
    """The server answered, but not as hoped; `retryable` when it is only not ready yet."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionResetError("server closed the connection")
        buf += chunk
    return bytes(buf)


def _pg_message(sock: socket.socket) -> tuple[bytes, bytes]:
    header = _recv_exact(sock, 5)
    kind = header[:1]
    (length,) = struct.unpack("!I", header[1:])
    return kind, _recv_exact(sock, length - 4)


def _pg_error(body: bytes) -> WireError:
    fields: dict[str, str] = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    code = fields.get("C", "")
    return WireError(f"{fields.get('S', 'ERROR')}: {fields.get('M', '?')} ({code})", retryable=code == _STARTING_UP)


def _pg_connect(address: str | tuple[str, int], timeout: float) -> socket.socket:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def pg_query(
    address: str | tuple[str, int],
    statements: Sequence[str],
    *,
    user: str = "postgres",
    database: str = "postgres",
    timeout: float = 5.0,
) -> list[str | None]:
    """Run each statement (each returning one value) and return the first column of its first row.

    `address` is a Unix socket path or (host, port). Raises OSError when nothing listens and
    WireError when the server refuses (retryable while it is starting up).
    """
    sock = _pg_connect(address, timeout)
    with sock:
        params = f"user\0{user}\0database\0{database}\0application_name\0pytest-dashtam\0\0".encode()
        sock.sendall(struct.pack("!II", 8 + len(params), 196608) + params)
        while True:
            kind, body = _pg_message(sock)
            if kind == b"R":
                (code,) = struct.unpack("!I", body[:4])
                if code != 0:
                    raise WireError(f"server asks for authentication (method {code}); expected trust")
            elif kind == b"E":
                raise _pg_error(body)
            elif kind == b"Z":
                break
        results: list[str | None] = []
        query = ";".join(statements).encode() + b"\0"
        sock.sendall(b"Q" + struct.pack("!I", 4 + len(query)) + query)
        error: WireError | None = None
        pending_row = False
        while True:
            kind, body = _pg_message(sock)
            if kind == b"T":
                pending_row = True
            elif kind == b"D":
                if pending_row:
                    (ncols,) = struct.unpack("!H", body[:2])
                    value: str | None = None
                    if ncols:
                        (size,) = struct.unpack("!i", body[2:6])
                        value = None if size < 0 else body[6 : 6 + size].decode()
                    results.append(value)
                    pending_row = False
            elif kind == b"C":
                if pending_row:  # a statement that returned no row
                    results.append(None)
                    pending_row = False
            elif kind == b"E":
                error = _pg_error(body)
            elif kind == b"Z":
                break
        sock.sendall(b"X\0\0\0\4")
    if error is not None:
        raise error
    return results


# ---------------------------------------------------------------------------------------- Redis


def _resp_command(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _RespReader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("server closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("server closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2 :]
        return data

    def read(self) -> object:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            text = rest.decode()
            raise WireError(text, retryable=text.startswith(("LOADING", "BUSY")))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._exact(size).decode("utf-8", "replace")
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self.read() for _ in range(size)]
        raise WireError(f"unexpected reply {line[:40]!r}")


def redis_commands(address: tuple[str, int], commands: Sequence[Sequence[str]], timeout: float = 5.0) -> list[object]:
    """Send the commands in one round trip and return their replies (errors raise WireError)."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(b"".join(_resp_command(*cmd) for cmd in commands))
        reader = _RespReader(sock)
        replies: list[object] = []
        first_error: WireError | None = None
        for _ in commands:
            try:
                replies.append(reader.read())
            except WireError as exc:
                first_error = first_error or exc
                replies.append(None)
        if first_error is not None:
            raise first_error
        return replies


def parse_info(text: str) -> dict[str, str]:
    info: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            key, value = line.split(":", 1)
            info[key] = value.strip()
    return info
