"""`dashtam-env`: start, stop and inspect the dev and test environments by hand.

It drives the same backends, safety checks and schema code as the pytest plugin, so a stack
brought up here (`up test`) is the one a later `pytest` run attaches to. Exit status: 0 done,
1 a server or backend failed, 2 bad input or a safety refusal (nothing was changed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast, get_args
from urllib.parse import urlsplit

from dotenv import dotenv_values

from pytest_dashtam.backends import (
    Backend,
    BackendChoice,
    BackendName,
    BackendOptions,
    EnvName,
    Stack,
    StackStatus,
    get_backend,
    select_backend,
)
from pytest_dashtam.config import PluginConfig
from pytest_dashtam.errors import BackendError, ConfigError, DashtamError, SafetyError
from pytest_dashtam.urls import mask_url

ENVS: tuple[EnvName, ...] = get_args(EnvName)
BACKEND_CHOICES: tuple[str, ...] = get_args(BackendChoice)

# The dev environment is the CLI's own (the plugin knows only the test one): its files are fixed.
DEV_COMPOSE_FILE = "docker/docker-compose.dev.yml"
DEV_ENV_FILE = "env/.env.dev"
DEV_ENV_EXAMPLE = "env/.env.dev.example"
# Where the CLI remembers which backend runs an environment, so `down` and `status` find it.
CLI_STATE = "cli.json"


class UsageProblem(DashtamError):
    """Bad input to the CLI (exit 2)."""


@dataclass(frozen=True)
class Env:
    """One environment as the CLI sees it: its name, env file and values, and the plugin's configuration.

    The test environment's `config` is exactly what a pytest run in this project resolves (pyproject's
    [tool.pytest.ini_options] / pytest.ini, DASHTAM_* variables, the CLI's own flags on top), so a stack
    brought up here is the one pytest attaches to. The dev environment reads the same sources for the
    backend, servers, binaries and timeout, with its own env file.
    """

    name: EnvName
    root: Path
    env_file: Path
    values: Mapping[str, str]
    config: PluginConfig

    def value(self, key: str, default: str = "") -> str:
        return self.values.get(key) or default


def _say(message: str) -> None:
    print(f"dashtam-env: {message}", flush=True)


def plugin_config(
    root: Path, *, env_file: Path | None = None, backend: BackendChoice | None = None, timeout: float | None = None
) -> PluginConfig:
    """The plugin's own configuration of this project (pyproject's [tool.pytest.ini_options], pytest.ini,
    DASHTAM_* variables), the CLI's flags in the place of pytest's: one configuration for both."""
    from pytest_dashtam.config import OPTIONS, build_config

    ini = _ini_values(root)
    by_key = {o.ini: o.name for o in OPTIONS}
    values = {by_key[k]: v for k, v in ini.items() if k in by_key}
    cli: dict[str, object | None] = {"backend": backend, "timeout": timeout}
    if env_file is not None:
        cli["env_file"] = str(env_file)
    return build_config(cli, os.environ, values, root)


def load_env(name: EnvName, root: Path, *, backend: BackendChoice | None = None, timeout: float | None = None) -> Env:
    """The environment's files and configuration; the dev env file is copied from its example on first use."""
    if name == "test":
        config = plugin_config(root, backend=backend, timeout=timeout)
        return Env(name=name, root=root, env_file=config.env_file, values=config.env_values, config=config)
    path = root / DEV_ENV_FILE
    if not path.exists():
        example = root / DEV_ENV_EXAMPLE
        if not example.exists():
            raise ConfigError(f"{path} is missing and so is {example}; run dashtam-env from the project root")
        shutil.copyfile(example, path)
        _say(f"created {path.relative_to(root)} from {example.name}; edit it to set your own secrets")
    config = plugin_config(root, env_file=path, backend=backend, timeout=timeout)
    values = {k: v for k, v in dotenv_values(path).items() if v is not None}
    return Env(name=name, root=root, env_file=path, values=values, config=config)


def backend_options(env: Env) -> BackendOptions:
    """The plugin's backend options for this project, for `env`; what `up` starts outlives the command."""
    from pytest_dashtam.lifecycle import backend_options as plugin_backend_options

    options = dataclasses.replace(plugin_backend_options(env.config), env=env.name, keep=True)
    if env.name == "dev":
        options = dataclasses.replace(
            options,
            compose_files=(DEV_COMPOSE_FILE,),
            env_file=str(env.env_file),
            # A second checkout (or a test) runs its own dev project beside the usual dashtam-dev.
            project_name=os.environ.get("DASHTAM_DEV_COMPOSE_PROJECT") or None,
        )
    return options


