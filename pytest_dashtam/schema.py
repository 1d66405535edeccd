"""The test schema: a template database built once per schema hash, cloned for every test database.

Building the schema with `alembic upgrade head` costs hundreds of milliseconds to seconds; cloning a built
database with `CREATE DATABASE ... TEMPLATE` costs a few. So the template `<test_db>_tpl_<hash>` is kept on
the server across runs while the hash of its inputs (the Alembic scripts, or the metadata's DDL without
Alembic) matches, the way pgtestdb does it in Go, and each run clones fresh test databases from it.

Every DROP DATABASE in this module goes through `_drop_database`, which runs the name check and the live
ownership check (safety.check_owned_or_absent) immediately before the statement: a database the plugin did
not stamp when it created it is never dropped, whatever it is called.
"""

from __future__ import annotations

import asyncio
import configparser
import hashlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from pytest_dashtam.errors import BackendError, ConfigError, SafetyError, SchemaError
from pytest_dashtam.safety import (
    check_owned_or_absent,
    check_test_name,
    database_comment,
    is_owned_comment,
    ownership_comment,
    raise_for,
)
from pytest_dashtam.urls import mask_url

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy import MetaData
    from sqlalchemy.engine import Connection

# Bump when the way a template is built changes, so templates built by an older plugin are rebuilt.
_BUILD_VERSION = b"pytest-dashtam template v1\n"
# PostgreSQL truncates identifiers beyond 63 bytes: a truncated template name would never match again.
_MAX_IDENTIFIER = 63
# Roles in the ownership stamp (`pytest-dashtam:<role>:<tag>`).
ROLE_TEMPLATE = "template"
ROLE_BUILDING = "template-building"
ROLE_TEST = "test"
# How long a CREATE DATABASE ... TEMPLATE is retried while the template is briefly in use.
_CLONE_RETRY_SECONDS = 10.0
_CONNECT_TIMEOUT = 10.0


# --- names and URLs ---------------------------------------------------------------------------------


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


# --- the hash ------------------------------------------------------------------------------------------


def _alembic_config(alembic_ini: str, url: str | None = None) -> Config:
    from alembic.config import Config

    path = Path(alembic_ini)
    if not path.is_file():
        raise ConfigError(
            f"alembic.ini not found at {alembic_ini!r}; set dashtam_alembic_ini to its path, "
            "or to an empty value to build the schema with metadata.create_all"
        )
    config = Config(str(path))
    # The application's env.py must not reconfigure the test runner's logging.
    config.attributes["configure_logger"] = False
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # ConfigParser interpolation
    return config


def _script_directory(alembic_ini: str) -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config(alembic_ini))


def _script_locations(alembic_ini: str) -> tuple[Path, list[Path]]:
    """(script directory, version locations) read straight from the ini file.

    Reading the ini with configparser instead of importing Alembic keeps the warm path (hash, cache hit)
    about 0.1 s faster; configurations it cannot read (package resources, pyproject-only) go through Alembic.
    """
    ini = Path(alembic_ini)
    if not ini.is_file():
        _alembic_config(alembic_ini)  # raises the one-line ConfigError
    parser = configparser.ConfigParser(defaults={"here": str(ini.resolve().parent)})
    parser.read(ini)
    location = parser.get("alembic", "script_location", fallback="")
    if not location or (":" in location and not Path(location).is_absolute() and not Path(location).exists()):
        script = _script_directory(alembic_ini)
        versions = getattr(script, "_version_locations", None) or [script.versions]
        return Path(script.dir), [Path(p) for p in versions]
    root = Path(location)
    raw = parser.get("alembic", "version_locations", fallback="")
    if not raw:
        return root, [root / "versions"]
    legacy = parser.get("alembic", "version_path_separator", fallback="")
    separator = parser.get("alembic", "path_separator", fallback=legacy)
    if separator == "os":
        parts = raw.split(os.pathsep)
    elif separator in ("space", "newline", ""):
        parts = raw.replace(",", " ").split()
    else:
        parts = raw.split({"colon": ":", "semicolon": ";"}.get(separator, separator))
    return root, [Path(p.strip()) for p in parts if p.strip()]


def _alembic_files(alembic_ini: str) -> list[tuple[str, Path]]:
    """(stable name, path) of every Python file that shapes the migrated schema: env.py and the revisions."""
    root, locations = _script_locations(alembic_ini)
    found: dict[Path, str] = {}
    for base in [root, *locations]:
        for path in base.rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(root) if path.is_relative_to(root) else path.relative_to(base)
            found.setdefault(path.resolve(), rel.as_posix())
    return sorted(((name, path) for path, name in found.items()), key=lambda item: item[0])


