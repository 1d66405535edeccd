"""URL helpers shared by every module that prints or parses a server URL."""

from __future__ import annotations

import contextlib
import re
from urllib.parse import SplitResult, urlsplit, urlunsplit

MASK = "***"


def mask_url(url: str) -> str:
    """The URL with its password replaced, safe for headers, logs and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{user}:{MASK}@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def app_database_url(template_url: str | None, admin_url: str, database: str) -> str:
    """The URL the application gets for `database` on the server of `admin_url`.

    The driver (`postgresql+asyncpg`, `postgresql+psycopg`, ...) is the application's own, from its env file's
    URL; user, password, host, port, socket query and database are the stack's: whatever server the env
    file named, the application is pointed at the test stack.
    """
    from sqlalchemy.engine import make_url

    admin = make_url(admin_url)
    drivername = "postgresql+asyncpg"
    if template_url:
        # An unparsable env file URL: the safety gate has said so; keep the default driver.
        with contextlib.suppress(Exception):
            drivername = make_url(template_url).drivername
    url = admin.set(drivername=drivername, database=database)
    return url.render_as_string(hide_password=False)


def host_port(url: str) -> tuple[str, int | None]:
    """(host or socket path, port) of a server URL, for the connection guard."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path, None
    host = parts.hostname or ""
    if not host:  # libpq socket form: postgresql://u@/db?host=/dir&port=N
        from urllib.parse import parse_qs

        query = parse_qs(parts.query)
        host = (query.get("host") or [""])[0]
        port = (query.get("port") or [""])[0]
        return host, int(port) if port.isdigit() else None
    return host, parts.port


_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^:/@\s'\"]*:)[^@\s'\"]+@")


def mask_urls_in(text: str) -> str:
    """Any text (an exception's message, a validation error) with the password of every URL in it masked."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group(1)}{MASK}@", text)


def libpq_url(url: str) -> str:
    """`postgresql://...` for asyncpg and libpq, whatever SQLAlchemy driver suffix the URL carries."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
