"""The checks on plain values: the environment name, the testing flag, a database name, a Redis index."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote, urlsplit

from pytest_dashtam.safety._redact import redact_url
from pytest_dashtam.safety._violation import Violation

# "test" as a word part of the name: dashtam_test, test_x, dashtam_test_gw0, dashtam_test_tpl_ab12,
# tests, testing, test2. Not "contest" or "latest": a dev database named `latest_prices` is not ours.
_TEST_WORD = re.compile(r"(?:^|[_\-.])test(?:s|ing)?\d*(?=$|[_\-.])", re.IGNORECASE)


# What a test database may be called: PostgreSQL folds unquoted names to lower case, so an upper-case name
# means different databases to different tools, and a quote or ';' is never meant as part of a name.
_PLAIN_NAME = re.compile(r"[a-z_][a-z0-9_\-]*")


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
    source = f"DATABASE_URL {redact_url(database_url)}"
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
    if not _PLAIN_NAME.fullmatch(name):
        return Violation(
            "database_name",
            f"the database name {name!r}{origin} is not a plain lower-case name; use lower-case ASCII letters, "
            "digits, '_' and '-' only (a quote, ';', upper case or other characters would need quoting "
            "everywhere the name is used), such as dashtam_test",
        )
    if not is_test_database_name(name):
        return Violation(
            "database_name",
            f"the database name {name!r}{origin} does not contain 'test' as a word part; "
            "use a test database name such as dashtam_test",
        )
    return None


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
