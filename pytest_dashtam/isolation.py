"""Per-test isolation: a rolled-back database session, real-commit cleanup, and the Redis flush.

Three costs shape this module (measured on this project's machines, see issue 4):

* asyncpg connections belong to the event loop that opened them. pytest-asyncio may run tests in a
  function-, module- or session-scoped loop, so one pooled engine shared across loops fails with "attached
  to a different loop". `LoopEngines` keeps one pooled engine per loop and disposes it inside that loop when
  the loop shuts down (an async generator parked in the loop is closed by `loop.shutdown_asyncgens()`,
  which `asyncio.Runner` and pytest-asyncio call before closing a loop).
* SQLAlchemy numbers savepoints per `Connection` object; on one long-lived connection every test's
  savepoints get new names, each prepared and cached by asyncpg, and the per-test cost grows. A fresh
  `Connection` per test (taken from the pool: the same physical connection) restarts the numbering.
* TRUNCATE of 15 small tables costs 50-100 ms, DELETE of the same rows in one transaction about 6 ms:
  after a real-commit test only the tables it wrote (and the tables referencing them) are emptied, with
  DELETE, and their sequences are put back where the clone had them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import re
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pytest_dashtam.errors import SafetyError
from pytest_dashtam.safety import check_redis_index, check_test_name, database_name_from_url, raise_for

if TYPE_CHECKING:
    from redis.asyncio import ConnectionPool, Redis
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.engine.interfaces import DBAPICursor, ExecutionContext
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, AsyncTransaction

T = TypeVar("T")
R = TypeVar("R")

# One test holds one connection (its session and the app's requests share it); a few more for tests that
# open their own, and for real-commit tests whose session checks out per transaction.
POOL_SIZE = 5
MAX_OVERFLOW = 5
# What one worker may hold at once on the server: its pool, a db_engine connection and an admin connection.
CONNECTIONS_PER_WORKER = POOL_SIZE + MAX_OVERFLOW + 2


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine from sync code in a private event loop.

    Never `asyncio.run()` on the caller's thread: it would set and then clear the thread's current event
    loop under pytest-asyncio. When a loop is already running here, the work goes to a helper thread.
    """

    async def main() -> T:
        return await factory()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
            return runner.run(main())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.Runner(loop_factory=asyncio.new_event_loop).run(main())).result()


# --- one resource per event loop ------------------------------------------------------------------------


@dataclass
class _LoopEntry(Generic[R]):
    loop: weakref.ReferenceType[asyncio.AbstractEventLoop]
    value: R
    watcher: AsyncIterator[None] | None = None
    closed: bool = False


class PerLoop(Generic[R]):
    """One `R` per event loop, made on first use in that loop and closed inside it when the loop shuts down.

    The closing is an async generator parked in the loop: `loop.shutdown_asyncgens()` (called by
    `asyncio.Runner`, hence by pytest-asyncio, before a loop closes) resumes it, so the resource is closed
    by the loop that owns its connections.
    """

    def __init__(self, create: Callable[[], R], close: Callable[[R], Awaitable[None]]) -> None:
        self._create = create
        self._close = close
        self._entries: dict[int, _LoopEntry[R]] = {}
        self.created = 0

    async def get(self) -> R:
        """The resource of the running loop."""
        loop = asyncio.get_running_loop()
        entry = self._entries.get(id(loop))
        if entry is not None and entry.loop() is loop and not entry.closed:
            return entry.value
        entry = _LoopEntry(weakref.ref(loop), self._create())
        self._entries[id(loop)] = entry
        self.created += 1
        entry.watcher = self._watch(id(loop), entry)
        await anext(entry.watcher)
        return entry.value

    async def _watch(self, key: int, entry: _LoopEntry[R]) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if self._entries.get(key) is entry:
                del self._entries[key]
            if not entry.closed:
                entry.closed = True
                await self._close(entry.value)

    def values(self) -> list[R]:
        """The resources alive now."""
        return [e.value for e in self._entries.values() if not e.closed]

    def close(self) -> None:
        """Close the resources of loops still open and idle; a closed loop's connections are already gone."""
        for key, entry in list(self._entries.items()):
            loop = entry.loop()
            self._entries.pop(key, None)
            if entry.closed or entry.watcher is None:
                continue
            if loop is not None and not loop.is_closed() and not loop.is_running():
                watcher = entry.watcher
                loop.run_until_complete(watcher.aclose())  # type: ignore[attr-defined]
            entry.closed = True


