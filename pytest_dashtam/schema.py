"""The test schema: a template database built once per schema hash, cloned for every test database.

Building the schema with `alembic upgrade head` costs hundreds of milliseconds to seconds; cloning a built
database with `CREATE DATABASE ... TEMPLATE` costs a few. So the template `<test_db>_tpl_<hash>` is kept on
the server across runs while the hash of its inputs (the Alembic scripts, or the metadata's DDL without
Alembic) matches, the way pgtestdb does it in Go, and each run clones fresh test databases from it.

Every DROP DATABASE of a named database goes through `_drop_database`, which runs the name check and the
live ownership check (safety.check_owned_or_absent) immediately before the statement: a database the plugin
did not stamp when it created it is never dropped, whatever it is called. The one other DROP,
`_drop_unfinished`, takes only names of the `pdt_test_new_<16 hex>` form: the name a database has between
its CREATE and its RENAME, which only the plugin ever gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from pytest_dashtam._migrate import EXIT_REFUSED, INI_VAR, REFUSAL_FIX, URL_VAR
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
    from sqlalchemy import MetaData
    from sqlalchemy.engine import URL, Connection

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
# How long a creation waits for another creator of the same database name.
_CREATE_LOCK_SECONDS = 60.0
# The name a database has from its CREATE until its RENAME: only the plugin makes names of this form, so a
# database called so whose creator is gone is a crashed creation, droppable although it carries no stamp.
_UNFINISHED_PREFIX = "pdt_test_new_"
_UNFINISHED_NAME = re.compile(r"pdt_test_new_[0-9a-f]{16}")


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


def _alembic_config(alembic_ini: str) -> Config:
    """The project's Alembic configuration, read in this process only for the script files and heads."""
    from alembic.config import Config

    path = Path(alembic_ini)
    if not path.is_file():
        raise ConfigError(
            f"alembic.ini not found at {alembic_ini!r}; set dashtam_alembic_ini to its path, "
            "or to an empty value to build the schema with metadata.create_all"
        )
    return Config(str(path))


@contextlib.contextmanager
def _sys_path_kept() -> Iterator[None]:
    """Alembic prepends `prepend_sys_path` to sys.path on every ScriptDirectory.from_config: undone after."""
    saved = list(sys.path)
    try:
        yield
    finally:
        sys.path[:] = saved


def _script_locations(alembic_ini: str) -> tuple[Path, list[Path]]:
    """(script directory, version locations) as Alembic itself resolves them from the configuration."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    config = _alembic_config(alembic_ini)
    with _sys_path_kept():
        try:
            script = ScriptDirectory.from_config(config)
        except CommandError as exc:
            raise ConfigError(f"cannot read the Alembic scripts configured in {alembic_ini!r}: {exc}") from exc
        versions = getattr(script, "_version_locations", None) or [Path(script.dir, "versions")]
        return Path(script.dir).resolve(), [Path(p).resolve() for p in versions]


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


# --- building the template -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateResult:
    """The template a run clones from, and what `ensure_template` had to do to get it."""

    name: str
    hash: str
    cache_hit: bool
    stale_dropped: tuple[str, ...]


def _target_url(database_url: str) -> URL:
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    return url.set(drivername="postgresql+asyncpg") if url.drivername == "postgresql" else url


def _app_url(target: URL, declared: str | None) -> URL:
    """`target` with the driver of the application's own DATABASE_URL, so its engine code runs unchanged."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if not declared:
        return target
    try:
        driver = make_url(declared).drivername
    except ArgumentError:
        return target
    return target.set(drivername=driver) if driver.split("+")[0] in ("postgresql", "postgres") else target


