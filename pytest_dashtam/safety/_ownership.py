"""The live ownership stamp: what the plugin writes on a database it creates, and the one check that needs
a server, run on the admin connection just before a DROP."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_dashtam.safety._violation import Violation

if TYPE_CHECKING:
    import asyncpg

# Written as `COMMENT ON DATABASE x IS 'pytest-dashtam:<role>:<hash or run id>'` when the plugin creates a
# database; the only thing that makes a database droppable.
OWNERSHIP_COMMENT_PREFIX = "pytest-dashtam:"


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
