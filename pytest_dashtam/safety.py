"""The safety gate: checks that stand between the test run and anything destructive.

Every check but one is a pure function over settings and parsed URLs, so it can refuse before any
connection that could change something is opened. The last one, `check_owned_or_absent`, runs on a live
admin connection just before a DROP: the plugin only drops a database that carries the stamp it wrote
when it created it, whatever the database is called.

Hosts are judged as the drivers will resolve them, not as the URL looks: a hostless URL goes wherever
PGHOST says, so `postgresql://postgres@/postgres` with PGHOST=10.1.2.3 is a remote server. An allowed
remote host is looked up (bounded) before anything connects, so a typo fails in a second, not after the
connect timeout.

Each check returns a `Violation` (what was wrong, what was checked, what to do, on one line) or None;
`raise_for` turns any number of them into one `SafetyError`. There is deliberately no switch that skips
the gate: a run that cannot pass it must be fixed, not waved through.
"""

from __future__ import annotations

import configparser
import enum
import ipaddress
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pytest_dashtam.errors import SafetyError
from pytest_dashtam.urls import MASK, mask_url

if TYPE_CHECKING:
    import asyncpg

CheckName = Literal["environment", "testing_flag", "database_name", "host", "redis_index", "ownership"]

# Written as `COMMENT ON DATABASE x IS 'pytest-dashtam:<role>:<hash or run id>'` when the plugin creates a
# database; the only thing that makes a database droppable.
OWNERSHIP_COMMENT_PREFIX = "pytest-dashtam:"

# "test" as a word part of the name: dashtam_test, test_x, dashtam_test_gw0, dashtam_test_tpl_ab12,
# tests, testing, test2. Not "contest" or "latest": a dev database named `latest_prices` is not ours.
_TEST_WORD = re.compile(r"(?:^|[_\-.])test(?:s|ing)?\d*(?=$|[_\-.])", re.IGNORECASE)


@dataclass(frozen=True)
class Violation:
    """One refused check: `message` is a single line saying what was wrong, what was checked, what to do."""

    check: CheckName
    message: str

    def __str__(self) -> str:
        return self.message


def is_test_database_name(name: str) -> bool:
    """Whether `name` contains "test" as a word part (the naming rule every test database follows)."""
    return bool(_TEST_WORD.search(name))


def database_name_from_url(url: str) -> str:
    """The database name in a PostgreSQL URL's path, or "" when the URL names none.

    Only the path is read: a password or host containing "test" must not make a dev URL look like a test one.
    """
    try:
        path = urlsplit(url).path
    except ValueError:
        return ""
    return unquote(path.lstrip("/"))


def check_environment(environment: str) -> Violation | None:
    """`ENVIRONMENT` must be exactly "testing"."""
    if environment == "testing":
        return None
    return Violation(
        "environment",
        f"ENVIRONMENT is {environment!r}, the test run requires 'testing'; "
        "set ENVIRONMENT=testing in the test env file (dashtam_env_file / --dashtam-env-file)",
    )


def check_testing_flag(testing: object) -> Violation | None:
    """`TESTING` must be the boolean True (a truthy string such as "false" must not pass)."""
    if testing is True:
        return None
    return Violation(
        "testing_flag",
        f"TESTING is {testing!r}, the test run requires true; set TESTING=true in the test env file",
    )


def check_database_name(database_url: str, dev_database: str) -> Violation | None:
    """The database the tests use must be named as a test database and must not be the dev database."""
    source = f"DATABASE_URL {_masked(database_url)}"
    return check_test_name(database_name_from_url(database_url), dev_database, source=source)


def check_test_name(name: str, dev_database: str, *, source: str = "") -> Violation | None:
    """The naming rule on a bare database name (what `check_database_name` applies to a URL's path)."""
    origin = f" (from {source})" if source else ""
    if not name:
        return Violation(
            "database_name",
            f"no database name{origin}; the test run needs a test database name such as dashtam_test in the URL's path",
        )
    if dev_database and name.lower() == dev_database.lower():
        return Violation(
            "database_name",
            f"the test database {name!r}{origin} is the dev database; "
            "point DATABASE_URL in the test env file at a test database such as dashtam_test",
        )
    if not is_test_database_name(name):
        return Violation(
            "database_name",
            f"the database name {name!r}{origin} does not contain 'test' as a word part; "
            "use a test database name such as dashtam_test",
        )
    return None


