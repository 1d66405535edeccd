"""The local backend: PostgreSQL and Redis/Valkey as child processes of the test run, no Docker.

env "test": a throw-away cluster copied from an initdb cache onto tmpfs, tuned for speed
(fsync/full_page_writes/synchronous_commit off), on free ports outside the kernel's ephemeral
range, removed at stop. env "dev": a persistent cluster under <project>/.dashtam/dev with normal
durability on fixed ports (DASHTAM_DEV_POSTGRES_PORT / DASHTAM_DEV_REDIS_PORT).

Every stack leaves a state file in its state folder. At start, stacks whose owner died are reaped
(never one whose owner lives), and a stack kept with `keep=True` is attached to instead of
starting another. As root, PostgreSQL runs as `postgres` (else `nobody`), which it insists on.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from pytest_dashtam.backends._local_binaries import PgBinaries, RedisBinary, find_postgres, find_redis
from pytest_dashtam.backends._local_procs import (
    RunAs,
    pick_free_ports,
    pick_run_as,
    port_is_free,
    unreachable_part,
)
from pytest_dashtam.backends._local_reach import reachable_binaries
from pytest_dashtam.backends._local_servers import (
    SEED_REQUEST,
    TEST_TUNING,
    PortInUseError,
    answers_as,
    cache_root,
    cluster_from_cache,
    save_seed,
    spawn_postgres,
    spawn_redis,
    wait_postgres,
    wait_redis,
)
from pytest_dashtam.backends._local_state import (
    StackState,
    locked,
    read_states,
    remove_state,
    state_path,
    write_state,
)
from pytest_dashtam.backends.base import BackendName, BackendOptions, LocalFacts, Stack, StackStatus
from pytest_dashtam.errors import BackendError, BinaryNotFoundError
from pytest_dashtam.process import ProcessId

TMPFS = Path("/dev/shm")
# Room a test cluster may grow to on tmpfs before we prefer the disk (a container's default
# /dev/shm of 64 MB is too small for PostgreSQL's data plus its dynamic shared memory).
TMPFS_MIN_FREE = 1 << 30
DEV_PORT_VARS = {"postgres": ("DASHTAM_DEV_POSTGRES_PORT", 5432), "redis": ("DASHTAM_DEV_REDIS_PORT", 6379)}
# The Unix socket path must fit in sun_path (108 bytes) with ".s.PGSQL.NNNNN" appended.
_MAX_SOCKET_DIR = 90
_PORT_RETRIES = 3
_PG_SHUTDOWN_WAIT = 15.0
# Read back once PostgreSQL accepts logins: its version, and what the tuning really is.
_SETTINGS = ("server_version", *TEST_TUNING)
# A start holds the state folder's lock for at most its own timeout: twice that means its holder hangs.
_LOCK_WAITS = 2


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


class LocalBackend:
    """PostgreSQL + Redis as local processes this run owns (see the module docstring)."""

    name: BackendName = "local"

    def __init__(self, options: BackendOptions, *, cache_dir: Path | None = None) -> None:
        self.options = options
        # None: the user's cache folder (DASHTAM_CACHE_DIR, XDG_CACHE_HOME or ~/.cache).
        self.cache_dir = cache_dir
        self._state: StackState | None = None
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._stack: Stack | None = None
        self._prev_sigterm: Any = None
        self._sigterm_installed = False
        self._atexit_registered = False
        self._cache_filler: threading.Thread | None = None
        # Where the binaries were copied from when the server user could not reach them.
        self._copied_from: str | None = None

    @property
    def state_dir(self) -> Path:
        return Path(os.path.abspath(self.options.resolved_state_dir()))

    # ------------------------------------------------------------------------------ start

    def available(self) -> bool:
        """PostgreSQL and Redis/Valkey binaries are found (no server is run to find out)."""
        try:
            find_postgres(self.options.postgres_bin)
            find_redis(self.options.redis_bin)
        except BinaryNotFoundError:
            return False
        return True

    def template_built(self, stack: Stack) -> None:
        """Ask that this test stack's cluster, once its owner stops it, seed the next runs' clusters.

        A throw-away cluster is new every run, so a template built in it would be built again next run;
        seeded with this cluster, the next run starts with the template in place and reuses it while its
        hash matches. A file in the run folder carries the request, because under xdist the process that
        built the template need not be the one that stops the stack.
        """
        facts = stack.local
        if stack.backend != "local" or stack.env != "test" or not stack.owns_servers or facts is None:
            return
        with contextlib.suppress(OSError):
            (Path(facts.run_dir) / SEED_REQUEST).touch()

    def start(self) -> Stack:
        """Attach to a kept (or, for dev, running) stack, else start one; reap dead owners' stacks."""
        if self._stack is not None:
            return self._stack
        deadline = time.monotonic() + self.options.timeout
        pg_bins = find_postgres(self.options.postgres_bin)
        redis_bin = find_redis(self.options.redis_bin)
        run_as = pick_run_as()
        if run_as is not None:
            pg_bins, self._copied_from = reachable_binaries(pg_bins, run_as)
        elif os.geteuid() == 0:
            raise BackendError(
                "PostgreSQL refuses to run as root and this system has neither a 'postgres' nor a 'nobody' "
                "user to run it as: create one (useradd --system postgres) or run the tests as another user"
            )
        try:
            with locked(self.state_dir, _LOCK_WAITS * self.options.timeout):
                attached = self._reap_and_attach(pg_bins, redis_bin)
                if attached is not None:
                    self._stack = attached
                    return attached
                for attempt in range(_PORT_RETRIES):
                    try:
                        stack = self._start_new(pg_bins, redis_bin, run_as, deadline)
                    except PortInUseError:
                        if self.options.env == "dev" or attempt == _PORT_RETRIES - 1:
                            raise
                        continue
                    self._stack = stack
                    return stack
        except OSError as exc:
            # A folder we cannot create or write (state dir, tmpfs, cache): say which, no traceback.
            raise BackendError(
                f"local backend could not prepare its files: {exc}; check the state dir "
                f"{self.state_dir} and the cache dir are writable"
            ) from exc
        raise AssertionError("unreachable")

    def _base_run_dir(self, run_as: RunAs | None) -> Path:
        if _tmpfs_usable():
            return TMPFS
        base = self.state_dir / "runs"
        base.mkdir(parents=True, exist_ok=True)
        if run_as is not None:
            blocked = unreachable_part(base, run_as, 1)
            if blocked is not None:
                raise BackendError(
                    f"/dev/shm has no room and user {run_as.name!r} (PostgreSQL refuses root) cannot reach "
                    f"{base} ({blocked} is not searchable): chmod o+x {blocked} or choose another state dir"
                )
        return base

    def _layout(self, run_id: str, run_as: RunAs | None) -> dict[str, Path]:
        if self.options.env == "dev":
            root = self.state_dir
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
        root = self._base_run_dir(run_as) / f"dashtam-{run_id}"
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

    def _start_new(self, pg_bins: PgBinaries, redis_bin: RedisBinary, run_as: RunAs | None, deadline: float) -> Stack:
        env = self.options.env
        dev = env == "dev"
        t0 = time.perf_counter()
        run_id = "dev" if dev else f"{os.getpid()}-{secrets.token_hex(3)}"
        paths = self._layout(run_id, run_as)
        if dev:
            ports = dev_ports(self.state_dir)
        else:
            pg_port, redis_port = pick_free_ports(2)
            ports = {"postgres": pg_port, "redis": redis_port}
        state = StackState(
            run_id=run_id,
            env=env,
            owner=ProcessId.of(os.getpid()),
            keep=self.options.keep,
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
            redis_bin=str(redis_bin.path),
        )
        self._state = state
        self._install_handlers()
        try:
            paths["run"].mkdir(mode=0o755, parents=dev, exist_ok=dev)
            if not dev:
                paths["run"].chmod(0o755)  # whatever the umask: the server user must enter it
            # Recorded before anything is spawned: a crash from here on leaves a reapable record.
            write_state(self.state_dir, state)
            paths["redis"].mkdir(mode=0o700, exist_ok=True)
            paths["socket"].mkdir(mode=0o755, exist_ok=True)
            if run_as is not None:
                os.chown(paths["socket"], run_as.uid, run_as.gid)
            # Redis first: it is ready in a few ms, while the cluster copy is under way.
            redis_proc = spawn_redis(redis_bin, ports["redis"], paths["redis"], paths["redis_log"], dev)
            self._children["redis"] = redis_proc
            state.redis = ProcessId.of(redis_proc.pid)
            cluster_source: str = "existing cluster"
            if dev and (paths["data"] / "PG_VERSION").is_file():
                pg_version_bin = None
            else:
                if dev and paths["data"].exists():
                    shutil.rmtree(paths["data"])  # a half-made cluster from an interrupted first start
                pg_version_bin, cluster_source, self._cache_filler = cluster_from_cache(
                    pg_bins, paths["data"], run_as, paths["postgres_log"], self.cache_dir
                )
            settings = {} if dev else dict(TEST_TUNING)
            pg_proc = spawn_postgres(
                pg_bins, paths["data"], ports["postgres"], paths["socket"], paths["postgres_log"], settings, run_as
            )
            self._children["postgres"] = pg_proc
            state.postgres = ProcessId.of(pg_proc.pid)
            write_state(self.state_dir, state)
            redis_version, flavour, databases = wait_redis(redis_proc, ports["redis"], deadline, paths["redis_log"])
            shown = wait_postgres(
                pg_proc, str(paths["socket"]), ports["postgres"], deadline, paths["postgres_log"], _SETTINGS
            )
        except BaseException:
            self._teardown_own()
            self._remove_handlers()
            raise
        ready_s = time.perf_counter() - t0
        tuning = {} if dev else {name: str(value) for name, value in zip(TEST_TUNING, shown[1:], strict=True)}
        facts = LocalFacts(
            run_id=run_id,
            run_dir=str(paths["run"]),
            data_dir=str(paths["data"]),
            socket_dir=str(paths["socket"]),
            state_file=str(state_path(self.state_dir, run_id)),
            postgres_port=ports["postgres"],
            redis_port=ports["redis"],
            postgres_pid=pg_proc.pid,
            redis_pid=redis_proc.pid,
            postgres_log=str(paths["postgres_log"]),
            redis_log=str(paths["redis_log"]),
            postgres_bin=str(pg_bins.postgres),
            postgres_source=pg_bins.source,
            redis_bin=str(redis_bin.path),
            redis_source=redis_bin.source,
            redis_server=flavour,
            run_as=run_as.name if run_as is not None else None,
            postgres_copied_from=self._copied_from,
            cluster_cache=cluster_source,
            binary_version=pg_version_bin,
            keep=self.options.keep,
            ready_seconds=round(ready_s, 4),
        )
        stack = Stack(
            backend="local",
            env=env,
            postgres_url=f"postgresql://postgres@127.0.0.1:{ports['postgres']}/postgres",
            redis_url=f"redis://127.0.0.1:{ports['redis']}",
            postgres_version=shown[0],
            redis_version=redis_version,
            tuning=tuning,
            owns_servers=True,
            started=True,
            redis_databases=databases,
            data_on_tmpfs=str(paths["run"]).startswith(str(TMPFS) + "/"),
            local=facts,
        )
        state.stack = stack.to_dict()
        write_state(self.state_dir, state)
        return stack

    # ------------------------------------------------------------------------------ reaping and attaching

    def _compatible(self, state: StackState, pg_bins: PgBinaries, redis_bin: RedisBinary) -> bool:
        """The recorded servers are alive, answer on their ports with the versions recorded, and
        run the binaries this run would have started."""
        if not state.stack or not state.servers_alive():
            return False
        if state.postgres_identity != pg_bins.identity() or state.redis_bin != str(redis_bin.path):
            return False
        stack = state.the_stack()
        redis_pid = state.redis.pid if state.redis is not None else None
        return answers_as(state.postgres_port, state.redis_port, stack.postgres_version, stack.redis_version, redis_pid)

    def _reap_and_attach(self, pg_bins: PgBinaries, redis_bin: RedisBinary) -> Stack | None:
        env = self.options.env
        attach: Stack | None = None
        for path, state in read_states(self.state_dir):
            if state is None:
                with contextlib.suppress(OSError):
                    path.unlink()  # unparsable: written atomically, so it is garbage, not half-written
                continue
            if state.env != env:
                continue
            owner_alive = state.owner.alive()
            # Kept stacks are there to be attached to; a dev stack whose owner runs (`dashtam-env up
            # dev` in another terminal) is shared rather than fought over. A dev stack whose owner
            # died is reaped like any other: stopped gracefully, its data kept, and started anew.
            usable = (state.keep or (env == "dev" and owner_alive)) and self._compatible(state, pg_bins, redis_bin)
            if usable and attach is None:
                attach = dataclasses.replace(state.the_stack(), started=False)
                continue
            if owner_alive:
                if env == "dev":  # one dev cluster per folder: never start a second on its data
                    raise BackendError(
                        f"the dev stack of live process {state.owner.pid} runs other binaries or does not "
                        f"answer; stop that process (or `dashtam-env down dev`) first"
                    )
                continue  # someone's live stack: never touched
            _teardown_state(state)
            remove_state(self.state_dir, state.run_id)
        return attach

    # ------------------------------------------------------------------------------ stop

    def stop(self) -> None:
        """Stop what `start()` started (unless `keep`); leave what it attached to running.

        Stacks left running on purpose by earlier processes are `down()`'s business, not this.
        """
        self._join_cache_filler()
        if self._state is not None:
            if not self.options.keep:
                self._teardown_own()
            self._state = None
            self._children = {}
        self._stack = None
        self._remove_handlers()

    def down(self) -> None:
        """Stop this env's stacks in the state folder whoever started them (`dashtam-env down`).

        Kept stacks and stacks whose owner died are stopped (a test stack's files removed, a dev
        stack's data kept). A stack a live run owns without `keep` is that run's to stop: it is
        left alone and named in a BackendError, after the others are stopped.
        """
        if not self.state_dir.is_dir():
            return
        busy: list[str] = []
        with locked(self.state_dir, _LOCK_WAITS * self.options.timeout):
            for _path, state in read_states(self.state_dir):
                if state is None or state.env != self.options.env:
                    continue
                if state.owner.alive() and not state.keep:
                    if state.any_server_alive():
                        busy.append(f"pid {state.owner.pid}")
                    continue
                _teardown_state(state)
                remove_state(self.state_dir, state.run_id)
        if busy:
            raise BackendError(
                f"local {self.options.env} stack(s) of runs still going ({', '.join(busy)}) was left running: "
                "let that run finish (it stops its own stack) or stop that process first"
            )

    def logs(self, lines: int = 200) -> str:
        """The last `lines` of the servers' logs of this env's newest stack (`dashtam-env logs`)."""
        states = [s for _p, s in read_states(self.state_dir) if s is not None and s.env == self.options.env]
        if not states:
            return f"no local {self.options.env} stack in {self.state_dir}\n"
        newest = max(states, key=lambda s: s.started_at)
        out: list[str] = []
        for server, path in (("postgres", newest.postgres_log), ("redis", newest.redis_log)):
            try:
                text = Path(path).read_text(errors="replace").splitlines()[-lines:]
            except OSError as exc:
                text = [f"(no log: {exc.strerror})"]
            out.extend(f"{server} | {line}" for line in text)
        return "\n".join(out) + "\n"

    def _join_cache_filler(self) -> None:
        """The cache is filled from a snapshot inside the run folder: let it finish first."""
        if self._cache_filler is not None:
            self._cache_filler.join(timeout=120)
            self._cache_filler = None

    def _teardown_own(self) -> None:
        self._join_cache_filler()
        state = self._state
        if state is None:
            return
        _teardown_state(state, self._children, seed_cache=self.cache_dir or cache_root())
        remove_state(self.state_dir, state.run_id)
        self._state = None
        self._children = {}

    # ------------------------------------------------------------------------------ status

    def status(self) -> StackStatus:
        """The newest stack of this env in the state folder whose servers still run."""
        live: list[StackState] = []
        for _path, state in read_states(self.state_dir):
            if state is not None and state.env == self.options.env and state.stack and state.servers_alive():
                live.append(state)
        if not live:
            return StackStatus(running=False, detail=f"no local {self.options.env} stack in {self.state_dir}")
        newest = max(live, key=lambda s: s.started_at)
        owner = "alive" if newest.owner.alive() else "gone"
        detail = (
            f"postgres :{newest.postgres_port} (pid {newest.postgres.pid if newest.postgres else '?'}), "
            f"redis :{newest.redis_port} (pid {newest.redis.pid if newest.redis else '?'}), "
            f"owner pid {newest.owner.pid} ({owner}){', kept' if newest.keep else ''}, data {newest.data_dir}"
        )
        if len(live) > 1:
            detail += f"; {len(live) - 1} more stack(s) running"
        return StackStatus(running=True, stack=newest.the_stack(), since=newest.started_at, detail=detail)

    # ------------------------------------------------------------------------------ signals

    def _install_handlers(self) -> None:
        """Make SIGTERM unwind like Ctrl-C so teardown runs; atexit catches a forgotten stop()."""
        if not self._atexit_registered:
            atexit.register(self._at_exit)
            self._atexit_registered = True
        if threading.current_thread() is not threading.main_thread() or self._sigterm_installed:
            return
        previous = signal.getsignal(signal.SIGTERM)
        if previous not in (signal.SIG_DFL, None):
            return  # the application or pytest handles SIGTERM already: leave it to them
        self._prev_sigterm = previous
        signal.signal(signal.SIGTERM, _raise_interrupt)
        self._sigterm_installed = True

    def _remove_handlers(self) -> None:
        if self._sigterm_installed and threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGTERM) is _raise_interrupt:
                signal.signal(signal.SIGTERM, self._prev_sigterm)
            self._sigterm_installed = False
        if self._atexit_registered:
            atexit.unregister(self._at_exit)
            self._atexit_registered = False

    def _at_exit(self) -> None:
        self._join_cache_filler()
        if self._state is not None and not self.options.keep:
            with contextlib.suppress(Exception):
                self._teardown_own()


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _teardown_state(
    state: StackState,
    children: dict[str, subprocess.Popen[bytes]] | None = None,
    *,
    seed_cache: Path | None = None,
) -> None:
    """Stop a stack's servers (by recorded PID and start time only) and remove its throw-away files.

    PostgreSQL gets SIGINT (fast shutdown, ~15 ms) and a wait; a throw-away Redis/Valkey gets
    SIGKILL (Valkey takes ~100 ms to exit on SIGTERM); a dev Redis gets SIGTERM so it saves.
    With `seed_cache` (the owner's own teardown, not a reaping), a cluster whose run asked for it
    is kept as the next runs' seed before its files go.
    """
    children = children or {}
    throwaway = state.remove_run_dir
    if state.redis is not None and throwaway:
        state.redis.stop(signal.SIGKILL, 5.0, children.get("redis"))
    if state.postgres is not None:
        state.postgres.stop(signal.SIGINT, _PG_SHUTDOWN_WAIT, children.get("postgres"))
    if state.redis is not None and not throwaway:
        state.redis.stop(signal.SIGTERM, 10.0, children.get("redis"))
    for child in children.values():
        with contextlib.suppress(Exception):
            child.wait(timeout=1.0)
    if (
        seed_cache is not None
        and throwaway
        and state.run_dir
        and state.data_dir
        and (Path(state.run_dir) / SEED_REQUEST).exists()
    ):
        version = str((state.stack or {}).get("postgres_version", ""))
        save_seed(Path(state.data_dir), state.postgres_identity, version, seed_cache)
    if throwaway and state.run_dir:
        shutil.rmtree(state.run_dir, ignore_errors=True)

