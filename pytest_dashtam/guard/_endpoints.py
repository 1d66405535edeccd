"""Server endpoints as the guard compares them: every spelling of one host and port under one key.

No name resolution: the guard must not touch the network, so `localhost`, `127.0.0.1`, `::1` and
`::ffff:127.0.0.1` are equal by rule, and a name is equal only to itself (in any case).
"""

from __future__ import annotations

import getpass
import ipaddress
import os
import re
from dataclasses import dataclass

from pytest_dashtam.urls import mask_url

_PG_DEFAULT_PORT = 5432
_REDIS_DEFAULT_PORT = 6379
# libpq's compiled-in socket directory differs between builds (Debian: /var/run/postgresql, upstream: /tmp),
# so a connection that names none of them and one that names any of them are taken to mean the same server.
_DEFAULT_SOCKET_DIRS = frozenset({"/var/run/postgresql", "/run/postgresql", "/tmp"})
_DEFAULT_SOCKET_KEY = "unix:<default>"
_LOOPBACK_KEY = "loopback"
_SOCKET_FILE = re.compile(r"^(?P<dir>.*)/\.s\.PGSQL\.(?P<port>\d+)$")


@dataclass(frozen=True)
class Target:
    """One server endpoint of the stack; ``host`` may be a Unix socket path (Redis) or directory (PostgreSQL)."""

    host: str
    port: int | None


def _host_key(host: str) -> str:
    """A key under which every spelling of the same TCP host compares equal."""
    h = host.strip().lower()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if h in ("localhost", "localhost."):
        return _LOOPBACK_KEY
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        return "name:" + h.rstrip(".")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # Connecting to the unspecified address reaches this machine too.
    if ip.is_loopback or ip.is_unspecified:
        return _LOOPBACK_KEY
    return "ip:" + ip.compressed


def _pg_host_key(host: str) -> str:
    """Like ``_host_key``, plus libpq's rules for Unix socket directories ('/...' and Linux's abstract '@...')."""
    h = host.strip()
    if not h:
        return _DEFAULT_SOCKET_KEY
    if h.startswith("/"):
        path = os.path.normpath(h)
        return _DEFAULT_SOCKET_KEY if path in _DEFAULT_SOCKET_DIRS else "unix:" + path
    if h.startswith("@"):
        return "unix:" + h
    return _host_key(h)


def _show_host(host: str) -> str:
    """The host as a message shows it: bracketed IPv6, never a password that was pasted into it."""
    h = host.strip()
    if "://" in h:
        h = mask_url(h)
    elif "@" in h and not h.startswith("@"):
        h = "***@" + h.rsplit("@", 1)[1]
    if ":" in h and not h.startswith(("[", "/", "@")) and "://" not in h:
        h = f"[{h}]"
    return h


def as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


@dataclass(frozen=True)
class PgEndpoint:
    key: str
    port: int | None  # None: not a port number (libpq would fail); it matches nothing
    shown: str


def pg_endpoint(host: str, port: str | int | None) -> PgEndpoint:
    """One libpq host entry with its port; an empty host is libpq's default socket, an empty port 5432."""
    h = host.strip()
    match = _SOCKET_FILE.match(h)
    if match:  # a socket *file*: the directory and the port are both in the name
        h, port = match["dir"] or "/", match["port"]
    number = _PG_DEFAULT_PORT if port is None or (isinstance(port, str) and not port.strip()) else as_int(port)
    shown_port = str(number) if number is not None else repr(port)
    if not h:
        shown = f"the default Unix socket (.s.PGSQL.{shown_port})"
    elif h.startswith(("/", "@")):
        shown = f"{h.rstrip('/') or '/'}/.s.PGSQL.{shown_port}"
    else:
        shown = f"{_show_host(h)}:{shown_port}"
    return PgEndpoint(_pg_host_key(h), number, shown)


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",")]


def pg_endpoints(host: str | None, port: int | str | None) -> list[PgEndpoint]:
    """Every server libpq (or asyncpg) may try for these settings, environment defaults applied."""
    hosts = _split(host) if host else _split(os.environ.get("PGHOST", ""))
    if port is None or (isinstance(port, str) and not port.strip()):
        port = os.environ.get("PGPORT", "")
    ports: list[str | int | None] = list(_split(port)) if isinstance(port, str) else [port]
    if len(ports) == 1:
        ports = ports * len(hosts)
    elif len(ports) < len(hosts):  # libpq refuses this; check the hosts anyway
        ports = ports + [None] * (len(hosts) - len(ports))
    return [pg_endpoint(h, p) for h, p in zip(hosts, ports, strict=False)]


def default_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return ""


def redis_endpoint(host: str | None, port: int | None, unix_path: str | None) -> tuple[str, int | None, str]:
    """(key, port, shown) of a Redis server; a Unix socket is identified by its path alone."""
    if unix_path:
        path = os.path.normpath(unix_path)
        return "unix:" + path, None, path
    h = host or "localhost"
    number = _REDIS_DEFAULT_PORT if port is None else port
    return _host_key(h), number, f"{_show_host(h)}:{number}"


def target_redis_endpoint(target: Target) -> tuple[str, int | None, str]:
    if target.host.startswith("/"):
        return redis_endpoint(None, None, target.host)
    return redis_endpoint(target.host, target.port, None)
