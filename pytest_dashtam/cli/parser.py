"""`dashtam-env`'s command line: the parser, and `main`, which runs a command and turns errors into exit codes.

Exit status: 0 done, 1 a server or backend failed, 2 bad input or a safety refusal (nothing was changed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from pytest_dashtam.backends import BackendChoice, EnvName
from pytest_dashtam.cli.commands import cmd_down, cmd_kept, cmd_logs, cmd_reset, cmd_status, cmd_up
from pytest_dashtam.cli.envs import DEV_ENV_FILE, Env, load_env, say
from pytest_dashtam.errors import BackendError, ConfigError, DashtamError, SafetyError

ENVS: tuple[EnvName, ...] = get_args(EnvName)
BACKEND_CHOICES: tuple[str, ...] = get_args(BackendChoice)


class UsageProblem(DashtamError):
    """Bad input to the CLI (exit 2)."""


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
    up.add_argument(
        "--http",
        action="store_true",
        help="dev: serve the app and the callback server over plain HTTP (default: HTTPS with a self-signed "
        "certificate made on first use in .dashtam/certs)",
    )
    down = sub.add_parser("down", help="stop an environment's servers")
    down.add_argument("env", choices=ENVS)
    status = sub.add_parser("status", help="what runs, where, since when")
    status.add_argument("env", choices=ENVS, nargs="?")
    logs = sub.add_parser("logs", help="the servers' logs")
    logs.add_argument("env", choices=ENVS)
    logs.add_argument("--lines", type=int, default=200, help="how many lines of each log (default 200)")
    reset = sub.add_parser("reset", help="rebuild the test database from the migrations (init_test_db)")
    reset.add_argument("env", choices=ENVS)
    kept = sub.add_parser("kept", help="the test stack's databases --dashtam-keep-failed kept: list, or remove them")
    which = kept.add_mutually_exclusive_group()
    which.add_argument("--remove", action="append", default=[], metavar="NAME", help="remove this kept database")
    which.add_argument("--remove-all", action="store_true", help="remove every kept database of this project")
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
        say(f"test: not configured here ({exc})")
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
        if args.command == "kept":
            test = load_env("test", root, backend=backend, timeout=timeout)
            return cmd_kept(test, remove=args.remove, remove_all=args.remove_all)
        env = load_env(args.env, root, backend=backend, timeout=timeout)
        if args.command == "up":
            return cmd_up(env, run_app=not args.no_app, https=not args.http)
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
