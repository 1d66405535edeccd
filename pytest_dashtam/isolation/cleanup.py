"""After a real-commit test: which tables it wrote, and emptying them back to the fresh clone's state.

TRUNCATE of 15 small tables costs 50-100 ms, DELETE of the same rows in one transaction about 6 ms: after a
real-commit test only the tables it wrote (and the tables referencing them) are emptied, with DELETE, and
their sequences are put back where the clone had them.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.engine.interfaces import DBAPICursor, ExecutionContext
    from sqlalchemy.ext.asyncio import AsyncEngine

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
