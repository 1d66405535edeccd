"""Which servers a URL really reaches: every host a PostgreSQL or Redis driver would connect to, and why.

A URL's netloc alone says too little. A hostless PostgreSQL URL goes wherever PGHOST (or a service file)
says, then to the default socket; a netloc may list several hosts; libpq and asyncpg disagree on which of
`?host=` and the netloc wins. The host list is read here the way the drivers read it, without connecting.
"""

from __future__ import annotations

import configparser
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from pytest_dashtam.safety._redact import redact_url, scrub
from pytest_dashtam.safety._violation import Violation

# Where asyncpg looks when nothing names a host (connect_utils._parse_connect_dsn_and_args); libpq's own
# default (DEFAULT_PGSOCKET_DIR, /tmp or /var/run/postgresql) is one of these directories.
DEFAULT_POSTGRES_SOCKETS: tuple[str, ...] = (
    ("localhost",)
    if sys.platform == "win32"
    else ("/run/postgresql", "/var/run/postgresql", "/tmp", "/private/tmp", "localhost")
)

REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})

_IPV6_SPEC = re.compile(r"\[([^\]]+)\]")


def is_postgres_scheme(scheme: str) -> bool:
    """postgresql://, postgres:// and SQLAlchemy's postgresql+<driver>:// all reach a PostgreSQL server."""
    base = scheme.lower().partition("+")[0]
    return base in ("postgresql", "postgres")


@dataclass(frozen=True)
class HostTarget:
    """A host a driver may connect to, and the phrase saying where it came from (for the message)."""

    host: str
    origin: str
    env: str = ""  # the environment variable it came from, if any
    socket: bool = False  # a unix:// Redis URL: a path, whatever it looks like


def _hostlist(spec: str, *, unquote_hosts: bool = False) -> list[str]:
    """The addresses in a comma-separated host list, ports dropped, as asyncpg's `_parse_hostlist` reads it.

    One deliberate difference: a bare IPv6 literal (`host=::1`, which libpq accepts) is kept whole, where
    asyncpg would cut it at the first ':'. Empty entries are dropped: both drivers send them to the default
    socket, which is local anyway.
    """
    hosts: list[str] = []
    for item in spec.split(","):
        port = ""
        if not item:
            continue
        if item.startswith("/") or (item.count(":") > 1 and not item.startswith("[")):
            addr = item
        elif item.startswith("["):
            match = _IPV6_SPEC.match(item)
            if match is None:
                raise ValueError("an IPv6 address in the host list has no closing ']'")
            addr, port = match.group(1), item[match.end() :].removeprefix(":")
        else:
            addr, _, port = item.partition(":")
        if port and not unquote(port).isdigit():
            # Not echoed: with an unencoded '/' in the password, this "port" is the password's start.
            raise ValueError("a port in the host list is not a number")
        if unquote_hosts:
            addr = unquote(addr)
        if addr:
            hosts.append(addr)
    return hosts


