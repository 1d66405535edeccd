"""The application on a stack: its URLs there, the dev role and database, the API and callback servers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from pytest_dashtam.backends import Stack
from pytest_dashtam.cli.envs import Env, say
from pytest_dashtam.errors import BackendError


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


async def provision_dev(stack: Stack, env: Env) -> None:
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


def _app_environment(stack: Stack, env: Env) -> dict[str, str]:
    environ = dict(os.environ)
    environ.update(env.values)
    environ["DATABASE_URL"] = app_database_url(stack, env)
    if stack.has_redis:
        environ["REDIS_URL"] = app_redis_url(stack, env)
    return environ


def _port_of(url: str, default: int) -> int:
    try:
        return urlsplit(url).port or default
    except ValueError:
        return default


def _with_scheme(url: str, scheme: str) -> str:
    return urlunsplit(urlsplit(url)._replace(scheme=scheme)) if url else url


# The dev certificate's folder under the project (git-ignored, the user's own, 0700) and its files, as
# `python -m dashtam.certs` makes them.
CERT_DIR = Path(".dashtam") / "certs"
CERT_FILE, KEY_FILE = "cert.pem", "key.pem"


def dev_certificate(root: Path) -> tuple[Path, Path]:
    """The dev certificate and key under `root`, made by the app's `python -m dashtam.certs` when missing or due.

    A subprocess, so that the plugin imports neither the application nor cryptography; the module keeps a
    valid certificate and renews one that expires within 30 days, so it runs on every `up dev` (a fraction of
    a second) instead of the CLI guessing its validity from a file date."""
    directory = root / CERT_DIR
    done = subprocess.run(
        [sys.executable, "-m", "dashtam.certs", str(directory)],
        cwd=root,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BackendError(
            f"could not make the dev certificate in {directory} (python -m dashtam.certs): {detail}; "
            "fix that, or serve plain HTTP with `dashtam-env up dev --http`"
        )
    for line in done.stdout.strip().splitlines():
        say(line.removeprefix("dashtam.certs: "))
    return directory / CERT_FILE, directory / KEY_FILE


def run_apps(stack: Stack, env: Env, *, https: bool = True) -> int:
    """Run the API and the callback server in the foreground until Ctrl-C or one of them exits.

    `https` (dev's default; `up dev --http` turns it off) serves both with the dev certificate, and gives the
    apps the scheme it implies: the env file names hosts and ports, the mode says http or https, so
    API_BASE_URL, the callback's redirect URI (CALLBACK_SCHEME) and a PROVIDER_AUTHORIZE_URL on the callback
    server (the sandbox's consent page) follow it, and the callback server trusts the certificate for its
    forwarding to the API (API_CA_FILE)."""
    environ = _app_environment(stack, env)
    api_port = _port_of(env.value("API_BASE_URL"), 8000 if env.name == "dev" else 8001)
    callback_port = int(env.value("CALLBACK_PORT", "8182" if env.name == "dev" else "8183"))
    scheme = "https" if https else "http"
    uvicorn = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1"]
    if https:
        cert_file, key_file = dev_certificate(env.root)
        uvicorn += ["--ssl-keyfile", str(key_file), "--ssl-certfile", str(cert_file)]
        environ["API_CA_FILE"] = str(cert_file)
    else:
        environ.pop("API_CA_FILE", None)
    environ["API_BASE_URL"] = _with_scheme(env.value("API_BASE_URL", f"{scheme}://localhost:{api_port}"), scheme)
    environ["CALLBACK_SCHEME"] = scheme
    authorize = env.value("PROVIDER_AUTHORIZE_URL")
    if authorize and _port_of(authorize, 0) == callback_port:
        environ["PROVIDER_AUTHORIZE_URL"] = _with_scheme(authorize, scheme)
    commands = {
        "api": [*uvicorn, "--port", str(api_port), "dashtam.main:app"],
        "callback": [*uvicorn, "--port", str(callback_port), "dashtam.callback:app"],
    }
    # Own sessions: a terminal's Ctrl-C reaches only this process, which then stops each server once
    # (a second SIGINT makes uvicorn abort its shutdown with a traceback).
    procs = {
        name: subprocess.Popen(cmd, env=environ, cwd=env.root, start_new_session=True) for name, cmd in commands.items()
    }
    say(f"api on {scheme}://localhost:{api_port}, callback on {scheme}://localhost:{callback_port}; Ctrl-C stops them")
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
                    say(f"{name} exited with status {code}")
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
    say(f"app stopped; the {env.name} servers keep running (`dashtam-env down {env.name}` stops them)")
    return status