def _metadata_ddl(metadata: MetaData) -> str:
    """The CREATE statements `metadata.create_all` would run on PostgreSQL, in order."""
    from sqlalchemy import create_mock_engine

    statements: list[str] = []

    def collect(sql: Any, *_: Any, **__: Any) -> None:
        statements.append(str(sql.compile(dialect=engine.dialect)).strip())

    engine = create_mock_engine("postgresql+asyncpg://", collect)
    metadata.create_all(engine, checkfirst=False)
    return ";\n".join(statements)


def template_hash(alembic_ini: str | None, metadata: MetaData | None) -> str:
    """12 hex characters covering what the template is built from.

    With Alembic: env.py and every revision file's bytes, sorted by path (the metadata is not used to build
    the template then, so it is not hashed: a model edit without a migration leaves the template valid).
    Without Alembic: the metadata's CREATE DDL.
    """
    digest = hashlib.sha256(_BUILD_VERSION)
    if alembic_ini:
        digest.update(b"alembic\n")
        for name, path in _alembic_files(alembic_ini):
            data = path.read_bytes()
            digest.update(f"{name}\0{len(data)}\0".encode())
            digest.update(data)
    elif metadata is not None:
        digest.update(b"metadata\n")
        digest.update(_metadata_ddl(metadata).encode())
    else:
        raise ConfigError(
            "no schema source: set dashtam_alembic_ini to the project's alembic.ini, "
            "or dashtam_metadata to its SQLAlchemy metadata"
        )
    return digest.hexdigest()[:12]


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


