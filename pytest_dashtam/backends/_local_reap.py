"""Stacks recorded in a state folder: attach to a usable kept one, reap dead owners', stop one's servers.

Only what a state file records is touched, and servers are signalled by recorded PID and process
start time, so a process that reused a dead server's PID is never hit. A live owner's stack is
never reaped: it is attached to when kept (or, for dev, shared), and left alone otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import signal
import subprocess
from pathlib import Path

from pytest_dashtam.backends._local_binaries import PgBinaries, RedisBinary
from pytest_dashtam.backends._local_cluster import SEED_REQUEST, save_seed
from pytest_dashtam.backends._local_servers import answers_as
from pytest_dashtam.backends._local_state import StackState, read_states, remove_state
from pytest_dashtam.backends.base import EnvName, Stack
from pytest_dashtam.errors import BackendError

_PG_SHUTDOWN_WAIT = 15.0


def _compatible(state: StackState, pg_bins: PgBinaries, redis_bin: RedisBinary | None) -> bool:
    """The recorded servers are alive, answer on their ports with the versions recorded, and
    run the binaries this run would have started (no Redis for a run without, and only then)."""
    if not state.stack or not state.servers_alive():
        return False
    wanted_redis = str(redis_bin.path) if redis_bin is not None else ""
    if state.postgres_identity != pg_bins.identity() or state.redis_bin != wanted_redis:
        return False
    stack = state.the_stack()
    redis_pid = state.redis.pid if state.redis is not None else None
    redis_port = state.redis_port if redis_bin is not None else None
    return answers_as(state.postgres_port, redis_port, stack.postgres_version, stack.redis_version, redis_pid)


def reap_and_attach(
    state_dir: Path, env: EnvName, pg_bins: PgBinaries, redis_bin: RedisBinary | None
) -> Stack | None:
    """Reap this env's stacks whose owner died; return a usable kept (or shared dev) stack, attached.

    The caller holds the state folder's lock.
    """
    attach: Stack | None = None
    for path, state in read_states(state_dir):
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
        usable = (state.keep or (env == "dev" and owner_alive)) and _compatible(state, pg_bins, redis_bin)
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
        teardown_state(state)
        remove_state(state_dir, state.run_id)
    return attach


def teardown_state(
    state: StackState,
    children: dict[str, subprocess.Popen[bytes]] | None = None,
    *,
    seed_cache: Path | None = None,
) -> None:
    """Stop a stack's servers (by recorded PID and start time only) and remove its throw-away files.

    PostgreSQL gets SIGINT (fast shutdown, ~15 ms) and a wait; a throw-away Redis/Valkey gets
    SIGKILL (Valkey takes ~100 ms to exit on SIGTERM); a dev Redis gets SIGTERM so it saves.
    With `seed_cache` (the owner's own teardown, not a reaping), a cluster whose run asked for it
    is kept as the next runs' seed before its files go, unless a server was found frozen.
    """
    children = children or {}
    throwaway = state.remove_run_dir
    # A server found frozen (SIGSTOP, a paused debugger) is what ended the run: its cluster is not copied as
    # the next runs' seed, a copy that would only lengthen the end of a run failing on a hung server.
    frozen = any(server is not None and server.frozen() for server in (state.postgres, state.redis))
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
        and not frozen
        and throwaway
        and state.run_dir
        and state.data_dir
        and (Path(state.run_dir) / SEED_REQUEST).exists()
    ):
        version = str((state.stack or {}).get("postgres_version", ""))
        save_seed(Path(state.data_dir), state.postgres_identity, version, seed_cache)
    if throwaway and state.run_dir:
        shutil.rmtree(state.run_dir, ignore_errors=True)