def _state_dir(env: Env) -> Path:
    # The backends' own default, so a pytest run finds the stacks this CLI leaves running.
    return BackendOptions(env=env.name, project_root=env.root).resolved_state_dir()


def _remembered_backend(env: Env) -> BackendName | None:
    try:
        data = json.loads((_state_dir(env) / CLI_STATE).read_text())
    except (OSError, ValueError):
        return None
    name = data.get("backend")
    return cast(BackendName, name) if name in ("compose", "local", "external") else None


def _remember_backend(env: Env, name: BackendName | None) -> None:
    path = _state_dir(env) / CLI_STATE
    if name is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"backend": name, "since": time.time()}))


def choose_backend(env: Env) -> tuple[Backend, str]:
    """(backend, why): the configured choice (--backend > DASHTAM_BACKEND > ini dashtam_backend > auto);
    `auto` is what already runs this environment (what `up` remembered), else the plugin's own selection."""
    config = env.config
    options = backend_options(env)
    if config.backend == "auto":
        remembered = _remembered_backend(env)
        if remembered is not None:
            return get_backend(remembered, options), "auto: the backend dashtam-env up used"
    source = config.source("backend")
    return select_backend(config.backend, options, chosen_by="--backend" if source.startswith("--") else source)


def find_running(env: Env) -> tuple[Backend, StackStatus]:
    """The backend whose stack runs this environment, with its status, for `down`, `status` and `logs`.

    With `auto`, a local stack that the selection would not pick (a Docker engine answers now, the stack is
    a pytest run's `--dashtam-keep`) is still found: auto reuses what already runs.
    """
    backend, _reason = choose_backend(env)
    status = backend.status()
    if status.running or env.config.backend != "auto" or backend.name == "local":
        return backend, status
    local = get_backend("local", backend_options(env))
    local_status = local.status()
    return (local, local_status) if local_status.running else (backend, status)


# --- URLs for the application -----------------------------------------------------------------


def app_database_url(stack: Stack, env: Env) -> str:
    """The app's DATABASE_URL on this stack: the env file's database and driver on the stack's server.

    The test stack is reached as the plugin points the app at it (its admin role: a local test cluster has
    no other); dev as the env file's role, which `up dev` creates.
    """
    from sqlalchemy.engine import make_url

    from pytest_dashtam.urls import app_database_url as plugin_app_url

    wanted_text = env.value("DATABASE_URL")
    wanted = None
    with contextlib.suppress(Exception):  # unparsable: the env file's defaults below
        wanted = make_url(wanted_text) if wanted_text else None
    database = (wanted.database if wanted is not None else None) or env.value("POSTGRES_DB", "postgres")
    url = make_url(plugin_app_url(wanted_text or None, stack.postgres_url, database))
    if env.name == "dev":
        user = (wanted.username if wanted is not None else None) or env.value("POSTGRES_USER", "postgres")
        password = (wanted.password if wanted is not None else None) or env.value("POSTGRES_PASSWORD") or None
        url = url.set(username=user, password=password)
    return url.render_as_string(hide_password=False)


def app_redis_url(stack: Stack, env: Env) -> str:
    """The app's REDIS_URL on this stack: the test run's first index (the plugin's), or dev's own."""
    from pytest_dashtam.schema import redis_url_with_index

    if env.name == "test":
        return redis_url_with_index(stack.redis_url, env.config.redis_index)
    from redis.connection import parse_url

    index = 0
    with contextlib.suppress(Exception):  # no or an unparsable REDIS_URL: index 0
        parsed = cast("Callable[[str], dict[str, Any]]", parse_url)(env.value("REDIS_URL"))
        index = int(parsed.get("db") or 0)
    return redis_url_with_index(stack.redis_url, index)


async def _provision_dev(stack: Stack, env: Env) -> None:
    """Create the dev role and database if they are missing; never drop or alter data."""
    import asyncpg

    user = env.value("POSTGRES_USER", "dashtam_user")
    password = env.value("POSTGRES_PASSWORD")
    database = env.value("POSTGRES_DB", "dashtam")
    conn = await asyncpg.connect(stack.postgres_url)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", user):
            # Identifiers and literals cannot be bound parameters in DDL: quote them server-side.
            stmt = await conn.fetchval(
                "SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)", user, password
            )
            await conn.execute(stmt)
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
            stmt = await conn.fetchval(
                "SELECT format('CREATE DATABASE %I OWNER %I', $1::text, $2::text)", database, user
            )
            await conn.execute(stmt)
    finally:
        await conn.close()


