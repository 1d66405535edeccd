"""Starting a new local stack: where its files go, which ports it takes, its servers spawned in order.

A test stack lives in a throw-away run folder on tmpfs when there is room (else under the state
folder), on free ports; a dev stack lives under the state folder, on ports that stay the same. The
stack's state file is written before anything is spawned, so a run that dies half-way through a
start still leaves a record that the next run reaps.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pytest_dashtam.backends._local_binaries import PgBinaries, RedisBinary
from pytest_dashtam.backends._local_cluster import cluster_from_cache
from pytest_dashtam.backends._local_procs import RunAs, pick_free_ports, port_is_free, unreachable_part
from pytest_dashtam.backends._local_servers import TEST_TUNING, spawn_postgres, spawn_redis, wait_postgres, wait_redis
from pytest_dashtam.backends._local_state import StackState, state_path, write_state
from pytest_dashtam.backends.base import BackendOptions, EnvName, LocalFacts, Stack
from pytest_dashtam.errors import BackendError
from pytest_dashtam.process import ProcessId

TMPFS = Path("/dev/shm")
# Room a test cluster may grow to on tmpfs before we prefer the disk (a container's default
# /dev/shm of 64 MB is too small for PostgreSQL's data plus its dynamic shared memory).
TMPFS_MIN_FREE = 1 << 30
DEV_PORT_VARS = {"postgres": ("DASHTAM_DEV_POSTGRES_PORT", 5432), "redis": ("DASHTAM_DEV_REDIS_PORT", 6379)}
# The Unix socket path must fit in sun_path (108 bytes) with ".s.PGSQL.NNNNN" appended.
_MAX_SOCKET_DIR = 90
# Read back once PostgreSQL accepts logins: its version, and what the tuning really is.
_SETTINGS = ("server_version", *TEST_TUNING)
# A throw-away test cluster keeps little WAL: PostgreSQL keeps up to max_wal_size of it between checkpoints and
# recycles segments up to that (1 GB by default), in memory here (tmpfs), and the cluster kept as the next
# runs' seed is copied on every start. Checkpoints on such a cluster are cheap (fsync is off).
THROWAWAY_WAL: dict[str, str] = {"min_wal_size": "2MB", "max_wal_size": "8MB"}


def dev_port(server: str) -> int:
    var, default = DEV_PORT_VARS[server]
    raw = os.environ.get(var)
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise BackendError(f"{var}={raw!r} is not a port number: set it to a free TCP port") from None
    if not 0 < port < 65536:
        raise BackendError(f"{var}={raw!r} is out of range: set it to a free TCP port")
    return port


def dev_ports(state_dir: Path) -> dict[str, int]:
    """The dev servers' ports: a DASHTAM_DEV_*_PORT variable if set (it must be free); else the ports this
    dev cluster used before; else the standard ports if free; else free ones, remembered from then on.

    The standard ports are often held by a developer's own servers (on CI machines they are), and the
    dev environment must still come up with one command; remembering the choice keeps the dev URLs
    stable across restarts. The app started by `dashtam-env up dev` is given the actual URLs.
    """
    record = state_dir / "dev-ports.json"
    try:
        remembered = {k: int(v) for k, v in json.loads(record.read_text()).items() if k in DEV_PORT_VARS}
    except (OSError, ValueError, TypeError, AttributeError):
        remembered = {}
    ports: dict[str, int] = {}
    for server, (var, default) in DEV_PORT_VARS.items():
        if os.environ.get(var):
            port = dev_port(server)
            if not port_is_free(port):
                raise BackendError(
                    f"port {port} for the dev {server} server is taken by another process: set {var} to a free port"
                )
        else:
            candidates = [p for p in (remembered.get(server), default) if p is not None]
            free = [p for p in candidates if port_is_free(p)]
            port = free[0] if free else pick_free_ports(1, exclude=set(ports.values()))[0]
        ports[server] = port
    if ports != remembered:
        state_dir.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(ports))
    return ports


def _tmpfs_usable() -> bool:
    try:
        return os.access(TMPFS, os.W_OK | os.X_OK) and shutil.disk_usage(TMPFS).free >= TMPFS_MIN_FREE
    except OSError:
        return False


def _base_run_dir(state_dir: Path, run_as: RunAs | None) -> Path:
    if _tmpfs_usable():
        return TMPFS
    base = state_dir / "runs"
    base.mkdir(parents=True, exist_ok=True)
    if run_as is not None:
        blocked = unreachable_part(base, run_as, 1)
        if blocked is not None:
            raise BackendError(
                f"/dev/shm has no room and user {run_as.name!r} (PostgreSQL refuses root) cannot reach "
                f"{base} ({blocked} is not searchable): chmod o+x {blocked} or choose another state dir"
            )
    return base


def _layout(env: EnvName, state_dir: Path, run_id: str, run_as: RunAs | None) -> dict[str, Path]:
    if env == "dev":
        root = state_dir
        if run_as is not None:
            blocked = unreachable_part(root, run_as, 1)
            if blocked is not None:
                raise BackendError(
                    f"the dev cluster lives under {root}, which user {run_as.name!r} (PostgreSQL refuses "
                    f"root) cannot reach: {blocked} is not searchable; chmod o+x {blocked} or set the "
                    "state dir elsewhere"
                )
        socket_dir = root / "run"
        if len(str(socket_dir)) > _MAX_SOCKET_DIR:
            socket_dir = Path("/tmp") / f"dashtam-dev-{secrets.token_hex(4)}"
        return {
            "run": root,
            "data": root / "postgres",
            "socket": socket_dir,
            "redis": root / "redis",
            "postgres_log": root / "postgres.log",
            "redis_log": root / "redis.log",
        }
    root = _base_run_dir(state_dir, run_as) / f"dashtam-{run_id}"
    if len(str(root)) > _MAX_SOCKET_DIR - 2:
        root = Path("/tmp") / f"dashtam-{run_id}"
    return {
        "run": root,
        "data": root / "pg",
        "socket": root / "s",
        "redis": root / "redis",
        "postgres_log": root / "postgres.log",
        "redis_log": root / "redis.log",
    }


@dataclass(frozen=True)
class Answers:
    """What the new servers said once they answered, and where the cluster came from."""

    redis_version: str
    redis_server: str
    redis_databases: int | None
    # server_version, then the values of TEST_TUNING's settings as the server reports them.
    postgres_settings: list[str]
    binary_version: str | None
    cluster_source: str


@dataclass
class Launch:
    """A stack this process is starting: its record and the processes spawned so far.

    The backend holds it from before the first spawn on, so that a start failing half-way (Ctrl-C
    included) and the backend's own stop tear down exactly what was started, no more.
    """

    options: BackendOptions
    state_dir: Path
    pg_bins: PgBinaries
    redis_bin: RedisBinary | None  # None: a project without Redis, none is started
    run_as: RunAs | None
    paths: dict[str, Path]
    state: StackState
    began: float
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Filling the initdb cache from a snapshot inside the run folder: joined before that folder goes.
    cache_filler: threading.Thread | None = None

    @classmethod
    def plan(
        cls,
        options: BackendOptions,
        state_dir: Path,
        pg_bins: PgBinaries,
        redis_bin: RedisBinary | None,
        run_as: RunAs | None,
    ) -> Launch:
        """Choose the run id, the folders and the ports and fill in the record; nothing is written yet."""
        env = options.env
        dev = env == "dev"
        began = time.perf_counter()
        run_id = "dev" if dev else f"{os.getpid()}-{secrets.token_hex(3)}"
        paths = _layout(env, state_dir, run_id, run_as)
        if dev:
            ports = dev_ports(state_dir)
        else:
            pg_port, redis_port = pick_free_ports(2)
            ports = {"postgres": pg_port, "redis": redis_port}
        state = StackState(
            run_id=run_id,
            env=env,
            owner=ProcessId.of(os.getpid()),
            keep=options.keep,
            started_at=time.time(),
            run_dir=str(paths["run"]),
            remove_run_dir=not dev,
            data_dir=str(paths["data"]),
            socket_dir=str(paths["socket"]),
            postgres_log=str(paths["postgres_log"]),
            redis_log=str(paths["redis_log"]),
            postgres_port=ports["postgres"],
            redis_port=ports["redis"],
            postgres_bin=str(pg_bins.postgres),
            postgres_identity=pg_bins.identity(),
            redis_bin=str(redis_bin.path) if redis_bin is not None else "",
        )
        return cls(options, state_dir, pg_bins, redis_bin, run_as, paths, state, began)

    def spawn(self, deadline: float, cache_dir: Path | None) -> Answers:
        """Make the folders, record the stack, spawn Redis and PostgreSQL and wait until both answer.

        On failure what was spawned is in `children` and the record: the caller tears it down.
        """
        dev = self.options.env == "dev"
        paths, state, run_as = self.paths, self.state, self.run_as
        paths["run"].mkdir(mode=0o755, parents=dev, exist_ok=dev)
        if not dev:
            paths["run"].chmod(0o755)  # whatever the umask: the server user must enter it
        # Recorded before anything is spawned: a crash from here on leaves a reapable record, and the janitor
        # (started now, before the first server) takes down whatever the record names if this run is killed.
        write_state(self.state_dir, state)
        if state.remove_run_dir and not state.keep:
            from pytest_dashtam.backends._local_janitor import spawn as spawn_janitor

            spawn_janitor(self.state_dir, state.run_id)
        paths["redis"].mkdir(mode=0o700, exist_ok=True)
        paths["socket"].mkdir(mode=0o755, exist_ok=True)
        if run_as is not None:
            os.chown(paths["socket"], run_as.uid, run_as.gid)
        # Redis first: it is ready in a few ms, while the cluster copy is under way.
        redis_proc = None
        if self.redis_bin is not None:
            redis_proc = spawn_redis(self.redis_bin, state.redis_port, paths["redis"], paths["redis_log"], dev)
            self.children["redis"] = redis_proc
            state.redis = ProcessId.of(redis_proc.pid)
            write_state(self.state_dir, state)  # before the cluster copy: a kill during it must not orphan Redis
        cluster_source: str = "existing cluster"
        if dev and (paths["data"] / "PG_VERSION").is_file():
            pg_version_bin = None
        else:
            if dev and paths["data"].exists():
                shutil.rmtree(paths["data"])  # a half-made cluster from an interrupted first start
            pg_version_bin, cluster_source, self.cache_filler = cluster_from_cache(
                self.pg_bins, paths["data"], run_as, paths["postgres_log"], cache_dir
            )
        settings = {} if dev else {**TEST_TUNING, **THROWAWAY_WAL}
        pg_proc = spawn_postgres(
            self.pg_bins, paths["data"], state.postgres_port, paths["socket"], paths["postgres_log"], settings, run_as
        )
        self.children["postgres"] = pg_proc
        state.postgres = ProcessId.of(pg_proc.pid)
        write_state(self.state_dir, state)
        redis_version, flavour, databases = (
            wait_redis(redis_proc, state.redis_port, deadline, paths["redis_log"])
            if redis_proc is not None
            else ("", "", None)
        )
        shown = wait_postgres(
            pg_proc, str(paths["socket"]), state.postgres_port, deadline, paths["postgres_log"], _SETTINGS
        )
        return Answers(redis_version, flavour, databases, shown, pg_version_bin, cluster_source)

    def describe(self, answers: Answers, copied_from: str | None) -> Stack:
        """The started stack, also written to its state file for later runs to attach to."""
        ready_s = time.perf_counter() - self.began
        dev = self.options.env == "dev"
        paths, state, pg_bins, redis_bin, run_as = self.paths, self.state, self.pg_bins, self.redis_bin, self.run_as
        shown = answers.postgres_settings
        tuning = {} if dev else {name: str(value) for name, value in zip(TEST_TUNING, shown[1:], strict=True)}
        facts = LocalFacts(
            run_id=state.run_id,
            run_dir=str(paths["run"]),
            data_dir=str(paths["data"]),
            socket_dir=str(paths["socket"]),
            state_file=str(state_path(self.state_dir, state.run_id)),
            postgres_port=state.postgres_port,
            redis_port=state.redis_port,
            postgres_pid=self.children["postgres"].pid,
            redis_pid=self.children["redis"].pid if "redis" in self.children else 0,
            postgres_log=str(paths["postgres_log"]),
            redis_log=str(paths["redis_log"]),
            postgres_bin=str(pg_bins.postgres),
            postgres_source=pg_bins.source,
            redis_bin=str(redis_bin.path) if redis_bin is not None else "",
            redis_source=redis_bin.source if redis_bin is not None else "",
            redis_server=answers.redis_server,
            run_as=run_as.name if run_as is not None else None,
            postgres_copied_from=copied_from,
            cluster_cache=answers.cluster_source,
            binary_version=answers.binary_version,
            keep=self.options.keep,
            ready_seconds=round(ready_s, 4),
        )
        stack = Stack(
            backend="local",
            env=self.options.env,
            postgres_url=f"postgresql://postgres@127.0.0.1:{state.postgres_port}/postgres",
            redis_url=f"redis://127.0.0.1:{state.redis_port}" if redis_bin is not None else "",
            postgres_version=shown[0],
            redis_version=answers.redis_version,
            tuning=tuning,
            owns_servers=True,
            started=True,
            redis_databases=answers.redis_databases,
            data_on_tmpfs=str(paths["run"]).startswith(str(TMPFS) + "/"),
            local=facts,
        )
        state.stack = stack.to_dict()
        write_state(self.state_dir, state)
        return stack
