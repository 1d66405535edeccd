"""The names and URLs of the schema's databases, and the quoting of names in the statements that use them."""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

from pytest_dashtam.errors import ConfigError

# PostgreSQL truncates identifiers beyond 63 bytes: a truncated template name would never match again.
_MAX_IDENTIFIER = 63
# Roles in the ownership stamp (`pytest-dashtam:<role>:<tag>`).
ROLE_TEMPLATE = "template"
ROLE_BUILDING = "template-building"
ROLE_TEST = "test"
# A failed test's database kept for debugging (--dashtam-keep-failed): no stale cleanup drops this role.
ROLE_KEPT = "kept"


def template_name(test_db: str, hash_: str) -> str:
    """`<test_db>_tpl_<hash>`; refused when PostgreSQL would truncate it."""
    name = f"{test_db}_tpl_{hash_}"
    if len(name.encode()) > _MAX_IDENTIFIER:
        raise ConfigError(
            f"the template name {name!r} is longer than PostgreSQL's {_MAX_IDENTIFIER} bytes; "
            f"shorten the test database name {test_db!r} to at most {_MAX_IDENTIFIER - len(name) + len(test_db)} bytes"
        )
    return name


def database_url(admin_url: str, name: str, *, driver: str = "postgresql+asyncpg") -> str:
    """The URL of database `name` on the server `admin_url` points at (user, password, host, port, query kept)."""
    parts = urlsplit(admin_url)
    return urlunsplit((driver, parts.netloc, "/" + quote(name, safe=""), parts.query, parts.fragment))


def redis_url_with_index(redis_url: str, index: int) -> str:
    """The Redis URL with its path set to `index` (any index already in the path is replaced)."""
    parts = urlsplit(redis_url)
    if parts.scheme == "unix":  # unix:///path/to/sock?db=N
        query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("db="))
        query = f"{query}&db={index}" if query else f"db={index}"
        # urlunsplit would drop the empty authority (unix:/path); keep the usual unix:///path form.
        return f"unix://{parts.netloc}{parts.path}" + (f"?{query}" if query else "")
    return urlunsplit((parts.scheme, parts.netloc, f"/{index}", parts.query, parts.fragment))


def _libpq_url(url: str) -> str:
    """`postgresql://...` for asyncpg, whatever SQLAlchemy driver suffix the URL carries."""
    parts = urlsplit(url)
    return urlunsplit(("postgresql", parts.netloc, parts.path, parts.query, parts.fragment))


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
