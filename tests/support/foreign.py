"""Someone else's data on the shared servers, planted by a test and checksummed before and after a run.

The servers the plugin tests use are shared (the machine's own, other checkouts' runs): a test plants data
of its own under names nobody else uses, counts it as foreign (the run under test must not own it), and
compares a checksum of it, of the machine's pre-existing databases and of the planted Redis index after
the run. Nothing here depends on being alone on the servers.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
import redis

# Databases every machine of this kind has, which the plugin must never touch.
MACHINE_DATABASES = ("postgres", "test", "root")
LEASE_PREFIX = "pytest-dashtam-lease-"


def unique_name(stem: str) -> str:
    """A database base name no other test or run uses: `<stem>_<hex>_test`."""
    return f"{stem}_{secrets.token_hex(3)}_test"


@dataclass
class Foreign:
    """Foreign databases and one foreign Redis index planted on the shared servers."""

    postgres_url: str
    redis_url: str
    databases: list[str] = field(default_factory=list)
    redis_index: int | None = None
    # This planting's own key prefix: another test (another worker, another checkout) may pick the same free
    # index at the same moment and plant its own keys there, so only these are checked and cleaned up.
    tag: str = field(default_factory=lambda: secrets.token_hex(4))

    def admin(self) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(self.postgres_url, autocommit=True)

    def plant_database(self, name: str, rows: int = 3, *, table: str = "entries") -> None:
        """An unstamped database `name` holding a table of someone else's rows."""
        with self.admin() as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        with psycopg.connect(self.postgres_url, dbname=name, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {table} (id serial PRIMARY KEY, title text)")
            for i in range(rows):
                conn.execute(f"INSERT INTO {table} (title) VALUES (%s)", (f"someone else's row {i}",))

    def redis(self, index: int) -> redis.Redis:
        return redis.Redis.from_url(f"{self.redis_url.rstrip('/')}/{index}", decode_responses=True)

    def free_index(self, start: int = 1, *, avoid: tuple[int, ...] = ()) -> int:
        """An index that is empty and leased by no run right now (other runs may be using the rest)."""
        leased = {
            int(c.get("db", -1)) for c in self.redis(0).client_list() if str(c.get("name", "")).startswith(LEASE_PREFIX)
        }
        databases = int(str(self.redis(0).config_get("databases")["databases"]))
        for index in range(start, databases):
            if index in avoid or index in leased:
                continue
            if self.redis(index).dbsize() == 0:
                return index
        raise AssertionError("no free Redis index on the shared server for the foreign data")

    def plant_redis(self, index: int, keys: int = 50) -> None:
        """`keys` keys of someone else's in index `index` (found empty and unleased; another test may plant its
        own there too at the same moment, which makes it no less foreign to the run under test)."""
        self.redis_index = index
        client = self.redis(index)
        for i in range(keys):
            client.set(f"someone:{self.tag}:{i}", f"value {i}")

    def checksum(self) -> dict[str, Any]:
        """What the run must leave exactly as it was."""
        result: dict[str, Any] = {}
        with self.admin() as admin:
            rows = admin.execute(
                "SELECT datname, oid, shobj_description(oid, 'pg_database') FROM pg_database "
                "WHERE datname = ANY(%s) ORDER BY datname",
                (list(MACHINE_DATABASES) + self.databases,),
            ).fetchall()
        result["databases"] = [tuple(r) for r in rows]
        for name in self.databases:
            result[f"db:{name}"] = database_digest(self.postgres_url, name)
        if self.redis_index is not None:
            client = self.redis(self.redis_index)
            result["redis"] = sorted((k, client.get(k)) for k in client.keys(f"someone:{self.tag}:*"))
        return result

    def cleanup(self) -> None:
        with self.admin() as admin:
            for name in self.databases:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if self.redis_index is not None:
            client = self.redis(self.redis_index)
            keys = client.keys(f"someone:{self.tag}:*")
            if keys:
                client.delete(*keys)


@dataclass(frozen=True)
class Digest:
    """A database's dump as a digest, with the dump's size: the digest tells whether the data changed, the
    size how many bytes a change may concern (`changed_bytes`), which a digest alone cannot."""

    hex: str
    size: int  # every byte the digest was fed


def database_digest(postgres_url: str, name: str) -> Digest:
    """A digest of every table's rows in database `name` (schema, table and ordered row text), with the size
    of that text."""
    digest = hashlib.sha256()
    size = 0
    with psycopg.connect(postgres_url, dbname=name, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') "
            "ORDER BY 1, 2"
        ).fetchall()
        for schema, table in tables:
            chunks = [f"{schema}.{table}\n".encode()]
            for row in conn.execute(f'SELECT t::text FROM "{schema}"."{table}" t ORDER BY 1').fetchall():
                chunks.append(f"{row[0]}\n".encode())
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
    return Digest(digest.hexdigest(), size)


def changed_bytes(before: Mapping[str, Any], after: Mapping[str, Any]) -> int:
    """How many bytes of the checksummed data differ between two `checksum()` results: 0 exactly when they are
    equal, otherwise an upper bound (a count that can only overstate a change, never hide one).

    A digest says that a database's dump changed, not where: all of that dump counts, before and after. A list
    part (pg_database rows, Redis keys with their values) counts the entries found on one side only, each as
    the line a dump would write (its fields tab-separated, then a newline), so a changed value counts as its
    old entry plus its new one. A part found on one side only counts whole; one that differs otherwise (the
    same entries in another order) counts whole on both sides, and one with no bytes to count (an empty part
    against a missing one, an empty database's dump against none) counts 1, so that 0 still means equal.
    """
    return sum(_part_changed(before.get(key), after.get(key)) for key in before.keys() | after.keys())


def _part_changed(old: Any, new: Any) -> int:
    if old == new:
        return 0
    if isinstance(old, Digest) or isinstance(new, Digest):
        counted = sum(part.size for part in (old, new) if isinstance(part, Digest))
    else:
        lines_old, lines_new = Counter(_lines(old)), Counter(_lines(new))
        differing = (lines_old - lines_new) + (lines_new - lines_old)
        counted = sum(len(line) * n for line, n in differing.items())
        counted = counted or sum(len(line) for line in [*_lines(old), *_lines(new)])
    return counted or 1


def _lines(part: Any) -> list[bytes]:
    entries = [] if part is None else list(part) if isinstance(part, list | tuple) else [part]
    return [("\t".join(map(str, e)) if isinstance(e, list | tuple) else str(e)).encode() + b"\n" for e in entries]


def databases_like(postgres_url: str, prefix: str) -> set[str]:
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        rows = admin.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,)).fetchall()
    return {r[0] for r in rows}


@contextmanager
def foreign_data(postgres_url: str, redis_url: str) -> Iterator[Foreign]:
    foreign = Foreign(postgres_url, redis_url)
    try:
        yield foreign
    finally:
        foreign.cleanup()
