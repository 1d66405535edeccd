"""The migration child: `alembic upgrade head` into one database, in a process that can reach nothing else.

Started by `schema.migrate` as `python -m pytest_dashtam._migrate`. The application's env.py runs here with
whatever it imports and whatever URL it picks; the connection guard installed first refuses every
PostgreSQL database but the target and every Redis server, so an env.py that reads its URL from somewhere
other than Alembic's configuration or DATABASE_URL fails here instead of migrating a foreign database.

The parent reads one line from stderr: `<ExceptionType>: <first line of its message>`, passwords masked.
Exit status 0: migrated; 1: the upgrade failed; 2: the guard refused a connection.
"""

from __future__ import annotations

import os
import re
import sys
from urllib.parse import parse_qs, urlsplit

from pytest_dashtam.urls import mask_url

# How the parent hands over the target database and the Alembic configuration.
URL_VAR = "DASHTAM_MIGRATE_URL"
INI_VAR = "DASHTAM_MIGRATE_INI"
EXIT_FAILED = 1
EXIT_REFUSED = 2
# Anything shaped like a URL in an error message is masked before it is printed.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")
# The fix the guard's refusal ends with: what env.py must connect to instead.
REFUSAL_FIX = (
    "the migrations must use the URL Alembic hands them (config.get_main_option('sqlalchemy.url')) "
    "or the DATABASE_URL environment variable"
)


def _refusal(exc: BaseException) -> BaseException | None:
    """The guard's refusal among `exc` and its causes: env.py or a driver may have wrapped it."""
    from pytest_dashtam.guard import GuardError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, GuardError):
            return current
        current = current.__cause__ or current.__context__
    return None


def _one_line(exc: BaseException, password: str | None) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    first = _URL.sub(lambda m: mask_url(m.group(0)), first)
    if password:
        first = first.replace(password, "***")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _server(url: str) -> tuple[str, int]:
    """(host or socket directory, port) of the target, as libpq would read them."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host = parts.hostname or (query.get("host") or [""])[0]
    raw_port = (query.get("port") or [""])[0]
    port = parts.port or (int(raw_port) if raw_port.isdigit() else 5432)
    return host, port


def _install_guard(url: str, database: str) -> None:
    from pytest_dashtam.guard import ConnectionGuard, Target

    host, port = _server(url)
    guard = ConnectionGuard(postgres=Target(host, port), redis=None, hint=REFUSAL_FIX)
    guard.allow_database(database)
    guard.install()


def main() -> int:
    url = os.environ[URL_VAR]
    ini = os.environ[INI_VAR]
    password: str | None = None
    try:
        from sqlalchemy.engine import make_url

        target = make_url(url)
        password = None if target.password is None else str(target.password)
        _install_guard(url, target.database or "")

        from alembic import command
        from alembic.config import Config

        config = Config(ini)
        # The application's env.py must not reconfigure logging: its handlers would write into the one line.
        config.attributes["configure_logger"] = False
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # ConfigParser interpolation
        command.upgrade(config, "head")
    except BaseException as exc:
        try:
            refused = _refusal(exc)
        except ImportError:  # the guard itself could not be imported: that is the failure to report
            refused = None
        print(_one_line(refused or exc, password), file=sys.stderr, flush=True)
        return EXIT_REFUSED if refused is not None else EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
