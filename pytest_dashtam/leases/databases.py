"""Database-name leases: a session-level advisory lock per name, held on one named admin connection.

The lock is on `database_lease_key(name)`, held on one admin connection whose application_name is
`pytest-dashtam-lease-<owner>` (visible in pg_locks and pg_stat_activity): the server releases it the moment
the run's process dies. The asyncpg connection lives on a private thread with its own event loop, so the
leases outlive every pytest-asyncio loop the tests open and close.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import asyncpg

from pytest_dashtam.errors import BackendError, ConfigError
from pytest_dashtam.leases.owner import _MAX_IDENTIFIER, _one_line, lease_name
from pytest_dashtam.safety import (
    check_test_name,
    database_comment,
    is_owned_comment,
    ownership_comment,
    raise_for,
)
from pytest_dashtam.schema.ddl import _drop_database, _lock_key
from pytest_dashtam.schema.names import ROLE_TEST, _ident, _libpq_url, _literal
from pytest_dashtam.urls import mask_url

ROLE_ADOPTED = "adopted"

# The roles whose databases a dead run leaves behind and a later run may drop (templates are schema's).
_RECLAIMABLE_STAMPS = (ownership_comment(ROLE_TEST, ""), ownership_comment(ROLE_ADOPTED, ""))
_FAMILY_SUFFIX = re.compile(r"_(?:\d|gw)")

_T = TypeVar("_T")


def database_lease_key(name: str) -> int:
    """The advisory lock key that leases database `name`: signed 64-bit, the same in every process.

    `schema.ddl._lock_key("db:" + name)`; the schema's own locks hash `pytest-dashtam:<scope>`, so the two
    never meet. In pg_locks the key shows as classid = its high 32 bits, objid = its low 32 bits, objsubid 1.
    """
    return _lock_key("db:" + name)


def _is_family(name: str, base: str) -> bool:
    """base, or base_<digit>... / base_gw...: the names runs derive from `base` (never its templates)."""
    if "_tpl_" in name or not name.startswith(base):
        return False
    rest = name[len(base) :]
    return rest == "" or bool(_FAMILY_SUFFIX.match(rest))


class DatabaseLeases:
    """One process's leases on database names of one PostgreSQL server, all held on one admin connection."""

    def __init__(self, admin_url: str, owner: str, *, timeout: float) -> None:
        self._admin_url = _libpq_url(admin_url)
        self.owner = owner
        self._timeout = timeout
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pg: asyncpg.Connection | None = None
        self._held: set[str] = set()

    # --- the connection --------------------------------------------------------------------------------

    def open(self) -> None:
        """Start the lease thread and connect; the connection holds the leases, so it stays open until `close`."""
        with self._lock:
            if self._pg is not None:
                return
            try:
                self._start_loop()
                self._pg = self._run(self._connect_pg(), what="connect")
            except BaseException:
                self.close()
                raise

    @property
    def _masked_pg(self) -> str:
        return mask_url(self._admin_url)

    def _start_loop(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        thread = threading.Thread(target=run, name=f"pytest-dashtam-leases-{self.owner}", daemon=True)
        thread.start()
        if not ready.wait(self._timeout):
            loop.call_soon_threadsafe(loop.stop)
            raise BackendError("the pytest-dashtam lease thread did not start; check the process's thread limits")
        self._loop, self._thread = loop, thread

    async def _connect_pg(self) -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(
            self._admin_url,
            timeout=self._timeout,
            command_timeout=self._timeout,
            server_settings={"application_name": lease_name(self.owner)},
        )
        return conn

    def _run(self, coro: Coroutine[Any, Any, _T], *, what: str) -> _T:
        """Run `coro` on the lease thread, bounded by the timeout; PostgreSQL failures become one-line errors."""
        loop = self._loop
        if loop is None or not loop.is_running():
            coro.close()
            raise BackendError("the pytest-dashtam leases are not open; call Leases.open() first")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(self._timeout + 1.0)
        except TimeoutError as exc:
            future.cancel()
            raise BackendError(
                f"PostgreSQL at {self._masked_pg}: timed out after {self._timeout:g}s trying to {what}; "
                "check that the server answers and nothing blocks it (pg_stat_activity)"
            ) from exc
        except (
            OSError,
            ValueError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.exceptions._base.InternalClientError,  # a connection the server ended mid-protocol
        ) as exc:
            raise BackendError(
                f"PostgreSQL at {self._masked_pg}: cannot {what}: {_one_line(exc)}; "
                "check that the server runs, the admin URL is right and its role has CREATEDB"
            ) from exc

    def _conn(self) -> asyncpg.Connection:
        if self._pg is None:
            raise BackendError("the pytest-dashtam leases are not open; call Leases.open() first")
        return self._pg

    def close(self) -> None:
        """Close the connection, which is what releases every lease, and stop the thread; idempotent."""
        with self._lock:
            pg, self._pg = self._pg, None
            loop, self._loop = self._loop, None
            thread, self._thread = self._thread, None
            self._held.clear()
            if pg is not None and loop is not None:
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(pg.close(timeout=self._timeout), loop).result(self._timeout + 1)
                if not pg.is_closed():
                    with contextlib.suppress(Exception):
                        loop.call_soon_threadsafe(pg.terminate)
            if loop is not None:
                with contextlib.suppress(Exception):
                    loop.call_soon_threadsafe(loop.stop)
            if thread is not None:
                thread.join(self._timeout)
            if loop is not None and not loop.is_running():
                with contextlib.suppress(Exception):
                    loop.close()

    # --- the leases ------------------------------------------------------------------------------------

    @property
    def held(self) -> frozenset[str]:
        """The database names this object leases right now."""
        return frozenset(self._held)

    def claim(self, base: str, *, adopt_unstamped: bool = False, dev_database: str = "", max_tries: int = 50) -> str:
        """Lease the first of base, base_2, base_3, ... that no live run holds and no one else owns.

        A database that exists with the plugin's stamp and no live lease is a dead run's leftover: it is
        claimed as it is (the caller recreates it). One without the stamp is someone else's and is passed
        over, unless `adopt_unstamped`: a server the plugin made from nothing (a compose stack whose image
        created POSTGRES_DB) has no one else's data, and its database is stamped as adopted.
        """
        raise_for([v for v in (check_test_name(base, dev_database),) if v is not None])
        with self._lock:
            conn = self._conn()
            for n in range(1, max(max_tries, 1) + 1):
                name = base if n == 1 else f"{base}_{n}"
                if len(name.encode()) > _MAX_IDENTIFIER:
                    raise ConfigError(
                        f"the test database name {name!r} is longer than PostgreSQL's {_MAX_IDENTIFIER} bytes; "
                        f"shorten the test database name {base!r}"
                    )
                if name in self._held or check_test_name(name, dev_database) is not None:
                    continue
                if self._run(self._try_claim(conn, name, adopt_unstamped), what=f"lease database {name!r}"):
                    self._held.add(name)
                    return name
        raise BackendError(
            f"no free test database name from {base!r} to {base}_{max_tries}: each is leased by a live run or "
            "is someone else's database (no pytest-dashtam stamp); stop the other test runs on this server, "
            "or set another test database name"
        )

    async def _try_claim(self, conn: asyncpg.Connection, name: str, adopt_unstamped: bool) -> bool:
        key = database_lease_key(name)
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
            return False  # a live run holds it
        keep = False
        try:
            exists, comment = await database_comment(conn, name)
            if not exists or is_owned_comment(comment):
                keep = True
            elif adopt_unstamped:
                stamp = ownership_comment(ROLE_ADOPTED, self.owner)
                await conn.execute(f"COMMENT ON DATABASE {_ident(name)} IS {_literal(stamp)}")
                keep = True
        finally:
            if not keep:
                await conn.execute("SELECT pg_advisory_unlock($1)", key)
        return keep

    def release(self, name: str) -> None:
        """Give the lease on `name` back (the database itself is left as it is)."""
        with self._lock:
            if name not in self._held:
                return
            self._held.discard(name)
            conn = self._conn()
            self._run(
                conn.execute("SELECT pg_advisory_unlock($1)", database_lease_key(name)),
                what=f"release the lease on {name!r}",
            )

    def leased_by_someone(self, name: str) -> bool:
        """Whether a live run other than this object holds the lease on `name` right now."""
        with self._lock:
            if name in self._held:
                return False
            return self._run(self._probe(self._conn(), name), what=f"check the lease on {name!r}")

    @staticmethod
    async def _probe(conn: asyncpg.Connection, name: str) -> bool:
        key = database_lease_key(name)
        if await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
            await conn.execute("SELECT pg_advisory_unlock($1)", key)
            return False
        return True

    def reclaim(self, base: str, *, dev_database: str = "") -> list[str]:
        """Drop what dead runs left of `base`'s family: stamped test/adopted databases no live run leases.

        The lease is taken for the drop, so a run starting at the same moment cannot claim the name while it
        goes; `_drop_database` checks the name and the stamp once more right before the statement.
        """
        with self._lock:
            return self._run(self._reclaim(self._conn(), base, dev_database), what=f"reclaim the leftovers of {base!r}")

    async def _reclaim(self, conn: asyncpg.Connection, base: str, dev_database: str) -> list[str]:
        rows = await conn.fetch(
            "SELECT datname, shobj_description(oid, 'pg_database') AS comment FROM pg_database "
            "WHERE NOT datistemplate AND left(datname, length($1)) = $1 ORDER BY datname",
            base,
        )
        dropped: list[str] = []
        for row in rows:
            name: str = row["datname"]
            comment: str | None = row["comment"]
            if (
                name in self._held
                or not _is_family(name, base)
                or comment is None
                or not comment.startswith(_RECLAIMABLE_STAMPS)
                or check_test_name(name, dev_database) is not None
            ):
                continue
            key = database_lease_key(name)
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
                continue  # a live run's
            try:
                if await _drop_database(conn, name, dev_database=dev_database, force=True):
                    dropped.append(name)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", key)
        return dropped
