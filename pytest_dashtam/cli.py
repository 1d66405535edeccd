"""`dashtam-env`: start, stop and inspect the dev and test environments by hand.

It drives the same backends, safety checks and schema code as the pytest plugin, so a stack
brought up here (`up test`) is the one a later `pytest` run attaches to. Exit status: 0 done,
1 a server or backend failed, 2 bad input or a safety refusal (nothing was changed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast, get_args
from urllib.parse import urlsplit

from dotenv import dotenv_values

from pytest_dashtam.backends import Backend, BackendName, BackendOptions, Stack, get_backend
from pytest_dashtam.backends.base import EnvName, SupportsDown, SupportsLogs
from pytest_dashtam.config import PluginConfig
from pytest_dashtam.errors import BackendError, ConfigError, DashtamError, SafetyError
from pytest_dashtam.urls import mask_url

ENVS: tuple[EnvName, ...] = get_args(EnvName)
BackendChoice = Literal["auto", "compose", "local", "external"]
BACKEND_CHOICES: tuple[str, ...] = get_args(BackendChoice)

COMPOSE_FILES: Mapping[EnvName, str] = {
    "dev": "docker/docker-compose.dev.yml",
    "test": "docker/docker-compose.test.yml",
}
ENV_FILES: Mapping[EnvName, str] = {"dev": "env/.env.dev", "test": "env/.env.test"}
DEV_ENV_EXAMPLE = "env/.env.dev.example"
# Where the CLI remembers which backend runs an environment, so `down` and `status` find it.
CLI_STATE = "cli.json"


class UsageProblem(DashtamError):
    """Bad input to the CLI (exit 2)."""


@dataclass(frozen=True)
class Env:
    """One environment as the CLI sees it: its name, files and the values of its env file."""

    name: EnvName
    root: Path
    values: Mapping[str, str]

    @property
    def env_file(self) -> Path:
        return self.root / ENV_FILES[self.name]

    def value(self, key: str, default: str = "") -> str:
        return self.values.get(key) or default


def _say(message: str) -> None:
    print(f"dashtam-env: {message}", flush=True)


def load_env(name: EnvName, root: Path) -> Env:
    """Read the environment's file; the dev file is copied from its example on first use."""
    path = root / ENV_FILES[name]
    if name == "dev" and not path.exists():
        example = root / DEV_ENV_EXAMPLE
        if not example.exists():
            raise ConfigError(f"{path} is missing and so is {example}; run dashtam-env from the project root")
        shutil.copyfile(example, path)
        _say(f"created {path.relative_to(root)} from {example.name}; edit it to set your own secrets")
    if not path.exists():
        raise ConfigError(f"{path} is missing; run dashtam-env from the project root (or pass --project-root)")
    values = {k: v for k, v in dotenv_values(path).items() if v is not None}
    return Env(name=name, root=root, values=values)


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


def _docker_available() -> bool:
    try:
        from pytest_dashtam.backends.compose import docker_available
    except ImportError:
        return False
    return docker_available()


def resolve_backend(choice: BackendChoice, env: Env, *, for_start: bool) -> BackendName:
    """`auto` means: what already runs this environment, else external if URLs are given,
    compose if a Docker engine answers, local otherwise (ARCHITECTURE.md)."""
    if choice != "auto":
        return choice
    remembered = _remembered_backend(env)
    if remembered is not None:
        return remembered
    if os.environ.get("DASHTAM_POSTGRES_URL") and os.environ.get("DASHTAM_REDIS_URL"):
        return "external"
    if for_start and _docker_available():
        return "compose"
    return "local"


def make_backend(name: BackendName, env: Env, *, timeout: float) -> Backend:
    options = BackendOptions(
        env=env.name,
        project_root=env.root,
        state_dir=_state_dir(env),
        keep=True,  # what `up` starts outlives this command; `down` stops it
        postgres_url=os.environ.get("DASHTAM_POSTGRES_URL"),
        redis_url=os.environ.get("DASHTAM_REDIS_URL"),
        postgres_bin=os.environ.get("DASHTAM_POSTGRES_BIN"),
        redis_bin=os.environ.get("DASHTAM_REDIS_BIN"),
        compose_files=(COMPOSE_FILES[env.name],),
        env_file=str(env.env_file),
        # A second checkout (or a test) runs its own compose projects beside the usual dashtam-dev/-test.
        project_name=os.environ.get(f"DASHTAM_{env.name.upper()}_COMPOSE_PROJECT") or None,
        timeout=timeout,
    )
    return get_backend(name, options)


# --- URLs for the application -----------------------------------------------------------------


def app_database_url(stack: Stack, env: Env) -> str:
    """The app's DATABASE_URL on this stack: the env file's database on the stack's host and port (or
    Unix socket). Dev connects as the env file's role (`up dev` creates it); the throw-away test stack
    as the stack's own admin role, as the pytest plugin does (a local test cluster has no other role)."""
    wanted = urlsplit(env.value("DATABASE_URL"))
    database = wanted.path.lstrip("/") or env.value("POSTGRES_DB", "postgres")
    if env.name == "test":
        from pytest_dashtam.schema import database_url

        return database_url(stack.postgres_url, database)
    admin = urlsplit(stack.postgres_url)
    user = wanted.username or env.value("POSTGRES_USER", "postgres")
    password = wanted.password or env.value("POSTGRES_PASSWORD")
    auth = f"{user}:{password}@" if password else f"{user}@"
    host = admin.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{admin.port}" if admin.port else ""
    query = f"?{admin.query}" if admin.query else ""
    return f"postgresql+asyncpg://{auth}{host}{port}/{database}{query}"