# --- commands ---------------------------------------------------------------------------------


def _print_stack(stack: Stack, env: Env, *, headline: bool = True, reason: str = "") -> None:
    if headline:
        how = "started" if stack.started else "attached to"
        _say(f"{env.name}: {how} {stack.backend} stack" + (f" ({reason})" if reason else ""))
    _say(f"  postgres {stack.postgres_version}: {mask_url(app_database_url(stack, env))}")
    _say(f"  redis {stack.redis_version}: {app_redis_url(stack, env)}")
    if stack.tuning:
        _say("  tuning: " + ", ".join(f"{k}={v}" for k, v in sorted(stack.tuning.items())))


def _app_environment(stack: Stack, env: Env) -> dict[str, str]:
    environ = dict(os.environ)
    environ.update(env.values)
    environ["DATABASE_URL"] = app_database_url(stack, env)
    environ["REDIS_URL"] = app_redis_url(stack, env)
    return environ


def _port_of(url: str, default: int) -> int:
    try:
        return urlsplit(url).port or default
    except ValueError:
        return default


def run_apps(stack: Stack, env: Env) -> int:
    """Run the API and the callback server in the foreground until Ctrl-C or one of them exits."""
    environ = _app_environment(stack, env)
    api_port = _port_of(env.value("API_BASE_URL"), 8000 if env.name == "dev" else 8001)
    callback_port = int(env.value("CALLBACK_PORT", "8182" if env.name == "dev" else "8183"))
    uvicorn = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1"]
    commands = {
        "api": [*uvicorn, "--port", str(api_port), "dashtam.main:app"],
        "callback": [*uvicorn, "--port", str(callback_port), "dashtam.callback:app"],
    }
    # Own sessions: a terminal's Ctrl-C reaches only this process, which then stops each server once
    # (a second SIGINT makes uvicorn abort its shutdown with a traceback).
    procs = {
        name: subprocess.Popen(cmd, env=environ, cwd=env.root, start_new_session=True) for name, cmd in commands.items()
    }
    _say(f"api on http://127.0.0.1:{api_port}, callback on http://127.0.0.1:{callback_port}; Ctrl-C stops them")
    stopping = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = signal.signal(signal.SIGTERM, _stop)
    status = 0
    try:
        while not stopping:
            for name, proc in procs.items():
                code = proc.poll()
                if code is not None:
                    _say(f"{name} exited with status {code}")
                    status = 1 if code else 0
                    stopping = True
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()  # uvicorn shuts down gracefully on SIGTERM
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    _say(f"app stopped; the {env.name} servers keep running (`dashtam-env down {env.name}` stops them)")
    return status


def cmd_up(env: Env, *, run_app: bool) -> int:
    backend, reason = choose_backend(env)
    stack = backend.start()
    _remember_backend(env, backend.name)
    if env.name == "dev":
        from pytest_dashtam import schema

        asyncio.run(_provision_dev(stack, env))
        alembic_ini = env.config.alembic_ini or env.root / "alembic.ini"
        asyncio.run(schema.migrate(app_database_url(stack, env), str(alembic_ini)))
        _say("dev database migrated to head")
    _print_stack(stack, env, reason=reason)
    if env.name == "dev" and run_app:
        return run_apps(stack, env)
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
    _say(f"{env.name}: {'stopped' if status.running else 'nothing running'} ({backend.name} backend)")
    _remember_backend(env, None)
    return 0


def cmd_status(envs: Sequence[Env]) -> int:
    for env in envs:
        backend, status = find_running(env)
        if not status.running or status.stack is None:
            _say(f"{env.name}: not running ({backend.name} backend){': ' + status.detail if status.detail else ''}")
            continue
        since = ""
        if status.since:
            since = " since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status.since))
        _say(f"{env.name}: running on the {backend.name} backend{since}")
        _print_stack(status.stack, env, headline=False)
    return 0


def cmd_logs(env: Env, *, lines: int) -> int:
    backend, _status = find_running(env)
    text = backend.logs(lines)
    sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    return 0


