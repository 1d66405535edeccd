"""The database statements underneath the schema: connect, lock, terminate, create, drop.

Every DROP DATABASE of a named database goes through `_drop_database`, which runs the name check and the
live ownership check (safety.check_owned_or_absent) immediately before the statement: a database the plugin
did not stamp when it created it is never dropped, whatever it is called. The one other DROP,
`_drop_unfinished`, takes only names of the `pdt_test_new_<16 hex>` form: the name a database has between
its CREATE and its RENAME, which only the plugin ever gives.

A database is created from its template under an unfinished name, stamped, then renamed (`_create_database`),
so a crash never leaves an unstamped database under a name a run would use; `reclaim_unfinished` drops
what a crashed creation left. Session-level advisory locks (`_advisory_lock`) serialise the creators.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from pytest_dashtam.errors import BackendError, SafetyError, SchemaError
from pytest_dashtam.safety import check_owned_or_absent, check_test_name, database_comment, raise_for
from pytest_dashtam.schema.names import _ident, _libpq_url, _literal
from pytest_dashtam.urls import mask_url

# How long a CREATE DATABASE ... TEMPLATE is retried while the template is briefly in use.
_CLONE_RETRY_SECONDS = 10.0
_CONNECT_TIMEOUT = 10.0
# How long a creation waits for another creator of the same database name.
_CREATE_LOCK_SECONDS = 60.0
# The name a database has from its CREATE until its RENAME: only the plugin makes names of this form, so a
# database called so whose creator is gone is a crashed creation, droppable although it carries no stamp.
_UNFINISHED_PREFIX = "pdt_test_new_"
_UNFINISHED_NAME = re.compile(r"pdt_test_new_[0-9a-f]{16}")


# --- connections, locks and the one DROP -------------------------------------------------------------------


async def _connect(url: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(_libpq_url(url), timeout=_CONNECT_TIMEOUT)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BackendError(
            f"cannot connect to PostgreSQL at {mask_url(url)}: {cause}; check that the server runs and the URL is right"
        ) from exc


def _lock_key(scope: str) -> int:
    """A signed 64-bit advisory lock key for `scope`, the same in every process."""
    return int.from_bytes(hashlib.blake2b(scope.encode(), digest_size=8).digest(), "big", signed=True)


async def _try_lock(conn: asyncpg.Connection, key: int) -> bool:
    """The advisory lock `key` if no one on the whole server holds it; False, holding nothing, otherwise.

    Advisory locks belong to the database the session is connected to: two runs whose admin URLs name
    different databases would both get the same key. pg_locks shows every database's locks, so a holder
    elsewhere is seen and the lock given back.
    """
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
        return False
    elsewhere = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND granted "
        "AND pid <> pg_backend_pid() AND classid::int8 = $1 AND objid::int8 = $2)",
        (key >> 32) & 0xFFFFFFFF,
        key & 0xFFFFFFFF,
    )
    if elsewhere:
        await conn.execute("SELECT pg_advisory_unlock($1)", key)
        return False
    return True


@asynccontextmanager
async def _advisory_lock(conn: asyncpg.Connection, scope: str, wait: float, *, holder: str = "") -> AsyncIterator[None]:
    """Serialise template work and database creation across xdist workers and concurrent runs on the server.

    Session-level, so the server releases it if the holder dies; polled so a stuck holder gives an error
    instead of a hang.
    """
    key = _lock_key(f"pytest-dashtam:{scope}")
    deadline = time.monotonic() + wait
    while not await _try_lock(conn, key):
        if time.monotonic() > deadline:
            doing = holder or f"building the template for {scope.removeprefix('template:')!r}"
            raise SchemaError(
                f"waited {wait:.0f}s for another pytest-dashtam process {doing}; "
                "check for a stuck test run (pg_locks, locktype 'advisory') and stop it"
            )
        await asyncio.sleep(0.05)
    try:
        yield
    finally:
        if not conn.is_closed():
            await conn.execute("SELECT pg_advisory_unlock($1)", key)


async def _terminate_connections(conn: asyncpg.Connection, name: str) -> None:
    await conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        name,
    )


def _force_suffix(conn: asyncpg.Connection) -> str:
    return " WITH (FORCE)" if conn.get_server_version().major >= 13 else ""


async def _drop_database(conn: asyncpg.Connection, name: str, *, dev_database: str | None, force: bool) -> bool:
    """The DROP DATABASE for every named database: runs the checks first, then drops. False if it was absent.

    `force` terminates the database's connections first (test databases); templates are dropped without it,
    so a template another run is cloning from right now makes the DROP fail instead of breaking that run.
    """
    raise_for([v for v in (check_test_name(name, dev_database or ""),) if v is not None])
    violation = await check_owned_or_absent(conn, name)
    if violation is not None:
        raise SafetyError(violation.message)
    exists, _ = await database_comment(conn, name)
    if not exists:
        return False
    if force:
        await _terminate_connections(conn, name)
        suffix = _force_suffix(conn)
    else:
        suffix = ""
    await conn.execute(f"DROP DATABASE IF EXISTS {_ident(name)}{suffix}")
    return True


def unfinished_name(name: str) -> str:
    """The name `name` has while it is being created (`pdt_test_new_` + 16 hex of its hash)."""
    return _UNFINISHED_PREFIX + hashlib.blake2b(name.encode(), digest_size=8).hexdigest()


def _creation_scope(unfinished: str) -> str:
    return f"create:{unfinished}"


async def _drop_unfinished(conn: asyncpg.Connection, name: str) -> bool:
    """The DROP for a creation that never finished: only a `pdt_test_new_<16 hex>` name goes through here.

    Such a database carries no stamp (or one written just before the crash), so the ownership check cannot
    apply; the name is the guarantee, and the caller holds the creation lock, so no live creator owns it.
    """
    if not _UNFINISHED_NAME.fullmatch(name):
        raise SafetyError(
            f"refusing to drop database {name!r} as an unfinished creation: only names of the form "
            f"{_UNFINISHED_PREFIX}<16 hex> are, and only pytest-dashtam makes them"
        )
    raise_for([v for v in (check_test_name(name, ""),) if v is not None])
    exists, _ = await database_comment(conn, name)
    if not exists:
        return False
    await _terminate_connections(conn, name)
    await conn.execute(f"DROP DATABASE IF EXISTS {_ident(name)}{_force_suffix(conn)}")
    return True


async def reclaim_unfinished(conn: asyncpg.Connection) -> list[str]:
    """Drop the databases a crashed creation left under its unfinished name; returns the names dropped.

    A creator holds its creation lock from before the CREATE until after the RENAME, and the server releases
    it when the creator dies: an unfinished name whose lock can be taken now has no creator left.
    """
    rows = await conn.fetch(
        "SELECT datname FROM pg_database WHERE datname LIKE $1 ORDER BY datname",
        _UNFINISHED_PREFIX.replace("_", "\\_") + "%",
    )
    dropped: list[str] = []
    for name in (r["datname"] for r in rows):
        if not _UNFINISHED_NAME.fullmatch(name):
            continue
        key = _lock_key(f"pytest-dashtam:{_creation_scope(name)}")
        if not await _try_lock(conn, key):
            continue  # its creator is alive
        try:
            if await _drop_unfinished(conn, name):
                dropped.append(name)
        except (asyncpg.InsufficientPrivilegeError, asyncpg.ObjectInUseError):
            continue  # another role's leftover, or someone connected to it: not ours to force
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", key)
    return dropped


async def _create_database(conn: asyncpg.Connection, name: str, *, template: str, stamp: str) -> None:
    """CREATE DATABASE from `template` under an unfinished name, stamp it, then RENAME it to `name`.

    A crash at any point leaves either nothing, or a database under the unfinished name that the next run
    reclaims: never an unstamped `name`, which no run could drop. CREATE DATABASE cannot run in a
    transaction, hence the three statements. Retried briefly while the template is in use: PostgreSQL
    refuses to copy a database anyone is connected to.
    """
    unfinished = unfinished_name(name)
    async with _advisory_lock(
        conn, _creation_scope(unfinished), _CREATE_LOCK_SECONDS, holder=f"creating the database {name!r}"
    ):
        try:  # under the lock, a database under the unfinished name is a crashed creation of this very name
            await _drop_unfinished(conn, unfinished)
        except asyncpg.InsufficientPrivilegeError as exc:
            raise SchemaError(
                f"cannot create database {name!r}: {unfinished!r}, left by a crashed creation under another "
                f"role, cannot be dropped ({exc}); drop it as its owner or a superuser"
            ) from exc
        try:
            await _create_unfinished(conn, unfinished, name=name, template=template)
            await conn.execute(f"COMMENT ON DATABASE {_ident(unfinished)} IS {_literal(stamp)}")
            try:
                await conn.execute(f"ALTER DATABASE {_ident(unfinished)} RENAME TO {_ident(name)}")
            except asyncpg.DuplicateDatabaseError as exc:
                raise _duplicate(name) from exc
        except BaseException:
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                await _drop_unfinished(conn, unfinished)
            raise


def _duplicate(name: str) -> SchemaError:
    return SchemaError(
        f"cannot create database {name!r}: it was created by someone else at the same moment; "
        "two runs are using the same test database name on this server, give each its own"
    )


async def _create_unfinished(conn: asyncpg.Connection, unfinished: str, *, name: str, template: str) -> None:
    deadline = time.monotonic() + _CLONE_RETRY_SECONDS
    while True:
        try:
            await conn.execute(f"CREATE DATABASE {_ident(unfinished)} TEMPLATE {_ident(template)}")
            return
        except asyncpg.ObjectInUseError as exc:
            if time.monotonic() > deadline:
                raise SchemaError(
                    f"cannot create {name!r} from {template!r}: {exc}; something stays connected to the "
                    "template database, close it (SELECT pid, usename, application_name FROM pg_stat_activity "
                    f"WHERE datname = '{template}')"
                ) from exc
            await asyncio.sleep(0.05)
        except asyncpg.InsufficientPrivilegeError as exc:
            raise SchemaError(
                f"cannot create database {name!r}: {exc}; the admin URL's role needs CREATEDB (or superuser)"
            ) from exc
        except asyncpg.DuplicateDatabaseError as exc:
            raise _duplicate(name) from exc
