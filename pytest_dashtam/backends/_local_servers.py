"""Spawning PostgreSQL and Redis/Valkey processes and waiting until they answer.

Speed note (issue 3, this machine): `pg_ctl -w` polls every 100 ms, so `postgres` is spawned
directly and its socket polled every few milliseconds with a real startup packet (a connect alone
succeeds before the server accepts logins).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from pytest_dashtam.backends._local_binaries import PgBinaries, RedisBinary
from pytest_dashtam.backends._local_procs import RunAs
from pytest_dashtam.errors import BackendError
from pytest_dashtam.poll import PollTimeout, apoll, first_line, poll

TEST_TUNING: Mapping[str, str] = {"fsync": "off", "full_page_writes": "off", "synchronous_commit": "off"}


def _poll_delay(waited: float) -> float:
    """2 ms between probes for the first second (a failed probe costs microseconds; a late one
    costs the whole gap), then 20 ms for a server that is slow for a reason."""
    return 0.002 if waited < 1.0 else 0.02


class PortInUseError(BackendError):
    """The server could not bind its port (another process took it between our check and its bind)."""


def log_tail(path: Path | str, lines: int = 12) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(tail) if tail else "(empty log)"


def server_env() -> dict[str, str]:
    # C messages so failures read the same everywhere; PG* variables must not redirect the server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def spawn_postgres(
    binaries: PgBinaries,
    data_dir: Path,
    port: int,
    socket_dir: Path,
    log_path: Path,
    settings: Mapping[str, str],
    run_as: RunAs | None,
) -> subprocess.Popen[bytes]:
    args = [
        str(binaries.postgres),
        "-D",
        str(data_dir),
        "-p",
        str(port),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        f"unix_socket_directories={socket_dir}",
    ]
    for key, value in settings.items():
        args += ["-c", f"{key}={value}"]
    return _spawn(args, log_path, env=server_env(), run_as=run_as)


def _spawn(
    args: list[str], log_path: Path, *, env: dict[str, str] | None = None, run_as: RunAs | None = None
) -> subprocess.Popen[bytes]:
    """Start a server with its output appended to its log.

    Own session: a Ctrl-C at the terminal reaches pytest, which then stops the servers in order,
    instead of reaching the servers directly.
    """
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            close_fds=True,
            user=None if run_as is None else run_as.uid,
            group=None if run_as is None else run_as.gid,
            extra_groups=None if run_as is None else [],
        )


def spawn_redis(
    binary: RedisBinary, port: int, data_dir: Path, log_path: Path, persistent: bool
) -> subprocess.Popen[bytes]:
    args = [
        str(binary.path),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--daemonize",
        "no",
        "--logfile",
        "",
    ]
    if not persistent:
        args += ["--save", "", "--appendonly", "no"]
    return _spawn(args, log_path)


def _failed(what: str, proc: subprocess.Popen[bytes], log_path: Path) -> BackendError:
    tail = log_tail(log_path)
    cls = PortInUseError if "Address already in use" in tail else BackendError
    return cls(f"{what} exited with code {proc.returncode} during start-up; its log ({log_path}) ends: {tail}")


def _pg_error_text(exc: BaseException | None) -> str:
    if exc is None:
        return "no answer"
    if isinstance(exc, FileNotFoundError):
        return "socket not created yet"
    return first_line(exc)


def wait_postgres(
    proc: subprocess.Popen[bytes] | None,
    host: str,
    port: int,
    deadline: float,
    log_path: Path,
    settings: Sequence[str],
) -> list[str]:
    """Poll until PostgreSQL accepts a login (on `host`: a socket folder or an address), then read the
    `settings` (current_setting) in one round trip."""
    import asyncpg

    from pytest_dashtam.isolation import run_async

    query = "SELECT " + ", ".join(f"current_setting('{name}')" for name in settings)

    async def once() -> list[str]:
        if proc is not None and proc.poll() is not None:
            raise _failed("postgres", proc, log_path)
        try:
            conn = await asyncpg.connect(
                host=host,
                port=port,
                user="postgres",
                database="postgres",
                timeout=max(0.5, deadline - time.monotonic()),
                server_settings={"application_name": "pytest-dashtam"},
            )
        except asyncpg.CannotConnectNowError:
            raise  # starting up: try again
        except asyncpg.PostgresError as exc:
            raise BackendError(
                f"postgres refused the readiness check: {first_line(exc)}; log ({log_path}): {log_tail(log_path)}"
            ) from None
        try:
            row = await conn.fetchrow(query)
            return [str(value) for value in (row or ())]
        finally:
            await conn.close()

    try:
        return run_async(
            lambda: apoll(
                once,
                timeout=max(deadline - time.monotonic(), 0.0),
                interval=_poll_delay,
                what="postgres to accept connections",
                retry=(OSError, asyncpg.CannotConnectNowError, asyncpg.ConnectionDoesNotExistError),
            )
        )
    except PollTimeout as exc:
        raise BackendError(
            f"postgres did not accept connections in time ({_pg_error_text(exc.last)}); log ({log_path}) ends: "
            f"{log_tail(log_path)}"
        ) from None


def wait_redis(
    proc: subprocess.Popen[bytes] | None, port: int, deadline: float, log_path: Path
) -> tuple[str, str, int | None]:
    """Poll until the server answers PING; returns (version, flavour, databases)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    def once() -> tuple[str, str, int | None]:
        if proc is not None and proc.poll() is not None:
            raise _failed("redis server", proc, log_path)
        timeout = max(0.5, deadline - time.monotonic())
        client = redis.Redis(
            host="127.0.0.1",
            port=port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        try:
            pipe = client.pipeline(transaction=False)
            pipe.ping()
            pipe.info("server")
            pipe.config_get("databases")
            _pong, info, conf = pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError):
            raise  # not listening yet, or LOADING: try again
        except redis.RedisError as exc:
            raise BackendError(f"redis server refused the readiness check: {first_line(exc)}") from None
        finally:
            client.close()
        if proc is not None and info.get("process_id") not in (None, proc.pid):
            # Another server answers on the port we picked: ours lost the bind race.
            raise PortInUseError(f"port {port} answers for process {info.get('process_id')}, not ours")
        flavour = "valkey" if "valkey_version" in info else "redis"
        version = str(info.get("valkey_version") or info.get("redis_version", "?"))
        databases = conf.get("databases")
        return version, flavour, int(databases) if databases is not None else None

    try:
        return poll(
            once,
            timeout=max(deadline - time.monotonic(), 0.0),
            interval=_poll_delay,
            what="the redis server to answer PING",
            retry=(redis.ConnectionError, redis.TimeoutError, OSError),
        )
    except PollTimeout as exc:
        last = first_line(exc.last) if exc.last is not None else "no answer"
        raise BackendError(
            f"redis server did not answer PING in time ({last}); log ({log_path}) ends: {log_tail(log_path)}"
        ) from None


