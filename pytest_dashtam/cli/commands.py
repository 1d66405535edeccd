"""The commands: `up`, `down`, `status`, `logs` and `reset` of one environment (or, for status, several), and
`kept`: the test stack's databases `--dashtam-keep-failed` kept."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Sequence

from pytest_dashtam.backends import Stack
from pytest_dashtam.cli.apps import app_database_url, app_redis_url, provision_dev, run_apps
from pytest_dashtam.cli.envs import Env, say
from pytest_dashtam.cli.running import choose_backend, find_running, remember_backend
from pytest_dashtam.config import PluginConfig
from pytest_dashtam.errors import BackendError, SafetyError
from pytest_dashtam.isolation import run_async
from pytest_dashtam.urls import mask_url


def _print_stack(stack: Stack, env: Env, *, headline: bool = True, reason: str = "") -> None:
    if headline:
        how = "started" if stack.started else "attached to"
        say(f"{env.name}: {how} {stack.backend} stack" + (f" ({reason})" if reason else ""))
    say(f"  postgres {stack.postgres_version}: {mask_url(app_database_url(stack, env))}")
    say(f"  redis {stack.redis_version}: {app_redis_url(stack, env)}" if stack.has_redis else "  redis: none")
    if stack.tuning:
        say("  tuning: " + ", ".join(f"{k}={v}" for k, v in sorted(stack.tuning.items())))


def cmd_up(env: Env, *, run_app: bool, https: bool = True) -> int:
    backend, reason = choose_backend(env)
    stack = backend.start()
    remember_backend(env, backend.name)
    if env.name == "dev":
        from pytest_dashtam import schema

        run_async(lambda: provision_dev(stack, env))
        alembic_ini = env.config.alembic_ini or env.root / "alembic.ini"
        run_async(lambda: schema.migrate(app_database_url(stack, env), str(alembic_ini)))
        say("dev database migrated to head")
    _print_stack(stack, env, reason=reason)
    if env.name == "dev" and run_app:
        return run_apps(stack, env, https=https)
    return 0


def cmd_down(env: Env) -> int:
    backend, status = find_running(env)
    if status.running:
        backend.down()
    else:
        # Nothing answers: what is left (a dead run's stack) still goes where the backend can reach it; a
        # backend that stops nothing by its nature (external) says so either way.
        with contextlib.suppress(BackendError):
            backend.down()
    say(f"{env.name}: {'stopped' if status.running else 'nothing running'} ({backend.name} backend)")
    remember_backend(env, None)
    return 0


def cmd_status(envs: Sequence[Env]) -> int:
    for env in envs:
        backend, status = find_running(env)
        if not status.running or status.stack is None:
            say(f"{env.name}: not running ({backend.name} backend){': ' + status.detail if status.detail else ''}")
            continue
        since = ""
        if status.since:
            since = " since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status.since))
        say(f"{env.name}: running on the {backend.name} backend{since}")
        _print_stack(status.stack, env, headline=False)
    return 0


def cmd_logs(env: Env, *, lines: int) -> int:
    backend, _status = find_running(env)
    text = backend.logs(lines)
    sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    return 0


def _gate(config: PluginConfig) -> None:
    """The plugin's checks that need no server, before anything starts or connects."""
    from pytest_dashtam import safety

    safety.raise_for(safety.check_config(config))


