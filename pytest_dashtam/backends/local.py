"""The local backend: PostgreSQL and Redis/Valkey as child processes of the test run, no Docker.

env "test": a throw-away cluster copied from an initdb cache onto tmpfs, tuned for speed
(fsync/full_page_writes/synchronous_commit off), on free ports outside the kernel's ephemeral
range, removed at stop. env "dev": a persistent cluster under <project>/.dashtam/dev with normal
durability on fixed ports (DASHTAM_DEV_POSTGRES_PORT / DASHTAM_DEV_REDIS_PORT).

Every stack leaves a state file in its state folder. At start, stacks whose owner died are reaped
(never one whose owner lives), and a stack kept with `keep=True` is attached to instead of
starting another. As root, PostgreSQL runs as `postgres` (else `nobody`), which it insists on.

This module is the backend's surface; the work is in `_local_start` (a new stack's files, ports and
servers), `_local_reap` (recorded stacks: attach, reap, stop), `_local_cluster` (where a fresh
cluster comes from: seed, initdb cache, initdb) and `_local_servers` (spawning and readiness).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from pytest_dashtam.backends._local_binaries import PgBinaries, RedisBinary, find_postgres, find_redis
from pytest_dashtam.backends._local_cluster import SEED_REQUEST, seed_cache_root
from pytest_dashtam.backends._local_procs import RunAs, pick_run_as
from pytest_dashtam.backends._local_reach import reachable_binaries
from pytest_dashtam.backends._local_reap import reap_and_attach, teardown_state
from pytest_dashtam.backends._local_servers import PortInUseError
from pytest_dashtam.backends._local_start import Launch
from pytest_dashtam.backends._local_state import StackState, locked, read_states, remove_state
from pytest_dashtam.backends.base import BackendName, BackendOptions, Stack, StackStatus
from pytest_dashtam.errors import BackendError, BinaryNotFoundError

_PORT_RETRIES = 3
# A start holds the state folder's lock for at most its own timeout: twice that means its holder hangs.
_LOCK_WAITS = 2


class LocalBackend:
    """PostgreSQL + Redis as local processes this run owns (see the module docstring)."""

    name: BackendName = "local"

    def __init__(self, options: BackendOptions, *, cache_dir: Path | None = None) -> None:
        self.options = options
        # None: the user's cache folder (DASHTAM_CACHE_DIR, XDG_CACHE_HOME or ~/.cache).
        self.cache_dir = cache_dir
        # What this object started, until it stops it (None when it attached to a stack instead).
        self._launch: Launch | None = None
        self._stack: Stack | None = None
        self._prev_sigterm: Any = None
        self._sigterm_installed = False
        self._atexit_registered = False
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
            if self.options.redis:
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
        redis_bin = find_redis(self.options.redis_bin) if self.options.redis else None  # a project without Redis
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
                attached = reap_and_attach(self.state_dir, self.options.env, pg_bins, redis_bin)
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

    def _start_new(
        self, pg_bins: PgBinaries, redis_bin: RedisBinary | None, run_as: RunAs | None, deadline: float) -> Stack:
        launch = Launch.plan(self.options, self.state_dir, pg_bins, redis_bin, run_as)
        self._launch = launch
        self._install_handlers()
        try:
            answers = launch.spawn(deadline, self.cache_dir)
        except BaseException:
            self._teardown_own()
            self._remove_handlers()
            raise
        return launch.describe(answers, self._copied_from)

    # ------------------------------------------------------------------------------ stop

    def stop(self) -> None:
        """Stop what `start()` started (unless `keep`); leave what it attached to running.

        Stacks left running on purpose by earlier processes are `down()`'s business, not this.
        """
        self._join_cache_filler()
        if self._launch is not None:
            if not self.options.keep:
                self._teardown_own()
            self._launch = None
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
                teardown_state(state)
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
        launch = self._launch
        if launch is not None and launch.cache_filler is not None:
            launch.cache_filler.join(timeout=120)
            launch.cache_filler = None

    def _prune_seed(self, launch: Launch) -> None:
        """A cluster about to become the next runs' seed keeps only the newest templates (schema's
        `prune_for_seed`): the seed is copied on every later start. Best effort: a cluster that cannot be
        pruned is kept as it is."""
        state, stack = launch.state, self._stack
        if stack is None or not state.run_dir or not (Path(state.run_dir) / SEED_REQUEST).exists():
            return
        if state.postgres is None or state.postgres.frozen():  # a stopped server would only make us wait
            return
        from pytest_dashtam.isolation import run_async
        from pytest_dashtam.schema import prune_for_seed

        with contextlib.suppress(Exception):
            run_async(lambda: prune_for_seed(stack.postgres_url))

    def _teardown_own(self) -> None:
        self._join_cache_filler()
        launch = self._launch
        if launch is None:
            return
        self._prune_seed(launch)
        teardown_state(launch.state, launch.children, seed_cache=self.cache_dir or seed_cache_root())
        remove_state(self.state_dir, launch.state.run_id)
        self._launch = None

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
        if self._launch is not None and not self.options.keep:
            with contextlib.suppress(Exception):
                self._teardown_own()


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
