"""`--dashtam-keep-failed`: what a failed test left in its database, kept under a name of its own.

pgtestdb keeps a failed test's database and prints its connection string. Here a test's writes live in its
open outer transaction, which is rolled back after it, so they are copied out first: a database of its own
is made from the template (nothing ever connects to the template, so `CREATE DATABASE ... TEMPLATE` can copy
it), emptied, and filled from the test's own connection, inside the test's transaction (`COPY ... TO STDOUT`
there sees what the test wrote, committed or not), every table after the tables its foreign keys reference,
with the sequences set where the test left them. A real-commit test's rows are copied the same way from a
fresh connection, before the cleaner empties the tables. The kept database carries the kept stamp
(schema/kept.py), which no stale cleanup drops; `dashtam-env kept` lists and removes them. Redis is not
copied: the names of the keys the test left are reported before the flush.

Nothing here may change a test's outcome or what the next test starts from: a copy that fails is one line in
the report, and the rollback, the emptying and the flush happen after it whatever it did.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import shlex
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pytest_dashtam.errors import ConfigError
from pytest_dashtam.urls import mask_url, mask_urls_in

if TYPE_CHECKING:
    from pytest_dashtam.isolation.sessions import IsolatedSession
    from pytest_dashtam.run import DashtamRun, Prepared

H = TypeVar("H", bound=Hashable)

_MAX_IDENTIFIER = 63
REDIS_KEYS_SHOWN = 20
# Names read to pick the first REDIS_KEYS_SHOWN from, in order (the count itself comes from DBSIZE).
_REDIS_KEYS_READ = 1000
_TABLES_SHOWN = 10


# --- names, order, lines: plain functions ---------------------------------------------------------------


def kept_database_name(database: str, base: str, test: str, salt: str) -> str:
    """`<database>_kept_<8 hex>`: the worker's database, then a digest of the test's id and `salt` (the run's
    owner id and a count: one name per failure, even for a test run twice).

    When PostgreSQL would truncate it, the run's base test database name stands in for the worker's (its
    template's name already fits, and that suffix is longer). Either way the name contains the test database's
    name, so it passes the safety gate's naming rule, and `dashtam-env kept` finds it by that prefix.
    """
    digest = hashlib.blake2b(f"{test}\0{salt}".encode(), digest_size=4).hexdigest()
    name = ""
    for stem in (database, base):
        name = f"{stem}_kept_{digest}"
        if len(name.encode()) <= _MAX_IDENTIFIER:
            return name
    raise ConfigError(
        f"the kept database name {name!r} is longer than PostgreSQL's {_MAX_IDENTIFIER} bytes; "
        f"shorten the test database name {base!r}"
    )


def copy_order(tables: Sequence[H], parents: Mapping[H, Iterable[H]]) -> list[H]:
    """`tables`, each after the tables its foreign keys reference (`parents`), else in the order given.

    A self-reference needs no order (the rows of one COPY are checked at its end). A cycle has none: it is
    broken where it is first met, and its rows load where the checks are off (a superuser's copy), else the
    copy fails naming the constraint. References to tables not in `tables` are ignored.
    """
    wanted = set(tables)
    ordered: list[H] = []
    seen: set[H] = set()

    def visit(table: H) -> None:
        if table in seen:
            return
        seen.add(table)
        for parent in parents.get(table, ()):
            if parent in wanted and parent != table:
                visit(parent)
        ordered.append(table)

    for table in tables:
        visit(table)
    return ordered


def rows_summary(rows: Mapping[str, int]) -> str:
    """`items 2 rows, tags 1 row`: the tables that hold rows (the first few), or `no rows`."""
    held = [(t, n) for t, n in rows.items() if n]
    if not held:
        return "no rows"
    parts = [f"{t} {n} row{'' if n == 1 else 's'}" for t, n in held[:_TABLES_SHOWN]]
    more = f" and {len(held) - _TABLES_SHOWN} more tables" if len(held) > _TABLES_SHOWN else ""
    return ", ".join(parts) + more


def redis_keys_line(index: int, names: Sequence[str], total: int) -> str:
    """The report line about the Redis keys a failed test left: how many, the first REDIS_KEYS_SHOWN by name."""
    if total <= 0:
        return f"dashtam: it left no Redis keys in index {index}"
    shown = [n if n.isprintable() else repr(n) for n in sorted(names)[:REDIS_KEYS_SHOWN]]
    more = total - len(shown)
    word = "key" if total == 1 else "keys"
    tail = f", ... and {more} more" if more > 0 else ""
    return f"dashtam: it left {total} Redis {word} in index {index} (flushed since): {', '.join(shown)}{tail}"


def psql_line(admin_url: str, name: str) -> str:
    """`psql postgresql://user:***@host:port/<name>`: the kept database's URL, password masked."""
    from pytest_dashtam.schema import database_url

    url = mask_url(database_url(admin_url, name, driver="postgresql"))
    return f"psql {shlex.quote(url) if any(c in url for c in '?&;') else url}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return mask_urls_in(text[0] if text else type(exc).__name__)


def _could_not_keep(exc: BaseException) -> str:
    return f"dashtam: could not keep the failed test's database: {_one_line(exc)}"


# --- copying a database as a connection sees it -----------------------------------------------------------

# Tables and partitioned tables outside the system schemas (pg_toast, pg_temp_N: `pg\_%`), partitions left
# to their parent; the columns COPY can write (not generated ones).
_TABLES_SQL = r"""
SELECT c.oid, n.nspname, c.relname, c.relkind = 'r' AS plain,
       array(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
             AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum) AS columns
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
  AND NOT c.relispartition
ORDER BY n.nspname, c.relname
"""
_FKEYS_SQL = "SELECT conrelid, confrelid FROM pg_constraint WHERE contype = 'f'"
_TRIGGERED_SQL = "SELECT DISTINCT tgrelid FROM pg_trigger WHERE NOT tgisinternal"
_SEQUENCES_SQL = r"""
SELECT format('%I.%I', n.nspname, c.relname) AS name
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'S' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
ORDER BY 1
"""


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class _Table:
    schema: str
    table: str
    plain: bool  # a plain table: its inheritance children are tables of their own (SELECT ... FROM ONLY)
    columns: tuple[str, ...]

    @property
    def qualified(self) -> str:
        return f"{_ident(self.schema)}.{_ident(self.table)}"

    @property
    def shown(self) -> str:
        return self.table if self.schema == "public" else f"{self.schema}.{self.table}"


async def _checks_off(conn: Any) -> bool:
    """Foreign-key checks and the project's triggers off until the copy commits, where the role may
    (`session_replication_role`, a superuser's): triggers then cannot rewrite the copied rows, and a cycle
    of foreign keys loads. Elsewhere the copy order alone keeps the foreign keys satisfied."""
    import asyncpg

    try:
        async with conn.transaction():  # a savepoint: a refusal leaves the copy's transaction usable
            await conn.execute("SET LOCAL session_replication_role = replica")
    except asyncpg.InsufficientPrivilegeError:
        return False
    return True


async def _pause_triggers(conn: Any, tables: Iterable[_Table]) -> list[_Table]:
    """Without `_checks_off`: the project's triggers off on these tables until the copy is done, where the
    role owns them (`ALTER TABLE ... DISABLE TRIGGER USER`), so a trigger does not write again what is copied."""
    import asyncpg

    paused: list[_Table] = []
    for table in tables:
        try:
            async with conn.transaction():
                await conn.execute(f"ALTER TABLE {table.qualified} DISABLE TRIGGER USER")
        except asyncpg.InsufficientPrivilegeError:
            continue
        paused.append(table)
    return paused


async def copy_state(source: Any, target: Any) -> dict[str, int]:
    """Every table's rows and every sequence's position as `source` (the test's asyncpg connection, inside
    its transaction) sees them, into `target` (a fresh copy of the template); returns the rows per table."""
    tables: dict[int, _Table] = {
        r["oid"]: _Table(r["nspname"], r["relname"], r["plain"], tuple(r["columns"]))
        for r in await source.fetch(_TABLES_SQL)
    }
    parents: dict[int, set[int]] = {}
    for r in await source.fetch(_FKEYS_SQL):
        parents.setdefault(r["conrelid"], set()).add(r["confrelid"])
    sequences = [
        (r["name"], await source.fetchrow(f"SELECT last_value, is_called FROM {r['name']}"))
        for r in await source.fetch(_SEQUENCES_SQL)
    ]
    rows: dict[str, int] = {}
    async with target.transaction():
        paused: list[_Table] = []
        if not await _checks_off(target):
            triggered = {r["tgrelid"] for r in await target.fetch(_TRIGGERED_SQL)}  # the same oids: one template
            paused = await _pause_triggers(target, [t for oid, t in tables.items() if oid in triggered])
        if tables:  # the template's own rows (data migrations) go: the test's view of them comes back below
            await target.execute("TRUNCATE " + ", ".join(t.qualified for t in tables.values()))
        for oid in copy_order(list(tables), parents):
            table = tables[oid]
            if not table.columns:
                continue
            columns = ", ".join(_ident(c) for c in table.columns)
            buffer = io.BytesIO()
            status = await source.copy_from_query(
                f"SELECT {columns} FROM {'ONLY ' if table.plain else ''}{table.qualified}", output=buffer
            )
            count = int(str(status).rsplit(" ", 1)[-1] or 0)
            rows[table.shown] = count
            if count:
                await target.copy_to_table(
                    table.table,
                    schema_name=table.schema,
                    columns=list(table.columns),
                    source=io.BytesIO(buffer.getvalue()),
                )
        for name, state in sequences:
            await target.execute("SELECT setval($1::regclass, $2, $3)", name, state["last_value"], state["is_called"])
        for table in paused:
            await target.execute(f"ALTER TABLE {table.qualified} ENABLE TRIGGER USER")
    return rows


# --- the keeper: one per process, fed by the fixtures' teardown ------------------------------------------


@dataclass
class Keeper:
    """Keeps failed tests' databases on this process's stack and collects their report lines.

    `kept` holds one JSON-able record per kept database (name, test, psql line, note), for the run's
    summary (an xdist worker hands it to the controller).
    """

    admin_url: str
    database: str  # this process's test database
    base: str  # the run's test database name
    template: str
    owner: str
    dev_database: str
    # The backend whose stack this run started and stops at its end ("" when the stack outlives the run).
    throw_away: str = ""
    kept: list[dict[str, str]] = field(default_factory=list)
    _pending: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    _count: int = 0

    @classmethod
    def for_run(cls, run: DashtamRun, prepared: Prepared) -> Keeper:
        stack = prepared.stack
        return cls(
            admin_url=stack.postgres_url,
            database=prepared.database,
            base=run.config.test_database,
            template=prepared.template,
            owner=run.owner,
            dev_database=run.config.dev_database,
            throw_away=stack.backend if stack.started and stack.owns_servers and not run.config.keep else "",
        )

    def _lines(self, test: str, part: str) -> list[str]:
        return self._pending.setdefault(test, {}).setdefault(part, [])

    def report_lines(self, test: str, *, shown: bool = True) -> list[str]:
        """What the test's report ends with (its database, its Redis keys, the psql line last); once.

        `shown=False`: the report will not show them (pytest shows no teardown section under an error in
        setup), so the run's summary does (`unshown` in the test's kept records).
        """
        pending = self._pending.pop(test, {})
        lines = [*pending.get("database", ()), *pending.get("redis", ()), *pending.get("psql", ())]
        for record in self.kept if not shown else ():
            if record["test"] == test:
                record["unshown"] = "\n".join(lines)
        return lines

    async def keep_session(self, test: str, isolated: IsolatedSession) -> None:
        """A rollback-mode test's state, from its own connection, before its transaction is rolled back."""
        if isolated.connection is None:  # a real-commit session: kept before the tables are emptied
            return
        try:
            raw = (await isolated.connection.get_raw_connection()).driver_connection
        except Exception as exc:
            self._lines(test, "database").append(_could_not_keep(exc))
            return
        await self.keep_database(test, raw, recover=isolated.session.rollback)

    async def keep_database(
        self, test: str, source: Any, *, recover: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Copy what `source` (an asyncpg connection to the test database) sees into a kept database.

        `recover`: how to make a failed transaction usable again (the session's rollback, to its last commit).
        """
        lines = self._lines(test, "database")
        try:
            name, rows, note = await self._keep(test, source, recover)
        except Exception as exc:
            lines.append(_could_not_keep(exc))
            return
        psql = psql_line(self.admin_url, name)
        lines.append(f"dashtam: kept what this failed test left in its database as {name}: {rows_summary(rows)}")
        if note:
            lines.append(f"dashtam: {note}")
        stack_note = ""
        if self.throw_away:
            stack_note = (
                f"the {self.throw_away} stack this run started is stopped at its end, and the kept databases with "
                "it: run with --dashtam-keep to look at them after the run"
            )
            lines.append(f"dashtam: {stack_note}")
        self._lines(test, "psql").append(f"dashtam: {psql}")
        self.kept.append({"name": name, "test": test, "psql": psql, "note": stack_note})

    async def _keep(
        self, test: str, source: Any, recover: Callable[[], Awaitable[None]] | None
    ) -> tuple[str, dict[str, int], str]:
        import asyncpg

        from pytest_dashtam import schema
        from pytest_dashtam.urls import libpq_url

        note = ""
        try:
            await source.fetchval("SELECT 1")
        except asyncpg.InFailedSQLTransactionError:
            if recover is None:
                raise
            await recover()
            note = "its transaction had failed: what it wrote after its last commit was rolled back, not kept"
        self._count += 1
        name = kept_database_name(self.database, self.base, test, f"{self.owner}:{self._count}")
        await schema.create_kept_database(
            self.admin_url, name, template=self.template, test=test, dev_database=self.dev_database
        )
        try:
            target = await asyncpg.connect(
                libpq_url(schema.database_url(self.admin_url, name)),
                timeout=10,
                server_settings={"application_name": "pytest-dashtam-keep"},
            )
            try:
                rows = await copy_state(source, target)
            finally:
                await target.close()
        except BaseException:
            # Half a copy would mislead more than none: the line says what failed instead.
            with contextlib.suppress(Exception):
                await schema.drop_kept_database(self.admin_url, name, dev_database=self.dev_database)
            raise
        return name, rows, note

    async def note_redis(self, test: str, client: Any, index: int) -> None:
        """The names of the keys a failed test left in its Redis index (before the flush), for its report."""
        from pytest_dashtam.leases import REDIS_STAMP_KEY

        try:
            names: list[str] = []
            async for key in client.scan_iter(count=500):
                name = key.decode(errors="backslashreplace") if isinstance(key, bytes) else str(key)
                if name != REDIS_STAMP_KEY:
                    names.append(name)
                if len(names) >= _REDIS_KEYS_READ:
                    break
            total = int(await client.dbsize()) - int(await client.exists(REDIS_STAMP_KEY))
        except Exception as exc:
            line = f"dashtam: could not list the Redis keys the failed test left in index {index}: {_one_line(exc)}"
        else:
            line = redis_keys_line(index, names, total)
        self._lines(test, "redis").append(line)