@asynccontextmanager
async def _advisory_lock(conn: asyncpg.Connection, scope: str, wait: float) -> AsyncIterator[None]:
    """Serialise template work across xdist workers and concurrent runs on the same server.

    Session-level, so the server releases it if the holder dies; polled so a stuck holder gives an error
    instead of a hang.
    """
    key = _lock_key(f"pytest-dashtam:{scope}")
    deadline = time.monotonic() + wait
    while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
        if time.monotonic() > deadline:
            raise SchemaError(
                f"waited {wait:.0f}s for another pytest-dashtam process building the template for {scope!r}; "
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


async def _drop_database(conn: asyncpg.Connection, name: str, *, dev_database: str | None, force: bool) -> bool:
    """The only DROP DATABASE in the plugin: runs the checks first, then drops. False if it was absent.

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
        suffix = " WITH (FORCE)" if conn.get_server_version().major >= 13 else ""
    else:
        suffix = ""
    await conn.execute(f"DROP DATABASE IF EXISTS {_ident(name)}{suffix}")
    return True


async def _create_database(conn: asyncpg.Connection, name: str, *, template: str, stamp: str) -> None:
    """CREATE DATABASE from `template`, then the ownership stamp (CREATE DATABASE cannot run in a transaction).

    Retried briefly while the template is in use: PostgreSQL refuses to copy a database anyone is connected to.
    """
    deadline = time.monotonic() + _CLONE_RETRY_SECONDS
    while True:
        try:
            await conn.execute(f"CREATE DATABASE {_ident(name)} TEMPLATE {_ident(template)}")
            break
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
            raise SchemaError(
                f"cannot create database {name!r}: it was created by someone else at the same moment; "
                "two runs are using the same test database name on this server, give each its own"
            ) from exc
    await conn.execute(f"COMMENT ON DATABASE {_ident(name)} IS {_literal(stamp)}")


# --- building the template -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateResult:
    """The template a run clones from, and what `ensure_template` had to do to get it."""

    name: str
    hash: str
    cache_hit: bool
    stale_dropped: tuple[str, ...]


# Alembic's `context` and `op` are module-level proxies: two upgrades in one process at once would share them.
_ALEMBIC_LOCK = threading.Lock()


def _upgrade_in_thread(alembic_ini: str, url: str) -> None:
    from alembic import command

    with _ALEMBIC_LOCK:
        command.upgrade(_alembic_config(alembic_ini, url), "head")


async def migrate(database_url: str, alembic_ini: str) -> None:
    """`alembic upgrade head` into that database (the plugin's template; the CLI's dev database).

    Alembic's async env.py calls asyncio.run() when no connection is handed to it, which fails inside a
    running event loop (pytest-asyncio's, the CLI's): so the upgrade runs in a worker thread with its own
    loop. That also works with env.py files that do not honour `config.attributes["connection"]`.
    """
    url = database_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        await asyncio.to_thread(_upgrade_in_thread, alembic_ini, url)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SchemaError(
            f"alembic upgrade head into {mask_url(url)} failed: {type(exc).__name__}: {first}; "
            "fix the migration (alembic upgrade head on a scratch database shows the full traceback)"
        ) from exc


def _single_head(alembic_ini: str) -> str:
    heads = _script_directory(alembic_ini).get_heads()
    if len(heads) != 1:
        raise SchemaError(
            f"the Alembic scripts have {len(heads)} heads ({', '.join(sorted(heads)) or 'none'}); "
            "the test schema needs exactly one: run `alembic merge heads` (or add a first revision)"
        )
    return heads[0]


async def _run_on(url: str, fn: Callable[[Connection], Any]) -> Any:
    """Run a sync SQLAlchemy function on a NullPool connection to `url`, committed and fully closed after.

    NullPool: nothing may stay connected to a template, or CREATE DATABASE ... TEMPLATE refuses it.
    """
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            result = await connection.run_sync(fn)
            await connection.commit()
            return result
    finally:
        await engine.dispose()


def _current_heads(connection: Connection) -> tuple[str, ...]:
    from alembic.runtime.migration import MigrationContext

    return tuple(MigrationContext.configure(connection).get_current_heads())


async def _populate(url: str, *, alembic_ini: str | None, metadata: MetaData | None, name: str) -> None:
    if alembic_ini:
        head = _single_head(alembic_ini)
        await migrate(url, alembic_ini)
        current = await _run_on(url, _current_heads)
        if tuple(current) != (head,):
            raise SchemaError(
                f"after alembic upgrade head, {name!r} is at {current or 'no revision'} instead of {head!r}; "
                "check that env.py migrates the database given in sqlalchemy.url"
            )
    elif metadata is not None:
        await _run_on(url, metadata.create_all)


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
) -> TemplateResult:
    """The template for the current schema hash: reused when built and stamped, else built now.

    Holds an advisory lock for the whole check-build-cleanup so that xdist workers and concurrent runs
    build it once. `owner_tuning` says the server is ours and already tuned server-wide; otherwise the template
    alone gets `synchronous_commit = off` (a per-database setting, safe on a shared server) for a faster build.
    Stale templates of `test_db` (other hashes, carrying our stamp) are dropped; one still in use is left.
    """
    hash_ = template_hash(alembic_ini, metadata)
    name = template_name(test_db, hash_)
    raise_for([v for v in (check_test_name(test_db, dev_database or ""),) if v is not None])
    ready_stamp = ownership_comment(ROLE_TEMPLATE, hash_)
    conn = await _connect(admin_url)
    try:
        async with _advisory_lock(conn, f"template:{test_db}", lock_timeout):
            exists, comment = await database_comment(conn, name)
            cache_hit = exists and comment == ready_stamp and not rebuild
            if not cache_hit:
                if alembic_ini:
                    _single_head(alembic_ini)  # only when building: the hash covers the scripts
                if exists:  # a rebuild, or a build that died half-way: refused unless stamped
                    await _drop_database(conn, name, dev_database=dev_database, force=True)
                await _create_database(conn, name, template="template0", stamp=ownership_comment(ROLE_BUILDING, hash_))
                if not owner_tuning:
                    # Per-database, so safe on a shared server; migrations commit faster. Not copied to clones.
                    await conn.execute(f"ALTER DATABASE {_ident(name)} SET synchronous_commit = off")
                url = database_url(admin_url, name)
                try:
                    await _populate(url, alembic_ini=alembic_ini, metadata=metadata, name=name)
                except BaseException:
                    await _drop_database(conn, name, dev_database=dev_database, force=True)
                    raise
                # No connections to a template from now on: a stray one would make every clone fail.
                await conn.execute(f"ALTER DATABASE {_ident(name)} WITH ALLOW_CONNECTIONS false")
                # An env.py that does not dispose its engine leaves connections behind; they are ours to end.
                await _terminate_connections(conn, name)
                await conn.execute(f"COMMENT ON DATABASE {_ident(name)} IS {_literal(ready_stamp)}")
            stale = await _drop_stale(conn, test_db, keep=name, dev_database=dev_database)
    finally:
        await conn.close()
    return TemplateResult(name=name, hash=hash_, cache_hit=cache_hit, stale_dropped=stale)


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