# --- hosts: which servers the URLs really reach ------------------------------------------------------------

# Where asyncpg looks when nothing names a host (connect_utils._parse_connect_dsn_and_args); libpq's own
# default (DEFAULT_PGSOCKET_DIR, /tmp or /var/run/postgresql) is one of these directories.
DEFAULT_POSTGRES_SOCKETS: tuple[str, ...] = (
    ("localhost",)
    if sys.platform == "win32"
    else ("/run/postgresql", "/var/run/postgresql", "/tmp", "/private/tmp", "localhost")
)
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
_ALLOWED_HOSTS_KNOB = "dashtam_allowed_hosts (--dashtam-allowed-hosts)"
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)
_IPV6_SPEC = re.compile(r"\[([^\]]+)\]")


def _masked(url: str) -> str:
    """`mask_url` where it can be trusted, a blunter mask where it cannot.

    The gate sees the URLs `mask_url` gets wrong: multi-host netlocs (urlsplit reads `h1:5432,h2` as the
    host) and passwords with an unencoded '/', '?' or '@' (urlsplit ends the netloc early and reports no
    password at all). Those get everything between the user name and the last '@' masked: over-masking
    only costs a message some context, under-masking prints a password.
    """
    scheme, sep, rest = url.partition("://")
    try:
        parts = urlsplit(url)
        clean = sep and "," not in parts.netloc and rest.count("@") == parts.netloc.count("@") <= 1
        masked = mask_url(url) if clean else ""
    except ValueError:
        masked = ""
    if not masked or masked == "<unparsable URL>":
        at = rest.rfind("@")
        user, colon, _ = rest[: max(at, 0)].partition(":")
        masked = f"{scheme}{sep}{user}:{MASK}@{rest[at + 1 :]}" if at >= 0 and colon else url
    return _QUERY_PASSWORD.sub(rf"\g<1>{MASK}", masked)


