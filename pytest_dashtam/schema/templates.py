"""The lifecycle of the template and of the test databases cloned from it.

`ensure_template` reuses the template while it is built and stamped for the current hash, else builds it
under an advisory lock (once for all xdist workers and concurrent runs) and drops the stale ones;
`create_test_database` clones a stamped test database from it. Every DROP goes through ddl.py.

A build starts from empty, or, when the migration chain only grew since an older template of ours was built
(chain.py), from a clone of that template: Alembic then runs the new revisions only. The old template is
dropped as stale only after the new one is finished.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg

from pytest_dashtam.errors import SafetyError
from pytest_dashtam.safety import check_test_name, database_comment, is_owned_comment, ownership_comment, raise_for
from pytest_dashtam.schema.chain import Chain, load_chain, parse_ready_stamp, ready_stamp
from pytest_dashtam.schema.ddl import (
    _advisory_lock,
    _connect,
    _create_database,
    _drop_database,
    _terminate_connections,
    reclaim_unfinished,
)
from pytest_dashtam.schema.hashing import template_hash
from pytest_dashtam.schema.migration import _populate
from pytest_dashtam.schema.names import (
    ROLE_BUILDING,
    ROLE_TEMPLATE,
    ROLE_TEST,
    _ident,
    _literal,
    database_url,
    template_name,
)

if TYPE_CHECKING:
    from sqlalchemy import MetaData

# --- building the template -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateResult:
    """The template a run clones from, and what `ensure_template` had to do to get it."""

    name: str
    hash: str
    cache_hit: bool
    stale_dropped: tuple[str, ...]
    extended_from: str | None = None  # the older template this one was cloned from (the chain only grew)
    revisions_run: int = 0  # the Alembic revisions this build ran (all of them from empty, the new ones else)

    def describe(self) -> str:
        """What the report says about it: `cache hit`, `cache miss: built`, or built from an older template."""
        if self.cache_hit:
            return "cache hit"
        if self.extended_from is None:
            return "cache miss: built"
        plural = "" if self.revisions_run == 1 else "s"
        return f"cache miss: built from {self.extended_from} + {self.revisions_run} revision{plural}"


async def _templates_of(conn: asyncpg.Connection, test_db: str) -> list[tuple[str, str | None]]:
    """(name, comment) of every database named like a template of `test_db`."""
    prefix = f"{test_db}_tpl_"
    pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    rows = await conn.fetch(
        "SELECT datname, shobj_description(oid, 'pg_database') AS comment FROM pg_database "
        "WHERE datname LIKE $1 ORDER BY datname",
        pattern,
    )
    return [(r["datname"], r["comment"]) for r in rows if r["datname"].startswith(prefix)]


def _is_template_stamp(comment: str | None) -> bool:
    return is_owned_comment(comment) and any(
        (comment or "").startswith(ownership_comment(role, "")) for role in (ROLE_TEMPLATE, ROLE_BUILDING)
    )


async def _extendable(conn: asyncpg.Connection, test_db: str, chain: Chain, *, target: str) -> tuple[str, int] | None:
    """(name, revisions it has) of the finished template of ours whose chain `chain` extends the most, if any.

    Only one this role may copy: PostgreSQL lets the owner (or a superuser) clone a database not marked
    IS_TEMPLATE, so a template another role built on a shared server is no base; the build starts from empty.
    """
    candidates: list[tuple[int, str]] = []
    for other, comment in await _templates_of(conn, test_db):
        stamp = parse_ready_stamp(comment)
        if other == target or stamp is None or stamp[1] is None or other != template_name(test_db, stamp[0]):
            continue
        have = chain.extends(stamp[1])
        if have is not None:
            candidates.append((have, other))
    for have, other in sorted(candidates, reverse=True):
        if await conn.fetchval("SELECT pg_has_role(datdba, 'USAGE') FROM pg_database WHERE datname = $1", other):
            return other, have
    return None


async def ensure_template(
    admin_url: str,
    *,
    test_db: str,
    alembic_ini: str | None,
    metadata: MetaData | None,
    rebuild: bool = False,
    owner_tuning: bool = False,
    dev_database: str | None = None,
    lock_timeout: float = 300.0,
    env: Mapping[str, str] | None = None,
) -> TemplateResult:
    """The template for the current schema hash: reused when built and stamped, else built now.

    Holds an advisory lock for the whole check-build-cleanup so that xdist workers and concurrent runs
    build it once. A build clones the older template of ours whose migration chain the current one extends
    and runs only the new revisions, else (or with `rebuild`) starts from empty. `owner_tuning` says the
    server is ours and already tuned server-wide; otherwise the template alone gets `synchronous_commit = off`
    (a per-database setting, safe on a shared server) for a faster build. Stale templates of `test_db` (other
    hashes, carrying our stamp) are dropped once the new one is finished; one still in use is left.
    `env` is handed to `migrate` (the test env file's variables, which the application's settings read).
    """
    hash_ = template_hash(alembic_ini, metadata)
    name = template_name(test_db, hash_)
    raise_for([v for v in (check_test_name(test_db, dev_database or ""),) if v is not None])
    base: tuple[str, int] | None = None
    chain: Chain | None = None
    conn = await _connect(admin_url)
    try:
        await reclaim_unfinished(conn)
        async with _advisory_lock(conn, f"template:{test_db}", lock_timeout):
            exists, comment = await database_comment(conn, name)
            stamp = parse_ready_stamp(comment) if exists else None
            cache_hit = stamp is not None and stamp[0] == hash_ and not rebuild
            if not cache_hit:
                chain = load_chain(alembic_ini) if alembic_ini else None  # only when building: reads the order
                if chain is not None and not rebuild:
                    base = await _extendable(conn, test_db, chain, target=name)
                if exists:  # a rebuild, or a build that died half-way: refused unless stamped
                    await _drop_database(conn, name, dev_database=dev_database, force=True)
                source = "template0" if base is None else base[0]
                await _create_database(conn, name, template=source, stamp=ownership_comment(ROLE_BUILDING, hash_))
                if not owner_tuning:
                    # Per-database, so safe on a shared server; migrations commit faster. Not copied to clones.
                    await conn.execute(f"ALTER DATABASE {_ident(name)} SET synchronous_commit = off")
                url = database_url(admin_url, name)
                try:
                    await _populate(
                        url,
                        alembic_ini=alembic_ini,
                        head=chain.head if chain is not None else None,
                        metadata=metadata,
                        name=name,
                        env=env,
                    )
                except BaseException:
                    await _drop_database(conn, name, dev_database=dev_database, force=True)
                    raise
                # No connections to a template from now on: a stray one would make every clone fail.
                await conn.execute(f"ALTER DATABASE {_ident(name)} WITH ALLOW_CONNECTIONS false")
                # An env.py that does not dispose its engine leaves connections behind; they are ours to end.
                await _terminate_connections(conn, name)
                await conn.execute(f"COMMENT ON DATABASE {_ident(name)} IS {_literal(ready_stamp(hash_, chain))}")
            stale = await _drop_stale(conn, test_db, keep=name, dev_database=dev_database)
    finally:
        await conn.close()
    ran = 0 if cache_hit or chain is None else len(chain.revisions) - (base[1] if base is not None else 0)
    return TemplateResult(
        name=name,
        hash=hash_,
        cache_hit=cache_hit,
        stale_dropped=stale,
        extended_from=base[0] if base is not None else None,
        revisions_run=ran,
    )


async def _drop_stale(
    conn: asyncpg.Connection, test_db: str, *, keep: str, dev_database: str | None
) -> tuple[str, ...]:
    dropped: list[str] = []
    for other, comment in await _templates_of(conn, test_db):
        if other == keep or not _is_template_stamp(comment):
            continue
        try:
            if await _drop_database(conn, other, dev_database=dev_database, force=False):
                dropped.append(other)
        except asyncpg.ObjectInUseError:
            continue  # another run is cloning from it right now; the next run drops it
    return tuple(dropped)


# How many templates a local test cluster kept as the next runs' seed carries (the newest ones): enough for a
# project's current template and the older ones an incremental build extends, and for a few projects that
# share the cache; every database beyond them would be copied on every start of every later run.
SEED_TEMPLATES = 8


async def prune_for_seed(admin_url: str, *, keep_templates: int = SEED_TEMPLATES) -> tuple[str, ...]:
    """Before a throw-away cluster of ours becomes the next runs' seed: drop what the plugin made in it except
    the `keep_templates` newest finished templates (by creation order, i.e. oid); returns the names dropped.

    The seed starts every later cluster, so whatever it holds is copied on every start: without a bound,
    the templates of every project and test-database name that ever ran here pile up in it. Only databases
    carrying the plugin's stamp are dropped (each through ddl's checks), never one it did not make.
    """
    conn = await _connect(admin_url)
    try:
        rows = await conn.fetch(
            "SELECT datname, shobj_description(oid, 'pg_database') AS comment FROM pg_database ORDER BY oid DESC"
        )
        ours = [(r["datname"], r["comment"]) for r in rows if is_owned_comment(r["comment"])]
        finished = ownership_comment(ROLE_TEMPLATE, "")
        templates = [name for name, comment in ours if (comment or "").startswith(finished)]
        keep = set(templates[: max(keep_templates, 0)])
        dropped: list[str] = []
        for name, _comment in ours:
            if name in keep:
                continue
            with contextlib.suppress(SafetyError, asyncpg.PostgresError):  # left in the seed, as before
                if await _drop_database(conn, name, dev_database=None, force=True):
                    dropped.append(name)
        return tuple(dropped)
    finally:
        await conn.close()


async def drop_templates(admin_url: str, *, test_db: str, dev_database: str | None = None) -> tuple[str, ...]:
    """Drop every template of `test_db` the plugin built (the CLI's test-clean); returns the names dropped."""
    conn = await _connect(admin_url)
    try:
        async with _advisory_lock(conn, f"template:{test_db}", 60.0):
            return await _drop_stale(conn, test_db, keep="", dev_database=dev_database)
    finally:
        await conn.close()


# --- test databases ------------------------------------------------------------------------------------------


async def create_test_database(
    admin_url: str,
    name: str,
    *,
    template: str,
    per_database_tuning: bool,
    dev_database: str | None = None,
) -> None:
    """A fresh `name` cloned from `template`, stamped as ours.

    An existing `name` is dropped first only if it carries our stamp (else SafetyError). With
    `per_database_tuning` (a server we do not own), only `synchronous_commit = off` is set, on this
    database alone: the server-wide fsync / full_page_writes belong to whoever runs the server.
    """
    raise_for([v for v in (check_test_name(name, dev_database or ""),) if v is not None])
    conn = await _connect(admin_url)
    try:
        await reclaim_unfinished(conn)
        await _drop_database(conn, name, dev_database=dev_database, force=True)
        await _create_database(conn, name, template=template, stamp=ownership_comment(ROLE_TEST, template))
        if per_database_tuning:
            await conn.execute(f"ALTER DATABASE {_ident(name)} SET synchronous_commit = off")
    finally:
        await conn.close()


async def drop_test_database(admin_url: str, name: str, *, dev_database: str | None = None) -> None:
    """Drop `name` if it exists and carries our stamp (its connections terminated first); refuse otherwise."""
    conn = await _connect(admin_url)
    try:
        await _drop_database(conn, name, dev_database=dev_database, force=True)
    finally:
        await conn.close()


async def read_tuning(database_url: str) -> dict[str, str]:
    """What took effect on that database (per-database settings included), for the report header."""
    conn = await _connect(database_url)
    try:
        return {
            setting: str(await conn.fetchval(f"SHOW {setting}"))
            for setting in ("fsync", "full_page_writes", "synchronous_commit")
        }
    finally:
        await conn.close()