def _service_file_entries(service: str, environ: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """The named service's keys and the file they came from, in libpq's search order; ({}, "") if none.

    libpq looks in PGSERVICEFILE (else ~/.pg_service.conf), then PGSYSCONFDIR/pg_service.conf; asyncpg only
    in the first. libpq's compiled-in sysconfdir is not searched: it cannot be known from Python.
    """
    candidates: list[Path] = []
    if environ.get("PGSERVICEFILE"):
        candidates.append(Path(environ["PGSERVICEFILE"]))
    else:
        home = environ.get("HOME")
        if not home:
            try:
                home = str(Path.home())
            except (RuntimeError, KeyError):
                home = ""
        if home:
            candidates.append(Path(home) / ".pg_service.conf")
    if environ.get("PGSYSCONFDIR"):
        candidates.append(Path(environ["PGSYSCONFDIR"]) / "pg_service.conf")
    for path in candidates:
        if not path.is_file():
            continue
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        try:
            parser.read(path, encoding="utf-8")
        except (OSError, UnicodeError, configparser.Error) as exc:
            raise ValueError(f"cannot read the PostgreSQL service file {path}: {type(exc).__name__}") from exc
        if parser.has_section(service):
            return dict(parser.items(service)), str(path)
    return {}, ""


def _postgres_targets(url: str, environ: Mapping[str, str] | None) -> list[HostTarget]:
    """Every host asyncpg or libpq would connect to for `url`, with where each came from.

    Where the two drivers differ, the union is taken, so the gate judges the worst of them:
    - libpq lets `?host=` override the netloc's host, asyncpg the other way round: both are judged;
    - libpq honours PGSERVICE, asyncpg only `?service=` (it reads PGSERVICE too late to matter): a service's
      host is judged, and PGHOST as well when the service was named only by PGSERVICE;
    - libpq connects to `hostaddr` / PGHOSTADDR whatever host is named, asyncpg ignores them: they are
      judged unless the scheme says the driver is asyncpg (postgresql+asyncpg://).
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    parts = urlsplit(url)  # ValueError on a malformed URL: the caller turns it into a Violation
    netloc = parts.netloc
    hostspec = netloc.partition("@")[2] if "@" in netloc else netloc
    if "@" in hostspec:
        # Both drivers split at the first '@', so the rest of the password would be read as the host.
        raise ValueError("the user part holds an unencoded '@'")
    query = parse_qs(parts.query)
    targets = [HostTarget(h, "in the URL") for h in _hostlist(hostspec, unquote_hosts=True)]
    targets += [HostTarget(h, "in the URL's host= parameter") for v in query.get("host", []) for h in _hostlist(v)]

    url_service = next((v for v in reversed(query.get("service", [])) if v), "")
    service = url_service or env.get("PGSERVICE", "")
    entries, service_file = _service_file_entries(service, env) if service else ({}, "")
    service_origin = f"from service {service!r} in {service_file}"
    if not targets:
        targets += [HostTarget(h, service_origin) for h in _hostlist(entries.get("host", ""))]
        if not targets or not url_service:
            because = "which the drivers use because the URL names no host"
            targets += [HostTarget(h, f"from PGHOST, {because}", "PGHOST") for h in _hostlist(env.get("PGHOST", ""))]
        if not targets:
            targets += [HostTarget(h, "libpq's and asyncpg's default Unix socket") for h in DEFAULT_POSTGRES_SOCKETS]

    if parts.scheme.lower() != "postgresql+asyncpg":
        url_addrs = [h for v in query.get("hostaddr", []) for h in _hostlist(v)]
        if url_addrs:
            targets += [HostTarget(h, "in the URL's hostaddr= parameter") for h in url_addrs]
        elif entries.get("hostaddr"):
            targets += [HostTarget(h, service_origin) for h in _hostlist(entries["hostaddr"])]
        else:
            because = "which libpq connects to whatever host the URL names"
            addrs = _hostlist(env.get("PGHOSTADDR", ""))
            targets += [HostTarget(h, f"from PGHOSTADDR, {because}", "PGHOSTADDR") for h in addrs]

    unique: dict[str, HostTarget] = {}
    for target in targets:
        unique.setdefault(target.host, target)
    return list(unique.values())


def postgres_hosts(url: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """The hosts (names, addresses, socket directories) a PostgreSQL driver will really connect to.

    A URL's netloc alone says too little: a hostless URL goes to PGHOST, then to the default socket; a
    netloc may list several hosts. `environ` is os.environ unless given (tests pass their own). Raises
    ValueError (password masked) when the URL cannot be read the way the drivers read it.
    """
    return [t.host for t in _postgres_targets(url, environ)]


def _redis_kwargs(url: str) -> dict[str, object]:
    from redis.connection import parse_url

    try:
        kwargs: dict[str, object] = parse_url(url)  # type: ignore[no-untyped-call]
    except (ValueError, TypeError) as exc:
        raise ValueError(scrub(str(exc), url)) from exc
    return kwargs


def redis_hosts(url: str) -> list[str]:
    """The host redis-py will connect to, read by redis-py's own parser so the gate cannot disagree with it.

    That parser takes a `?host=` when the netloc names none, and falls back to localhost; for unix:// the
    result is the socket path. Raises ValueError (password masked) on a URL redis-py refuses.
    """
    kwargs = _redis_kwargs(url)
    if url.lower().startswith("unix://"):
        return [str(kwargs.get("path", ""))]
    return [str(kwargs.get("host") or "localhost")]


def host_targets(url: str, environ: Mapping[str, str] | None) -> tuple[list[HostTarget], Violation | None]:
    """The hosts of a PostgreSQL or Redis URL, or the Violation saying why they cannot be known."""
    masked = redact_url(url)
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    try:
        if is_postgres_scheme(scheme):
            return _postgres_targets(url, environ), None
        if scheme in REDIS_SCHEMES:
            if scheme == "unix":
                return [HostTarget(h, "the URL's socket", socket=True) for h in redis_hosts(url)], None
            return [HostTarget(h, "in the URL") for h in redis_hosts(url)], None
    except ValueError as exc:
        return [], Violation(
            "host",
            f"cannot tell which server {masked} reaches ({scrub(str(exc), url)}); write it as "
            "scheme://user:password@host:port/name, with '@', '/', '?', '#' or ':' in a password percent-encoded",
        )
    return [], Violation(
        "host",
        f"cannot tell which server {masked or repr(url)} reaches: the scheme {scheme!r} is neither PostgreSQL "
        "(postgresql://, postgresql+<driver>://) nor Redis (redis://, rediss://, unix://); "
        "write the URL with one of those schemes",
    )