def app_redis_url(stack: Stack, env: Env) -> str:
    index = urlsplit(env.value("REDIS_URL")).path.strip("/") or ("0" if env.name == "dev" else "1")
    return f"{stack.redis_url.rstrip('/')}/{index}"


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


def _print_stack(stack: Stack, env: Env, *, headline: bool = True) -> None:
    if headline:
        how = "started" if stack.started else "attached to"
        _say(f"{env.name}: {how} {stack.backend} stack")
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


def cmd_up(env: Env, backend_choice: BackendChoice, *, run_app: bool, timeout: float) -> int:
    name = resolve_backend(backend_choice, env, for_start=True)
    backend = make_backend(name, env, timeout=timeout)
    stack = backend.start()
    _remember_backend(env, name)
    if env.name == "dev":
        from pytest_dashtam import schema

        asyncio.run(_provision_dev(stack, env))
        asyncio.run(schema.migrate(app_database_url(stack, env), str(env.root / "alembic.ini")))
        _say("dev database migrated to head")
    _print_stack(stack, env)
    if env.name == "dev" and run_app:
        return run_apps(stack, env)
    return 0


def cmd_down(env: Env, backend_choice: BackendChoice, *, timeout: float) -> int:
    name = resolve_backend(backend_choice, env, for_start=False)
    backend = make_backend(name, env, timeout=timeout)
    if not isinstance(backend, SupportsDown):
        raise UsageProblem(f"the {name} backend does not stop servers it does not own; stop them where they run")
    if not backend.status().running:
        _say(f"{env.name}: nothing running ({name} backend)")
    else:
        backend.down()
        _say(f"{env.name}: stopped ({name} backend)")
    _remember_backend(env, None)
    return 0


def cmd_status(envs: Sequence[Env], backend_choice: BackendChoice, *, timeout: float) -> int:
    for env in envs:
        name = resolve_backend(backend_choice, env, for_start=False)
        status = make_backend(name, env, timeout=timeout).status()
        if not status.running or status.stack is None:
            _say(f"{env.name}: not running ({name} backend){': ' + status.detail if status.detail else ''}")
            continue
        since = ""
        if status.since:
            since = " since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status.since))
        _say(f"{env.name}: running on the {name} backend{since}")
        _print_stack(status.stack, env, headline=False)
    return 0


def cmd_logs(env: Env, backend_choice: BackendChoice, *, lines: int, timeout: float) -> int:
    name = resolve_backend(backend_choice, env, for_start=False)
    backend = make_backend(name, env, timeout=timeout)
    if not isinstance(backend, SupportsLogs):
        raise UsageProblem(f"the {name} backend keeps no logs of its own (its servers are someone else's)")
    text = backend.logs(lines)
    sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    return 0


def plugin_config(env: Env) -> PluginConfig:
    """The plugin's own configuration of this project (pyproject's [tool.pytest.ini_options], pytest.ini,
    DASHTAM_* variables), so the CLI goes through the same gate with the same dev database and index."""
    from pytest_dashtam.config import OPTIONS, build_config

    ini = _ini_values(env.root)
    by_key = {o.ini: o.name for o in OPTIONS}
    values = {by_key[k]: v for k, v in ini.items() if k in by_key}
    return build_config({"env_file": str(env.env_file)}, os.environ, values, env.root)


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


def cmd_reset(env: Env, backend_choice: BackendChoice, *, timeout: float) -> int:
    if env.name != "test":
        raise UsageProblem("only the test environment can be reset: the dev database is never dropped")
    config = plugin_config(env)
    _gate(config)
    name = resolve_backend(backend_choice, env, for_start=True)
    stack = make_backend(name, env, timeout=timeout).start()
    _remember_backend(env, name)
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
        default=os.environ.get("DASHTAM_BACKEND", "auto"),
        help="where the servers run (default: $DASHTAM_BACKEND or auto)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the servers (default 60)")
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.backend not in BACKEND_CHOICES:
        parser.error(f"--backend must be one of {', '.join(BACKEND_CHOICES)} (got {args.backend!r})")
    root: Path = args.project_root.resolve()
    backend: BackendChoice = args.backend
    try:
        if args.command == "status":
            names: Sequence[EnvName] = (args.env,) if args.env else ENVS
            envs = [load_env(n, root) for n in names if args.env or (root / ENV_FILES[n]).exists()]
            return cmd_status(envs, backend, timeout=args.timeout)
        env = load_env(args.env, root)
        if args.command == "up":
            return cmd_up(env, backend, run_app=not args.no_app, timeout=args.timeout)
        if args.command == "down":
            return cmd_down(env, backend, timeout=args.timeout)
        if args.command == "logs":
            return cmd_logs(env, backend, lines=args.lines, timeout=args.timeout)
        if args.command == "reset":
            return cmd_reset(env, backend, timeout=args.timeout)
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