def _child_environment(target: URL, alembic_ini: str, env: Mapping[str, str] | None) -> dict[str, str]:
    """The migration process's environment: the run's, with every database URL it carries replaced.

    The parent's sys.path goes along as PYTHONPATH: what env.py could import when it ran inside the test
    process (pytest's rootdir and `pythonpath` entries) it can import in the child too.
    """
    child = dict(os.environ)
    child.update(env or {})
    url = _app_url(target, child.get("DATABASE_URL")).render_as_string(hide_password=False)
    child["DATABASE_URL"] = url
    # pydantic-settings matches variable names in any case: every spelling must name the template.
    child.update({key: url for key in child if key.lower() == "database_url"})
    child[URL_VAR] = target.render_as_string(hide_password=False)
    child[INI_VAR] = os.path.abspath(alembic_ini)
    paths = [p for p in sys.path if p] + [p for p in child.get("PYTHONPATH", "").split(os.pathsep) if p]
    child["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return child


def _masked(text: str, *passwords: str | None) -> str:
    for password in passwords:
        if password:
            text = text.replace(password, "***")
    return text


async def migrate(
    database_url: str,
    alembic_ini: str,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 900.0,  # noqa: ASYNC109 - bounds the child process, which is killed when it runs out
) -> None:
    """`alembic upgrade head` into that database (the plugin's template; the CLI's dev database).

    The upgrade runs in a child process that can reach that one database and nothing else: a real env.py
    often ignores `sqlalchemy.url` and reads the application's settings, which were built from whatever
    the environment names (another database on a shared server). The child gets DATABASE_URL rewritten to
    the target too, so a settings-reading env.py migrates the right database instead of being refused. A
    process of its own also gives env.py's asyncio.run() a thread without a running loop, and a hung
    migration something to kill. `env` adds to or overrides the process environment (the test env file).
    """
    _alembic_config(alembic_ini)  # the one-line ConfigError for a missing ini, before any process starts
    target = _target_url(database_url)
    shown = mask_url(target.render_as_string(hide_password=False))
    child_env = _child_environment(target, alembic_ini, env)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pytest_dashtam._migrate",
        cwd=os.getcwd(),  # Alembic resolves a relative script_location against it
        env=child_env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        try:
            _, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            raise SchemaError(
                f"alembic upgrade head into {shown} did not finish within {timeout:.0f}s and was stopped; "
                "a migration waits on a lock or env.py hangs (alembic upgrade head on a scratch database shows where)"
            ) from None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode == 0:
        return
    lines = [line.strip() for line in err.decode(errors="replace").splitlines() if line.strip()]
    declared = (env or {}).get("DATABASE_URL", os.environ.get("DATABASE_URL"))
    last = _masked(lines[-1] if lines else "", target.password, _password_of(declared) if declared else None)
    if proc.returncode == EXIT_REFUSED:
        detail = last.split(": ", 1)[1] if ": " in last else last  # the guard's message, without its type
        fix = "" if REFUSAL_FIX in detail else f"; {REFUSAL_FIX}"
        raise SchemaError(
            f"alembic upgrade head into {shown} stopped: env.py tried to reach another database; {detail}{fix}"
        )
    cause = last or f"the migration process exited with code {proc.returncode}"
    raise SchemaError(
        f"alembic upgrade head into {shown} failed: {cause}; "
        "fix the migration (alembic upgrade head on a scratch database shows the full traceback)"
    )


def _password_of(url: str) -> str | None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        password = make_url(url).password
    except ArgumentError:
        return None
    return None if password is None else str(password)


def _single_head(alembic_ini: str) -> str:
    from alembic.script import ScriptDirectory

    config = _alembic_config(alembic_ini)
    with _sys_path_kept():  # revision files may import the application's modules through prepend_sys_path
        heads = ScriptDirectory.from_config(config).get_heads()
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


async def _populate(
    url: str, *, alembic_ini: str | None, metadata: MetaData | None, name: str, env: Mapping[str, str] | None
) -> None:
    if alembic_ini:
        head = _single_head(alembic_ini)
        await migrate(url, alembic_ini, env=env)
        current = await _run_on(url, _current_heads)
        if tuple(current) != (head,):
            raise SchemaError(
                f"after alembic upgrade head, {name!r} is at {current or 'no revision'} instead of {head!r}; "
                "check that env.py migrates the database given in sqlalchemy.url (or DATABASE_URL)"
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
    env: Mapping[str, str] | None = None,
) -> TemplateResult:
    """The template for the current schema hash: reused when built and stamped, else built now.

    Holds an advisory lock for the whole check-build-cleanup so that xdist workers and concurrent runs
    build it once. `owner_tuning` says the server is ours and already tuned server-wide; otherwise the template
    alone gets `synchronous_commit = off` (a per-database setting, safe on a shared server) for a faster build.
    Stale templates of `test_db` (other hashes, carrying our stamp) are dropped; one still in use is left.
    `env` is handed to `migrate` (the test env file's variables, which the application's settings read).
    """
    hash_ = template_hash(alembic_ini, metadata)
    name = template_name(test_db, hash_)
    raise_for([v for v in (check_test_name(test_db, dev_database or ""),) if v is not None])
    ready_stamp = ownership_comment(ROLE_TEMPLATE, hash_)
    conn = await _connect(admin_url)
    try:
        await reclaim_unfinished(conn)
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
                    await _populate(url, alembic_ini=alembic_ini, metadata=metadata, name=name, env=env)
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