async def _reset_test(stack: Stack, env: Env, config: PluginConfig) -> str:
    """environment-flows.md's init_test_db: the plugin's gate, then the schema rebuilt from the migrations
    into a fresh test database, and the test Redis index emptied, each only while this command holds its
    lease (a running pytest holds them too: reset refuses then, instead of pulling them from under it)."""
    from redis.asyncio import Redis

    from pytest_dashtam import schema
    from pytest_dashtam.leases import Leases, flush_owned_index

    _gate(config)
    test_db = config.test_database
    owner = f"cli{os.getpid()}"
    leases = Leases(stack.postgres_url, stack.redis_url or None, owner)
    leases.open()
    try:
        database = leases.claim_database(test_db, adopt_unstamped=stack.owns_servers, dev_database=config.dev_database)
        if database != test_db:
            raise SafetyError(
                f"the test database {test_db} is held by a running test run or is not the plugin's; "
                "stop that run (or drop the database yourself if it is disposable) and reset again"
            )
        index = (
            leases.claim_redis_index(config.redis_index, databases=stack.redis_databases, skip=())
            if stack.has_redis
            else config.redis_index
        )
        if index != config.redis_index:
            raise SafetyError(
                f"the test Redis index {config.redis_index} is held by a running test run or holds someone "
                "else's keys; stop that run (or empty the index yourself) and reset again"
            )
        template = await schema.ensure_template(
            stack.postgres_url,
            test_db=test_db,
            alembic_ini=str(config.alembic_ini) if config.alembic_ini else str(env.root / "alembic.ini"),
            metadata=None,
            rebuild=True,
            dev_database=config.dev_database,
        )
        await schema.create_test_database(
            stack.postgres_url,
            test_db,
            template=template.name,
            per_database_tuning=not stack.owns_servers,
            dev_database=config.dev_database,
        )
        if stack.has_redis:
            client = Redis.from_url(f"{stack.redis_url.rstrip('/')}/{index}", client_name=f"pytest-dashtam-{owner}")
            try:
                await flush_owned_index(client, index, owner, release=True)
            finally:
                await client.aclose()
    finally:
        leases.close()
    return test_db


def cmd_reset(env: Env) -> int:
    config = env.config
    _gate(config)
    backend, _reason = choose_backend(env)
    stack = backend.start()
    remember_backend(env, backend.name)
    test_db = run_async(lambda: _reset_test(stack, env, config))
    emptied = f", Redis index {app_redis_url(stack, env)} emptied" if stack.has_redis else ""
    say(f"test: database {test_db} rebuilt from the migrations{emptied}")
    return 0


async def _kept(stack: Stack, config: PluginConfig, remove: Sequence[str], remove_all: bool) -> int:
    from pytest_dashtam import schema
    from pytest_dashtam.isolation.keep import psql_line

    admin, dev = stack.postgres_url, config.dev_database
    if not remove and not remove_all:
        kept = await schema.list_kept_databases(admin, config.test_database)
        plural = "" if len(kept) == 1 else "s"
        say(f"test: {len(kept)} kept database{plural} of {config.test_database} on the {stack.backend} stack")
        for k in kept:
            say(f"  {k.name}: {k.test} (kept {k.when.replace('T', ' ')})")
            say(f"    {psql_line(admin, k.name)}")
        return 0
    names = list(remove)
    if remove_all:
        names += [k.name for k in await schema.list_kept_databases(admin, config.test_database)]
    for name in names:  # each checked for the kept stamp before anything is dropped
        if not await schema.drop_kept_database(admin, name, dev_database=dev):
            raise SafetyError(
                f"there is no database {name!r} on the test stack; `dashtam-env kept` lists the kept ones"
            )
        say(f"test: removed kept database {name}")
    if not names:
        say(f"test: no kept databases of {config.test_database} to remove")
    return 0


def cmd_kept(env: Env, *, remove: Sequence[str] = (), remove_all: bool = False) -> int:
    """List the test stack's kept databases (this project's: named after its test database), or remove them:
    only databases carrying the kept stamp, after the same gate as every other command."""
    config = env.config
    _gate(config)
    backend, status = find_running(env)
    if not status.running or status.stack is None:
        detail = f": {status.detail}" if status.detail else ""
        say(f"test: not running ({backend.name} backend){detail}; kept databases live as long as its stack")
        return 1 if remove or remove_all else 0
    stack = status.stack
    return run_async(lambda: _kept(stack, config, remove, remove_all))