class LoopEngines(PerLoop["AsyncEngine"]):
    """One pooled `AsyncEngine` on the test database per event loop."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        name = database_name_from_url(url)
        # Everything this class creates can reach DELETE: refuse a non-test database outright.
        raise_for([v for v in (check_test_name(name, ""),) if v is not None])
        self.url = url
        kwargs: dict[str, Any] = {"pool_size": POOL_SIZE, "max_overflow": MAX_OVERFLOW, **engine_kwargs}

        base: list[AsyncEngine] = []

        def create() -> AsyncEngine:
            from sqlalchemy.engine import Engine
            from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

            if not base:
                base.append(create_async_engine(url, **kwargs))
                return base[0]
            # Later loops (function-scoped loops: one per test) get a fresh pool of the same kind, with its
            # connect listeners, on the dialect the first engine already initialised: that skips the
            # first-connect queries (server version, schema...), about a third of a new engine's cost.
            first = base[0].sync_engine
            return AsyncEngine(Engine(first.pool.recreate(), first.dialect, first.url))

        async def close(engine: AsyncEngine) -> None:
            await engine.dispose()

        super().__init__(create, close)

    async def engine(self) -> AsyncEngine:
        """The engine for the running loop."""
        return await self.get()

    def engines(self) -> list[AsyncEngine]:
        return self.values()


class LoopRedisPools(PerLoop["ConnectionPool"]):
    """One Redis connection pool on the test index per event loop: no connect/HELLO/SELECT per test."""

    def __init__(self, url: str) -> None:
        def create() -> ConnectionPool:
            from redis.asyncio import ConnectionPool

            return ConnectionPool.from_url(url, decode_responses=True)

        async def close(pool: ConnectionPool) -> None:
            await pool.disconnect()

        super().__init__(create, close)


# --- the per-test session -------------------------------------------------------------------------------


@dataclass
class IsolatedSession:
    """A test's session and what has to be undone after it."""

    session: AsyncSession
    connection: AsyncConnection | None = None
    transaction: AsyncTransaction | None = None

    async def close(self) -> None:
        """Close the session and roll back everything the test did (rollback mode)."""
        try:
            await self.session.close()
        finally:
            try:
                if self.transaction is not None and self.transaction.is_active:
                    await self.transaction.rollback()
            finally:
                if self.connection is not None:
                    await self.connection.close()


