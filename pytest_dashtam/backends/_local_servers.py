"""Spawning PostgreSQL and Redis/Valkey processes, the initdb cache, and waiting for readiness.

Speed notes (numbers from issue 3, this machine): initdb costs ~0.45 s, so an initdb'd cluster is
cached per binary and copied (with 1 MB WAL segments the copy is ~25 MB instead of ~40 MB);
`pg_ctl -w` polls every 100 ms, so `postgres` is spawned directly and its socket polled every few
milliseconds with a real startup packet (a connect alone succeeds before the server accepts logins).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from pytest_dashtam.backends._local_binaries import PgBinaries, RedisBinary
from pytest_dashtam.backends._local_procs import RunAs, chown_tree
from pytest_dashtam.errors import BackendError
from pytest_dashtam.poll import PollTimeout, apoll, first_line, poll

# Bump when the initdb arguments change: old cache entries then stop matching.
_CACHE_FORMAT = "1"
INITDB_ARGS = ("-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync", "--wal-segsize=1")
TEST_TUNING: Mapping[str, str] = {"fsync": "off", "full_page_writes": "off", "synchronous_commit": "off"}
# A file in a test stack's run folder: "when this cluster stops, keep it as the next runs' seed".
SEED_REQUEST = "keep-as-seed"
ClusterSource = Literal["seed", "hit", "miss"]


def _poll_delay(waited: float) -> float:
    """2 ms between probes for the first second (a failed probe costs microseconds; a late one
    costs the whole gap), then 20 ms for a server that is slow for a reason."""
    return 0.002 if waited < 1.0 else 0.02


class PortInUseError(BackendError):
    """The server could not bind its port (another process took it between our check and its bind)."""


def cache_root() -> Path:
    """The user's cache folder for pytest-dashtam (DASHTAM_CACHE_DIR, XDG_CACHE_HOME, ~/.cache)."""
    explicit = os.environ.get("DASHTAM_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "pytest-dashtam"


def log_tail(path: Path | str, lines: int = 12) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(tail) if tail else "(empty log)"


def _server_env() -> dict[str, str]:
    # C messages so failures read the same everywhere; PG* variables must not redirect the server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy preserving modes and (as root) owners; cp is several times faster than copytree here."""
    cp = shutil.which("cp")
    if cp:
        subprocess.run([cp, "-a", str(src), str(dst)], check=True, capture_output=True)
    else:
        shutil.copytree(src, dst, symlinks=True)


def _make_owned_dir(path: Path, run_as: RunAs | None, mode: int = 0o700) -> None:
    path.mkdir(mode=mode, parents=False, exist_ok=True)
    os.chmod(path, mode)
    if run_as is not None:
        os.chown(path, run_as.uid, run_as.gid)


def _run_initdb(binaries: PgBinaries, data_dir: Path, run_as: RunAs | None, log_path: Path) -> None:
    _make_owned_dir(data_dir, run_as)
    with open(log_path, "ab") as log:
        proc = subprocess.run(
            [str(binaries.initdb), "-D", str(data_dir), *INITDB_ARGS],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_server_env(),
            user=None if run_as is None else run_as.uid,
            group=None if run_as is None else run_as.gid,
            extra_groups=None if run_as is None else [],
            check=False,
            timeout=300,
        )
    if proc.returncode != 0:
        raise BackendError(f"initdb ({binaries.initdb}) failed with exit {proc.returncode}: {log_tail(log_path)}")


def _fill_cache(snapshot: Path, root: Path, entry: Path, meta: dict[str, object]) -> None:
    """Copy a pristine cluster into the cache under a temporary name, then rename it into place."""
    meta_path = entry / "meta.json"
    try:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            root.mkdir(parents=True, exist_ok=True)
            building = Path(tempfile.mkdtemp(dir=root, prefix=f".building-{entry.name}-"))
            try:
                _copy_tree(snapshot, building / "data")
                (building / "meta.json").write_text(json.dumps(meta))
                try:
                    os.rename(building, entry)
                except OSError:
                    if not meta_path.is_file():  # a broken entry without meta: replace it
                        shutil.rmtree(entry, ignore_errors=True)
                        os.rename(building, entry)
            finally:
                shutil.rmtree(building, ignore_errors=True)
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)


def _clean_stale_builds(root: Path) -> None:
    """Half-built entries of runs killed while filling the cache (an hour is far beyond any fill)."""
    cutoff = time.time() - 3600
    with contextlib.suppress(OSError):
        for stale in root.glob(".building-*"):
            with contextlib.suppress(OSError):
                if stale.stat().st_mtime < cutoff:
                    shutil.rmtree(stale, ignore_errors=True)


