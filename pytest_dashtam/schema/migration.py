"""Migrating one database: `alembic upgrade head` in a child process (`python -m pytest_dashtam._migrate`).

The child can reach that database and nothing else, whatever the application's env.py reads (see
`migrate`). `_populate` fills a new template (empty, or a clone of an older template whose chain the
new one extends: Alembic then runs the new revisions only): the migrations checked to end at the chain's
head, or `metadata.create_all` without Alembic.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pytest_dashtam._migrate import EXIT_REFUSED, INI_VAR, REFUSAL_FIX, URL_VAR
from pytest_dashtam.errors import SchemaError
from pytest_dashtam.schema.hashing import _alembic_config
from pytest_dashtam.urls import mask_url

if TYPE_CHECKING:
    from sqlalchemy import MetaData
    from sqlalchemy.engine import URL, Connection


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
    url: str,
    *,
    alembic_ini: str | None,
    head: str | None,
    metadata: MetaData | None,
    name: str,
    env: Mapping[str, str] | None,
) -> None:
    if alembic_ini:
        await migrate(url, alembic_ini, env=env)
        current = await _run_on(url, _current_heads)
        if tuple(current) != (head,):
            raise SchemaError(
                f"after alembic upgrade head, {name!r} is at {current or 'no revision'} instead of {head!r}; "
                "check that env.py migrates the database given in sqlalchemy.url (or DATABASE_URL)"
            )
    elif metadata is not None:
        await _run_on(url, metadata.create_all)
