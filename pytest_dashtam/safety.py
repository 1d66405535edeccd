"""The safety gate: checks that stand between the test run and anything destructive.

Every check but one is a pure function over settings and parsed URLs, so it can refuse before any
connection that could change something is opened. The last one, `check_owned_or_absent`, runs on a live
admin connection just before a DROP: the plugin only drops a database that carries the stamp it wrote
when it created it, whatever the database is called.

Each check returns a `Violation` (what was wrong, what was checked, what to do, on one line) or None;
`raise_for` turns any number of them into one `SafetyError`. There is deliberately no switch that skips
the gate: a run that cannot pass it must be fixed, not waved through.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pytest_dashtam.errors import SafetyError
from pytest_dashtam.urls import mask_url

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
    source = f"DATABASE_URL {mask_url(database_url)}"
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


def _is_local_host(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(url: str, allowed_hosts: Collection[str] = ()) -> Violation | None:
    """The server must be on this machine (loopback or a Unix socket), a compose service or allow-listed.

    libpq puts a socket directory in the `host` query parameter (`postgresql://u@/db?host=/run/pg`); an
    empty host means libpq's default socket. Redis sockets use the `unix://` scheme.
    """
    masked = mask_url(url)
    try:
        parts = urlsplit(url)
        hostname = parts.hostname or ""
    except ValueError:
        return Violation("host", f"cannot parse the URL {masked}; write it as scheme://user@host:port/name")
    allowed = {h.lower() for h in allowed_hosts}
    hosts: list[str] = []
    if parts.scheme == "unix":
        return None
    query_hosts = parse_qs(parts.query).get("host", [])
    if hostname:
        hosts.append(hostname)
    for value in query_hosts:
        hosts.extend(h for h in value.split(",") if h)
    if not hosts:
        return None  # libpq's default Unix socket
    for host in hosts:
        if host.startswith("/") or host.startswith("@"):  # socket directory / abstract socket
            continue
        if _is_local_host(host) or host.lower() in allowed:
            continue
        return Violation(
            "host",
            f"the host {host!r} in {masked} is neither loopback, a Unix socket, nor a service of the "
            "test stack; run the test servers on this machine, or add the host to the plugin's allowed hosts if it is "
            "a throw-away test server",
        )
    return None


def redis_index_from_url(redis_url: str) -> int:
    """The Redis index in the URL's path (`redis://h:p/N`), or the `db` query parameter; 0 when absent."""
    parts = urlsplit(redis_url)
    path = parts.path.strip("/")
    if parts.scheme != "unix" and path:
        if not path.isdigit():
            raise ValueError(f"the Redis URL's path must be an index, got {path!r}")
        return int(path)
    db = parse_qs(parts.query).get("db", [])
    if db and db[0].isdigit():
        return int(db[0])
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
) -> list[Violation]:
    """Every pure check over the test settings; an empty list means the gate is passed."""
    found: list[Violation | None] = [
        check_environment(environment),
        check_testing_flag(testing),
        check_database_name(database_url, dev_database),
        check_host(database_url, allowed_hosts),
        check_host(redis_url, allowed_hosts),
    ]
    try:
        index = redis_index_from_url(redis_url)
    except ValueError as exc:
        found.append(Violation("redis_index", f"REDIS_URL {mask_url(redis_url)}: {exc}; use redis://host:port/N"))
    else:
        found.append(check_redis_index(index, dev_redis_index, redis_databases))
    return [v for v in found if v is not None]


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