def _scrub(text: str, url: str) -> str:
    """An error text from a URL parser, with anything it quoted from the URL's password masked.

    A parser that split the URL in the wrong place quotes a fragment, not the whole password
    (`redis://:pa/ss@h` fails with "Port could not be cast ... 'pa'"), so quoted fragments are checked too.
    """
    rest = url.partition("://")[2]
    at = rest.rfind("@")
    password = rest[:at].partition(":")[2] if at >= 0 else ""
    if not password:
        return text
    secrets = (password, unquote(password))
    text = re.sub(r"'([^']*)'", lambda m: f"'{MASK}'" if any(m[1] in s for s in secrets) else m[0], text)
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def _is_local_host(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback  # ::ffff:127.0.0.1 (Python 3.11 calls it not loopback)
    return address.is_loopback


def _is_socket(host: str) -> bool:
    """libpq reads a host starting with '/' as a socket directory and one starting with '@' as an abstract
    socket; neither can leave the machine."""
    return host.startswith(("/", "@"))


def _is_local(host: str) -> bool:
    return _is_socket(host) or _is_local_host(host)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _normal_host(host: str) -> str:
    return host.strip("[]").lower()


def is_postgres_scheme(scheme: str) -> bool:
    """postgresql://, postgres:// and SQLAlchemy's postgresql+<driver>:// all reach a PostgreSQL server."""
    base = scheme.lower().partition("+")[0]
    return base in ("postgresql", "postgres")


@dataclass(frozen=True)
class _Target:
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


def _postgres_targets(url: str, environ: Mapping[str, str] | None) -> list[_Target]:
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
    targets = [_Target(h, "in the URL") for h in _hostlist(hostspec, unquote_hosts=True)]
    targets += [_Target(h, "in the URL's host= parameter") for v in query.get("host", []) for h in _hostlist(v)]

    url_service = next((v for v in reversed(query.get("service", [])) if v), "")
    service = url_service or env.get("PGSERVICE", "")
    entries, service_file = _service_file_entries(service, env) if service else ({}, "")
    service_origin = f"from service {service!r} in {service_file}"
    if not targets:
        targets += [_Target(h, service_origin) for h in _hostlist(entries.get("host", ""))]
        if not targets or not url_service:
            because = "which the drivers use because the URL names no host"
            targets += [_Target(h, f"from PGHOST, {because}", "PGHOST") for h in _hostlist(env.get("PGHOST", ""))]
        if not targets:
            targets += [_Target(h, "libpq's and asyncpg's default Unix socket") for h in DEFAULT_POSTGRES_SOCKETS]

    if parts.scheme.lower() != "postgresql+asyncpg":
        url_addrs = [h for v in query.get("hostaddr", []) for h in _hostlist(v)]
        if url_addrs:
            targets += [_Target(h, "in the URL's hostaddr= parameter") for h in url_addrs]
        elif entries.get("hostaddr"):
            targets += [_Target(h, service_origin) for h in _hostlist(entries["hostaddr"])]
        else:
            because = "which libpq connects to whatever host the URL names"
            addrs = _hostlist(env.get("PGHOSTADDR", ""))
            targets += [_Target(h, f"from PGHOSTADDR, {because}", "PGHOSTADDR") for h in addrs]

    unique: dict[str, _Target] = {}
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
        raise ValueError(_scrub(str(exc), url)) from exc
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


def _refusal(masked: str, bad: Sequence[_Target], allowed: Collection[str]) -> Violation:
    named = ", ".join(f"{t.host!r} ({t.origin})" for t in bad)
    verb = "is" if len(bad) == 1 else "are"
    accepted = ", ".join(sorted(allowed)) or "none"
    envs = sorted({t.env for t in bad if t.env})
    fix = (
        f"unset {' and '.join(envs)} or point it at this machine, or name a local host in the URL; "
        if envs
        else "run the test servers on this machine; "
    )
    return Violation(
        "host",
        f"refusing {masked}: the host {named} {verb} neither loopback (localhost, 127.0.0.0/8, ::1), "
        f"a Unix socket, nor an allowed host (allowed: {accepted}); {fix}"
        f"add a host to {_ALLOWED_HOSTS_KNOB} only if it is a throw-away test server",
    )


def _host_targets(url: str, environ: Mapping[str, str] | None) -> tuple[list[_Target], Violation | None]:
    """The hosts of a PostgreSQL or Redis URL, or the Violation saying why they cannot be known."""
    masked = _masked(url)
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    try:
        if is_postgres_scheme(scheme):
            return _postgres_targets(url, environ), None
        if scheme in REDIS_SCHEMES:
            if scheme == "unix":
                return [_Target(h, "the URL's socket", socket=True) for h in redis_hosts(url)], None
            return [_Target(h, "in the URL") for h in redis_hosts(url)], None
    except ValueError as exc:
        return [], Violation(
            "host",
            f"cannot tell which server {masked} reaches ({_scrub(str(exc), url)}); write it as "
            "scheme://user:password@host:port/name, with '@', '/', '?', '#' or ':' in a password percent-encoded",
        )
    return [], Violation(
        "host",
        f"cannot tell which server {masked or repr(url)} reaches: the scheme {scheme!r} is neither PostgreSQL "
        "(postgresql://, postgresql+<driver>://) nor Redis (redis://, rediss://, unix://); "
        "write the URL with one of those schemes",
    )


def check_host(
    url: str, allowed_hosts: Collection[str] = (), *, environ: Mapping[str, str] | None = None
) -> Violation | None:
    """Every host the URL's driver will reach must be on this machine (loopback or a socket) or allowed.

    Judged on the resolved host list (`postgres_hosts`, `redis_hosts`), not the netloc: an empty netloc
    is not "the local socket" while PGHOST names another machine.
    """
    targets, violation = _host_targets(url, environ)
    if violation is not None:
        return violation
    allowed = {_normal_host(h) for h in allowed_hosts}
    bad = [t for t in targets if not (t.socket or _is_local(t.host) or _normal_host(t.host) in allowed)]
    return _refusal(_masked(url), bad, allowed) if bad else None


def _needs_lookup(host: str) -> bool:
    return bool(host) and not (_is_local(host) or _is_ip_literal(host))


def _lookup(hosts: Iterable[str], timeout: float) -> dict[str, str | None]:
    """Each host's getaddrinfo failure (None when it resolved), all looked up at once and bounded.

    getaddrinfo has no timeout of its own and a dead resolver can hang it for far longer than the connect
    timeout; daemon threads let the gate give up on it without holding the interpreter's exit.
    """
    results: dict[str, str | None] = {}

    def resolve(host: str) -> None:
        try:
            socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except Exception as exc:  # gaierror, or UnicodeError for a name IDNA cannot encode
            results[host] = str(exc) or type(exc).__name__
        else:
            results[host] = None

    names = list(dict.fromkeys(hosts))
    threads = [threading.Thread(target=resolve, args=(h,), name=f"dashtam-resolve-{h}", daemon=True) for h in names]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    unanswered = f"no answer within {timeout:g} s"
    return {host: results.get(host, unanswered) for host in names}


def _unresolvable(host: str, detail: str, source: str) -> Violation:
    origin = f" ({source})" if source else ""
    return Violation(
        "host",
        f"the host {host!r}{origin} does not resolve ({detail}), checked before connecting; fix the host name, "
        "or run the tests where it resolves (a compose service name resolves only inside its network)",
    )


def check_resolvable(host: str, *, timeout: float = 2.0, source: str = "") -> Violation | None:
    """An allow-listed remote host must resolve, so a typo is refused at once, not after the connect timeout.

    Loopback names, sockets and IP literals are never looked up: nothing there can fail to resolve.
    """
    if not _needs_lookup(host):
        return None
    detail = _lookup([host], timeout)[host]
    return None if detail is None else _unresolvable(host, detail, source)


def check_servers(
    *,
    postgres_url: str | None,
    redis_url: str | None,
    allowed_hosts: Collection[str],
    environ: Mapping[str, str] | None = None,
    timeout: float = 2.0,
) -> list[Violation]:
    """Everything about the external servers' admin URLs that can be known without connecting to them.

    Hosts first (`check_host`); the allow-listed remote ones that pass are then looked up, all at once,
    so the whole gate costs at most `timeout` seconds.
    """
    found: list[Violation] = []
    to_resolve: dict[str, str] = {}
    for url in (postgres_url, redis_url):
        if not url:  # not an external server (an unset knob arrives as "" as often as None)
            continue
        violation = check_host(url, allowed_hosts, environ=environ)
        if violation is not None:
            found.append(violation)
            continue
        targets, _ = _host_targets(url, environ)
        for target in targets:
            if not target.socket and _needs_lookup(target.host):
                to_resolve.setdefault(target.host, f"{target.origin}: {_masked(url)}")
    if to_resolve:
        answers = _lookup(to_resolve, timeout)
        found += [_unresolvable(h, d, to_resolve[h]) for h, d in answers.items() if d is not None]
    return found


def redis_index_from_url(redis_url: str) -> int:
    """The Redis index redis-py will select: the `db` query parameter, else the path (`redis://h:p/N`), else 0.

    The query wins because it wins in redis-py's parse_url; judging the path while the client used `?db=0`
    would pass a URL that flushes the dev index.
    """
    parts = urlsplit(redis_url)
    db = parse_qs(parts.query).get("db", [])
    if db:
        if not db[0].isdigit():
            raise ValueError("the Redis URL's db parameter must be an index")
        return int(db[0])
    path = parts.path.strip("/")
    if parts.scheme != "unix" and path:
        if not path.isdigit():
            raise ValueError(f"the Redis URL's path must be an index, got {path!r}")
        return int(path)
    return 0


def check_redis_index(index: int, dev_index: int = 0, databases: int | None = None) -> Violation | None:
    """The test index must not be the dev index and must exist on the server (when its count is known)."""
    if index == dev_index:
        return Violation(
            "redis_index",
            f"the Redis index {index} is the dev index; FLUSHDB after each test would erase dev data; "
            f"point REDIS_URL in the test env file at another index, e.g. redis://host:port/{dev_index + 1}",
        )
    if index < 0:
        return Violation("redis_index", f"the Redis index {index} is negative; use an index from 1 up")
    if databases is not None and index >= databases:
        return Violation(
            "redis_index",
            f"the Redis index {index} does not exist: the server has {databases} databases "
            f"(0-{databases - 1}); use fewer xdist workers, a lower base index, "
            "or raise the server's `databases` setting",
        )
    return None


def check_all(
    *,
    environment: str,
    testing: object,
    database_url: str,
    redis_url: str,
    dev_database: str,
    dev_redis_index: int = 0,
    redis_databases: int | None = None,
    allowed_hosts: Collection[str] = (),
    environ: Mapping[str, str] | None = None,
) -> list[Violation]:
    """Every pure check over the test settings; an empty list means the gate is passed."""
    found: list[Violation | None] = [
        check_environment(environment),
        check_testing_flag(testing),
        check_database_name(database_url, dev_database),
        check_host(database_url, allowed_hosts, environ=environ),
        check_host(redis_url, allowed_hosts, environ=environ),
    ]
    if _host_targets(redis_url, environ)[1] is not None:
        return [v for v in found if v is not None]  # unreadable: said once by check_host, no guessed index
    try:
        index = redis_index_from_url(redis_url)
    except ValueError as exc:
        found.append(Violation("redis_index", f"REDIS_URL {_masked(redis_url)}: {exc}; use redis://host:port/N"))
    else:
        found.append(check_redis_index(index, dev_redis_index, redis_databases))
    return [v for v in found if v is not None]


# pydantic's str -> bool rule (pydantic_core), so the env file is judged as the settings class will read it.
_PYDANTIC_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_ENV_FILE_KNOB = "dashtam_env_file / --dashtam-env-file"


def _values_any_case(values: Mapping[str, str | None], name: str) -> list[tuple[str, str]]:
    """Every (key, value) whose key is `name` in any case: pydantic-settings matches env keys that way, and
    when a file spells one twice in different cases the gate cannot know which one wins, so it judges all."""
    wanted = name.lower()
    return [(key, value or "") for key, value in values.items() if key.lower() == wanted]


def _key_note(key: str, name: str) -> str:
    return "" if key == name else f" (as {key})"


def check_env_file(
    values: Mapping[str, str | None],
    *,
    dev_database: str,
    dev_redis_index: int,
    test_database: str,
    redis_index: int,
) -> list[Violation]:
    """The checks that need only the test env file's text, so a wrong file is refused at configure time,
    before a server is started or a settings class is imported."""
    found: list[Violation | None] = []
    environments = _values_any_case(values, "ENVIRONMENT")
    if not environments:
        found.append(
            Violation(
                "environment",
                "the test env file does not set ENVIRONMENT (looked up in any case), the test run requires "
                f"'testing'; set ENVIRONMENT=testing in the test env file ({_ENV_FILE_KNOB})",
            )
        )
    for key, value in environments:
        if value.strip() != "testing":
            found.append(
                Violation(
                    "environment",
                    f"ENVIRONMENT{_key_note(key, 'ENVIRONMENT')} is {value!r} in the test env file, the test run "
                    f"requires 'testing'; set ENVIRONMENT=testing in the test env file ({_ENV_FILE_KNOB})",
                )
            )
    flags = _values_any_case(values, "TESTING")
    if not flags:
        found.append(
            Violation(
                "testing_flag",
                "the test env file does not set TESTING (looked up in any case), the test run requires true; "
                "set TESTING=true in the test env file",
            )
        )
    for key, value in flags:
        if value.strip().lower() not in _PYDANTIC_TRUE:
            found.append(
                Violation(
                    "testing_flag",
                    f"TESTING{_key_note(key, 'TESTING')} is {value!r} in the test env file, the test run requires "
                    "true (1, true, yes, on, t, y, as pydantic reads it); set TESTING=true in the test env file",
                )
            )
    found.append(check_test_name(test_database, dev_database))
    found.append(check_redis_index(redis_index, dev_redis_index))
    return [v for v in found if v is not None]


def _field_aliases(info: object) -> set[str]:
    """A pydantic field's alias and validation aliases, lower-cased: the names its env var may go by."""
    names: set[str] = set()
    for alias in (getattr(info, "alias", None), getattr(info, "validation_alias", None)):
        choices = getattr(alias, "choices", [alias])
        names.update(c.lower() for c in choices if isinstance(c, str))
    return names


def settings_value(settings: object, name: str) -> object:
    """`settings.<name>` in whatever case the project spelled the field; None when there is no such field.

    pydantic-settings matches env vars case-insensitively, so `database_url: str` is fed by DATABASE_URL
    and the gate must find it under either spelling (or under an alias such as
    `Field(validation_alias="DATABASE_URL")`).
    """
    wanted = name.lower()
    if isinstance(settings, Mapping):
        return next((v for k, v in settings.items() if isinstance(k, str) and k.lower() == wanted), None)
    try:
        return getattr(settings, name)
    except AttributeError:
        pass
    fields = getattr(type(settings), "model_fields", None)
    if isinstance(fields, Mapping):
        for field_name, info in fields.items():
            if field_name.lower() == wanted or wanted in _field_aliases(info):
                return getattr(settings, field_name, None)
    extra = getattr(settings, "__pydantic_extra__", None)
    if isinstance(extra, Mapping):
        found = next((v for k, v in extra.items() if isinstance(k, str) and k.lower() == wanted), None)
        if found is not None:
            return found
    for attribute in dir(settings):
        if attribute.lower() == wanted:
            return getattr(settings, attribute, None)
    return None


def plain_value(value: object) -> str | None:
    """A settings value as the plain text the app will use: SecretStr revealed, a DSN or enum as its text.

    `str(SecretStr(...))` is '**********' and would hide a dev URL from the gate.
    """
    if value is None:
        return None
    reveal = getattr(value, "get_secret_value", None)
    if callable(reveal):
        value = reveal()
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else str(value)


def check_settings(
    settings: object,
    *,
    dev_database: str,
    dev_redis_index: int,
    redis_databases: int | None,
    allowed_hosts: Collection[str],
    environ: Mapping[str, str] | None = None,
) -> list[Violation]:
    """`check_all` over a loaded settings object, reading its fields whatever their case and type."""
    environment = plain_value(settings_value(settings, "ENVIRONMENT"))
    testing = settings_value(settings, "TESTING")
    found = check_all(
        environment=environment if environment is not None else "",
        testing=testing,
        database_url=plain_value(settings_value(settings, "DATABASE_URL")) or "",
        redis_url=plain_value(settings_value(settings, "REDIS_URL")) or "",
        dev_database=dev_database,
        dev_redis_index=dev_redis_index,
        redis_databases=redis_databases,
        allowed_hosts=allowed_hosts,
        environ=environ,
    )
    # check_all can only say "ENVIRONMENT is ''"; a field the settings lack needs a different fix.
    missing: dict[str, tuple[str, str, str]] = {}
    if environment is None:
        missing["environment"] = ("ENVIRONMENT", "'testing'", "ENVIRONMENT=testing")
    if testing is None:
        missing["testing_flag"] = ("TESTING", "true", "TESTING=true")
    return [
        Violation(
            v.check,
            f"the settings' {missing[v.check][0]} is None or no field of any case, the test run requires "
            f"{missing[v.check][1]}; declare the field and set {missing[v.check][2]} in the test env file",
        )
        if v.check in missing
        else v
        for v in found
    ]


def raise_for(violations: Sequence[Violation]) -> None:
    """Raise one `SafetyError` carrying every refusal, on one line; do nothing when there are none."""
    if violations:
        raise SafetyError("; ".join(v.message for v in violations))


def is_owned_comment(comment: str | None) -> bool:
    """Whether a database comment is the plugin's ownership stamp."""
    return comment is not None and comment.startswith(OWNERSHIP_COMMENT_PREFIX)


def ownership_comment(role: str, tag: str) -> str:
    """The stamp written on a database the plugin creates: `pytest-dashtam:<role>:<tag>`."""
    return f"{OWNERSHIP_COMMENT_PREFIX}{role}:{tag}"


async def database_comment(admin_conn: asyncpg.Connection, dbname: str) -> tuple[bool, str | None]:
    """(exists, comment) of a database, read from the live server."""
    row = await admin_conn.fetchrow(
        "SELECT shobj_description(oid, 'pg_database') AS comment FROM pg_database WHERE datname = $1", dbname
    )
    if row is None:
        return False, None
    comment: str | None = row["comment"]
    return True, comment


async def check_owned_or_absent(admin_conn: asyncpg.Connection, dbname: str) -> Violation | None:
    """On the live server, just before DROP: the database is absent or carries the plugin's stamp."""
    exists, comment = await database_comment(admin_conn, dbname)
    if not exists or is_owned_comment(comment):
        return None
    return Violation(
        "ownership",
        f"refusing to drop database {dbname!r}: it exists but was not created by pytest-dashtam "
        f"(no {OWNERSHIP_COMMENT_PREFIX!r} comment on it); drop or rename it yourself if it is disposable, "
        "or choose another test database name",
    )