async def open_rollback_session(engine: AsyncEngine) -> IsolatedSession:
    """A session inside an outer transaction: its commits become savepoints, all rolled back after the test.

    `expire_on_commit=False` because code under test often returns ORM objects after committing them, and
    an expired attribute would need a lazy load, which async SQLAlchemy cannot do implicitly.
    """
    from sqlalchemy.ext.asyncio import AsyncSession

    connection = await engine.connect()
    transaction = await connection.begin()
    session = AsyncSession(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    return IsolatedSession(session, connection, transaction)


def open_commit_session(engine: AsyncEngine) -> IsolatedSession:
    """A plain session on the engine: commits are real (the `dashtam_db(transaction=True)` marker)."""
    from sqlalchemy.ext.asyncio import AsyncSession

    return IsolatedSession(AsyncSession(bind=engine, expire_on_commit=False))


# --- which tables a real-commit test wrote --------------------------------------------------------------

# A write statement's verb and target, as written in raw SQL.
_NAME = r'(?:"(?:[^"]|"")+"|[A-Za-z_][\w$]*)'
_WRITE_TARGET = re.compile(
    rf"^\s*(?:insert\s+into|update|delete\s+from|merge\s+into|copy|truncate(?:\s+table)?)\s+(?:only\s+)?"
    rf"({_NAME}(?:\s*\.\s*{_NAME})?)",
    re.IGNORECASE,
)
_WRITE_WORD = re.compile(r"\b(?:insert|update|delete|merge|copy|truncate)\b", re.IGNORECASE)


def _quoted(name: str, schema: str | None) -> str:
    ident = '"' + name.replace('"', '""') + '"'
    return ('"' + schema.replace('"', '""') + '".' + ident) if schema else ident


@dataclass
class WriteTracker:
    """Records the tables a test writes, from the statements its engines execute.

    Compiled DML carries its table; raw SQL is matched against `INSERT INTO t`, `UPDATE t`, ...; a raw
    statement that writes in a way not recognised (a data-modifying CTE, a function call) marks the test
    as `unknown`, and every table is emptied: slower, never wrong.
    """

    tables: set[str] = field(default_factory=set)
    unknown: bool = False
    _engines: list[Engine] = field(default_factory=list)

    def attach(self, engines: Iterable[AsyncEngine]) -> None:
        from sqlalchemy import event

        for engine in engines:
            if engine.sync_engine not in self._engines:
                event.listen(engine.sync_engine, "after_cursor_execute", self._seen)
                self._engines.append(engine.sync_engine)

    def detach(self) -> None:
        from sqlalchemy import event

        for engine in self._engines:
            event.remove(engine, "after_cursor_execute", self._seen)
        self._engines.clear()

    def _seen(
        self,
        conn: Connection,
        cursor: DBAPICursor,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        flags = {f: bool(getattr(context, f, False)) for f in ("isinsert", "isupdate", "isdelete", "isddl")}
        if flags["isinsert"] or flags["isupdate"] or flags["isdelete"]:
            table = getattr(getattr(context, "compiled", None), "statement", None)
            table = getattr(table, "table", None)
            name = getattr(table, "name", None)
            if isinstance(name, str):
                self.tables.add(_quoted(name, getattr(table, "schema", None)))
                return
        elif context is not None and not getattr(context, "is_text", True) and not flags["isddl"]:
            return  # a compiled SELECT: SQLAlchemy knows it does not write
        self.note_sql(statement)

    def note_sql(self, statement: str) -> None:
        """Record the target of one raw SQL statement (or mark the test unknown)."""
        match = _WRITE_TARGET.match(statement)
        if match:
            self.tables.add(match.group(1))
        elif _WRITE_WORD.search(statement) and not statement.lstrip().lower().startswith(("select", "show", "set")):
            self.unknown = True


# --- emptying written tables -----------------------------------------------------------------------------

_CATALOG_SQL = """
SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS name, n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%' AND NOT c.relispartition
"""
_FKEYS_SQL = "SELECT conrelid, confrelid FROM pg_constraint WHERE contype = 'f'"
_SEQUENCES_SQL = """
SELECT d.refobjid AS table_oid, format('%I.%I', n.nspname, s.relname) AS seq
FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_namespace n ON n.oid = s.relnamespace
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
"""


@dataclass
class TableCleaner:
    """What DELETE needs to know about the test database, read once per worker from the fresh clone.

    Rows the clone started with (data migrations) and sequence positions are captured then, so emptying a
    table puts it back exactly as the clone had it.
    """

    names: dict[int, str]
    parts: dict[int, tuple[str, str]]
    children: dict[int, set[int]]
    sequences: dict[int, list[tuple[str, int, bool]]]
    seeded: dict[int, bytes]

    @classmethod
    async def load(cls, raw: Any) -> TableCleaner:
        """Read the catalog through a raw asyncpg connection to the test database."""
        catalog = await raw.fetch(_CATALOG_SQL)
        names = {r["oid"]: r["name"] for r in catalog}
        parts = {r["oid"]: (r["nspname"], r["relname"]) for r in catalog}
        children: dict[int, set[int]] = {}
        for r in await raw.fetch(_FKEYS_SQL):
            if r["conrelid"] != r["confrelid"]:
                children.setdefault(r["confrelid"], set()).add(r["conrelid"])
        sequences: dict[int, list[tuple[str, int, bool]]] = {}
        for r in await raw.fetch(_SEQUENCES_SQL):
            state = await raw.fetchrow(f"SELECT last_value, is_called FROM {r['seq']}")
            sequences.setdefault(r["table_oid"], []).append((r["seq"], state["last_value"], state["is_called"]))
        seeded: dict[int, bytes] = {}
        if names:
            probe = " UNION ALL ".join(f"(SELECT {oid}::oid AS oid FROM {n} LIMIT 1)" for oid, n in names.items())
            for r in await raw.fetch(probe):
                buffer = io.BytesIO()
                schema, table = parts[r["oid"]]
                await raw.copy_from_table(table, schema_name=schema, output=buffer, format="binary")
                seeded[r["oid"]] = buffer.getvalue()
        return cls(names, parts, children, sequences, seeded)

    async def resolve(self, raw: Any, tables: Iterable[str]) -> set[int]:
        """Table oids for names as SQL spells them (quoted or not, with or without schema)."""
        wanted = sorted(set(tables))
        if not wanted:
            return set()
        rows = await raw.fetch("SELECT to_regclass(t)::oid AS oid FROM unnest($1::text[]) AS t", wanted)
        return {r["oid"] for r in rows if r["oid"] is not None and r["oid"] in self.names}

    def plan(self, written: set[int]) -> list[int]:
        """The tables to empty, children before parents: the written ones and every table referencing them."""
        targets: set[int] = set()
        stack = list(written)
        while stack:
            oid = stack.pop()
            if oid in targets:
                continue
            targets.add(oid)
            stack.extend(self.children.get(oid, ()))
        ordered: list[int] = []
        state: dict[int, int] = {}

        def visit(oid: int) -> None:
            if state.get(oid) == 2:
                return
            if state.get(oid) == 1:
                raise _Cycle
            state[oid] = 1
            for child in self.children.get(oid, ()):
                if child in targets:
                    visit(child)
            state[oid] = 2
            ordered.append(oid)

        for oid in sorted(targets):
            visit(oid)
        return ordered

    def cleanup_sql(self, written: set[int]) -> str:
        """One script: DELETE children first, restore seeded rows, reset sequences."""
        try:
            ordered = self.plan(written)
            statements = [f"DELETE FROM {self.names[oid]}" for oid in ordered]
        except _Cycle:  # tables referencing each other: only TRUNCATE empties them in one go
            ordered = sorted(self.plan_cycle(written))
            statements = [f"TRUNCATE {', '.join(self.names[o] for o in ordered)}"]
        for oid in ordered:
            for seq, last_value, is_called in self.sequences.get(oid, ()):
                literal = "'" + seq.replace("'", "''") + "'"
                statements.append(f"SELECT setval({literal}, {last_value}, {'true' if is_called else 'false'})")
        return ";\n".join(statements)

    def plan_cycle(self, written: set[int]) -> set[int]:
        targets: set[int] = set()
        stack = list(written)
        while stack:
            oid = stack.pop()
            if oid not in targets:
                targets.add(oid)
                stack.extend(self.children.get(oid, ()))
        return targets

    async def empty(self, raw: Any, tracker: WriteTracker) -> list[str]:
        """Empty what the test wrote, in one transaction; returns the tables emptied."""
        written = set(self.names) if tracker.unknown else await self.resolve(raw, tracker.tables)
        if not written:
            return []
        sql = self.cleanup_sql(written)
        touched = self.plan_cycle(written)
        async with raw.transaction():
            await raw.execute(sql)
            for oid in sorted(touched & set(self.seeded)):
                schema, table = self.parts[oid]
                await raw.copy_to_table(table, schema_name=schema, source=io.BytesIO(self.seeded[oid]), format="binary")
        return [self.names[o] for o in sorted(touched)]


class _Cycle(Exception):
    pass


# --- Redis ---------------------------------------------------------------------------------------------


async def flush_test_index(client: Redis, index: int, dev_index: int, owner: str) -> None:
    """FLUSHDB on the test index, after checking the client really is on it, it is not the dev index, and
    no other run's stamp is on it (leases.flush_owned_index: the stamp is set again in the same step).

    Never FLUSHALL: other indexes hold other workers' and other people's data.
    """
    from pytest_dashtam.leases import flush_owned_index

    raise_for([v for v in (check_redis_index(index, dev_index),) if v is not None])
    actual = int(client.connection_pool.connection_kwargs.get("db", 0) or 0)
    if actual != index:
        raise SafetyError(
            f"refusing FLUSHDB: the Redis client is on index {actual}, the test index is {index}; "
            "do not change the client's database inside a test"
        )
    await flush_owned_index(client, index, owner)


# --- the app's dependencies -------------------------------------------------------------------------------


@contextlib.contextmanager
def dependency_overrides(app: Any, overrides: Mapping[Any, Callable[..., Any]]) -> Iterator[None]:
    """`app.dependency_overrides` with `overrides` added for a while, then exactly as it was (an override the
    user's own code had set for one of these dependencies included)."""
    missing = object()
    saved = {dep: app.dependency_overrides.get(dep, missing) for dep in overrides}
    app.dependency_overrides.update(overrides)
    try:
        yield
    finally:
        for dep, value in saved.items():
            if value is missing:
                app.dependency_overrides.pop(dep, None)
            else:
                app.dependency_overrides[dep] = value