def _ini_values(root: Path) -> dict[str, object]:
    """pytest's ini keys for the plugin, from pytest.ini (which wins, as in pytest) or pyproject.toml."""
    import configparser
    import tomllib

    pytest_ini = root / "pytest.ini"
    if pytest_ini.is_file():
        parser = configparser.ConfigParser()
        parser.read(pytest_ini)
        if parser.has_section("pytest"):
            return {k: v for k, v in parser.items("pytest") if k.startswith("dashtam_")}
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {pyproject}: {exc}") from None
        section = data.get("tool", {}).get("pytest", {}).get("ini_options", {})
        return {k: v for k, v in section.items() if k.startswith("dashtam_")}
    return {}


def _gate(config: PluginConfig) -> None:
    """The plugin's checks that need no server, before anything starts or connects."""
    from pytest_dashtam import safety

    safety.raise_for(
        safety.check_env_file(
            config.env_values,
            dev_database=config.dev_database,
            dev_redis_index=config.dev_redis_index,
            test_database=config.test_database,
            redis_index=config.redis_index,
        )
    )


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
    leases = Leases(stack.postgres_url, stack.redis_url, owner)
    leases.open()
    try:
        database = leases.claim_database(test_db, adopt_unstamped=stack.owns_servers, dev_database=config.dev_database)
        if database != test_db:
            raise SafetyError(
                f"the test database {test_db} is held by a running test run or is not the plugin's; "
                "stop that run (or drop the database yourself if it is disposable) and reset again"
            )
        index = leases.claim_redis_index(config.redis_index, databases=stack.redis_databases, skip=())
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
    _remember_backend(env, backend.name)
    test_db = asyncio.run(_reset_test(stack, env, config))
    _say(f"test: database {test_db} rebuilt from the migrations, Redis index {app_redis_url(stack, env)} emptied")
    return 0


# --- entry point ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dashtam-env",
        description="Start, stop and inspect Dashtam's dev and test environments (the servers pytest uses).",
    )
    parser.add_argument(
        "--project-root", type=Path, default=Path.cwd(), help="the project folder (default: the current one)"
    )
    parser.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default=None,
        help="where the servers run (default: as for pytest: DASHTAM_BACKEND, else dashtam_backend, else auto)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait for the servers (default: as for pytest: DASHTAM_TIMEOUT, else dashtam_timeout, "
        "else the backend's own)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start an environment (dev also migrates and runs the app until Ctrl-C)")
    up.add_argument("env", choices=ENVS)
    up.add_argument("--no-app", action="store_true", help="dev: start the servers only, not the app")
    down = sub.add_parser("down", help="stop an environment's servers")
    down.add_argument("env", choices=ENVS)
    status = sub.add_parser("status", help="what runs, where, since when")
    status.add_argument("env", choices=ENVS, nargs="?")
    logs = sub.add_parser("logs", help="the servers' logs")
    logs.add_argument("env", choices=ENVS)
    logs.add_argument("--lines", type=int, default=200, help="how many lines of each log (default 200)")
    reset = sub.add_parser("reset", help="rebuild the test database from the migrations (init_test_db)")
    reset.add_argument("env", choices=ENVS)
    return parser


def _status_envs(root: Path, name: EnvName | None, backend: BackendChoice | None, timeout: float | None) -> list[Env]:
    """The environments `status` reports: the one named, else those whose env file is there."""
    if name is not None:
        return [load_env(name, root, backend=backend, timeout=timeout)]
    envs: list[Env] = []
    if (root / DEV_ENV_FILE).exists():
        envs.append(load_env("dev", root, backend=backend, timeout=timeout))
    try:
        envs.append(load_env("test", root, backend=backend, timeout=timeout))
    except ConfigError as exc:
        _say(f"test: not configured here ({exc})")
    return envs


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    root: Path = args.project_root.resolve()
    backend: BackendChoice | None = args.backend
    timeout: float | None = args.timeout
    try:
        if args.command == "reset" and args.env != "test":
            raise UsageProblem("only the test environment can be reset: the dev database is never dropped")
        if args.command == "status":
            return cmd_status(_status_envs(root, args.env, backend, timeout))
        env = load_env(args.env, root, backend=backend, timeout=timeout)
        if args.command == "up":
            return cmd_up(env, run_app=not args.no_app)
        if args.command == "down":
            return cmd_down(env)
        if args.command == "logs":
            return cmd_logs(env, lines=args.lines)
        if args.command == "reset":
            return cmd_reset(env)
    except (ConfigError, SafetyError, UsageProblem) as exc:
        print(f"dashtam-env: error: {exc}", file=sys.stderr)
        return 2
    except BackendError as exc:
        print(f"dashtam-env: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command!r}")
    return 2  # pragma: no cover - parser.error exits


if __name__ == "__main__":
    sys.exit(main())