def _seed_entry(root: Path, identity: str) -> Path:
    return root / f"pg-{_CACHE_FORMAT}-{identity}-seed"


def cluster_from_cache(
    binaries: PgBinaries, data_dir: Path, run_as: RunAs | None, log_path: Path, cache: Path | None = None
) -> tuple[str, ClusterSource, threading.Thread | None]:
    """Put a fresh test cluster at `data_dir` (absent yet).

    Returns (binary version, where the cluster came from, the thread still filling the cache on a
    miss: join it before removing `data_dir`'s parent). The seed (a stopped test cluster of an
    earlier run, holding the schema templates it built: see `save_seed`) is preferred over the
    pristine initdb'd cluster, which is preferred over running initdb. Cache entries are built beside
    their final name and renamed into place, so concurrent runs never see a half-written one: the
    loser of the rename race discards its copy, and a reader that loses an entry mid-copy falls back
    to the next source. On a miss, the cache (on disk: ~0.3 s for ~1000 files) is filled in the
    background from a snapshot taken on the same tmpfs (~40 ms), so the server starts without
    waiting for the disk.
    """
    root = cache or cache_root()
    identity = binaries.identity()
    entry = root / f"pg-{_CACHE_FORMAT}-{identity}"
    sources: tuple[tuple[ClusterSource, Path], ...] = (("seed", _seed_entry(root, identity)), ("hit", entry))
    for source, candidate in sources:
        meta_path = candidate / "meta.json"
        if not meta_path.is_file():
            continue
        try:
            version = str(json.loads(meta_path.read_text())["version"])
            _copy_tree(candidate / "data", data_dir)
            if run_as is not None and os.stat(data_dir).st_uid != run_as.uid:
                chown_tree(data_dir, run_as.uid, run_as.gid)
            return version, source, None
        except (OSError, ValueError, KeyError, subprocess.CalledProcessError):
            shutil.rmtree(data_dir, ignore_errors=True)  # a damaged or vanished entry: try the next source
    version = binaries.version()
    _run_initdb(binaries, data_dir, run_as, log_path)
    _clean_stale_builds(root)
    snapshot = data_dir.parent / f".{data_dir.name}-initdb-snapshot"
    try:
        _copy_tree(data_dir, snapshot)
    except (OSError, subprocess.CalledProcessError):
        shutil.rmtree(snapshot, ignore_errors=True)
        return version, "miss", None  # no cache this time; the next cold start tries again
    meta: dict[str, object] = {
        "version": version,
        "postgres": str(binaries.postgres),
        "initdb_args": list(INITDB_ARGS),
    }
    filler = threading.Thread(
        target=_fill_cache, args=(snapshot, root, entry, meta), name="dashtam-cache-fill", daemon=True
    )
    filler.start()
    return version, "miss", filler


def save_seed(data_dir: Path, identity: str, version: str, cache: Path | None = None) -> bool:
    """Keep a cleanly stopped test cluster as the starting cluster of the next runs on these binaries.

    A fresh cluster every run would mean building the schema template (all the migrations) every
    run; seeding the next cluster with this one, templates included, lets the plugin reuse a
    template while its hash matches, as on a kept or external server. Only called for a cluster
    whose template was just built (the plugin asks through `SEED_REQUEST`), so runs that hit the
    template pay nothing. A cluster not shut down cleanly (postmaster.pid left) is not kept.
    """
    if (data_dir / "postmaster.pid").exists() or not (data_dir / "PG_VERSION").is_file():
        return False
    root = cache or cache_root()
    entry = _seed_entry(root, identity)
    building: Path | None = None
    trash: Path | None = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(dir=root, prefix=f".building-{entry.name}-"))
        _copy_tree(data_dir, building / "data")
        (building / "meta.json").write_text(json.dumps({"version": version, "seed": True}))
        if entry.exists():
            trash = Path(tempfile.mkdtemp(dir=root, prefix=f".trash-{entry.name}-"))
            os.rename(entry, trash / "old")
        os.rename(building, entry)
        return True
    except (OSError, subprocess.CalledProcessError):
        return False  # another run swapped its seed in first, or the disk is full: the next run rebuilds
    finally:
        for leftover in (building, trash):
            if leftover is not None:
                shutil.rmtree(leftover, ignore_errors=True)


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
    return _spawn(args, log_path, env=_server_env(), run_as=run_as)


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
    postgres_port: int, redis_port: int, postgres_version: str, redis_version: str, redis_pid: int | None
) -> bool:
    """The servers of a recorded stack answer on their ports, with the versions recorded, and the Redis on
    the port is the recorded process (not another server that took the port since)."""
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