def answers_as(
    postgres_port: int, redis_port: int | None, postgres_version: str, redis_version: str, redis_pid: int | None
) -> bool:
    """The servers of a recorded stack answer on their ports, with the versions recorded, and the Redis on
    the port is the recorded process (not another server that took the port since). `redis_port` None: a
    stack without Redis (a project that has none), whose PostgreSQL alone is checked."""
    import asyncpg
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from pytest_dashtam.isolation import run_async

    async def postgres() -> str:
        conn = await asyncpg.connect(host="127.0.0.1", port=postgres_port, user="postgres", timeout=2.0)
        try:
            return str(await conn.fetchval("SELECT current_setting('server_version')"))
        finally:
            await conn.close()

    if redis_port is None:
        try:
            return run_async(postgres) == postgres_version
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False
    client = redis.Redis(
        host="127.0.0.1", port=redis_port, socket_timeout=2.0, retry=Retry(NoBackoff(), 0), decode_responses=True
    )
    try:
        version = run_async(postgres)
        info = client.info("server")
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, redis.RedisError):
        return False
    finally:
        client.close()
    redis_ok = redis_version in (info.get("valkey_version"), info.get("redis_version"))
    return version == postgres_version and redis_ok and redis_pid is not None and info.get("process_id") == redis_pid
