"""Process identity, kills that cannot hit a foreign process, users' reach, port choice."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dashtam.backends import _local_procs
from pytest_dashtam.backends._local_procs import (
    ProcRef,
    RunAs,
    ephemeral_range,
    pick_free_ports,
    port_is_free,
    stop_group,
    unreachable_part,
)

NOBODY = RunAs(name="nobody", uid=65534, gid=65534)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_ref_of_live_process_is_alive(sleeper: subprocess.Popen[bytes]) -> None:
    ref = ProcRef.of(sleeper.pid)
    assert ref.alive()
    assert ProcRef.from_dict(ref.to_dict()) == ref


def test_reused_pid_is_never_signalled(sleeper: subprocess.Popen[bytes]) -> None:
    """A state file's PID now held by another process (other start time): no signal reaches it."""
    foreign = dataclasses.replace(ProcRef.of(sleeper.pid), start_time=ProcRef.of(sleeper.pid).start_time - 1)
    assert not foreign.alive()
    assert foreign.signal_group(signal.SIGKILL) is False
    assert foreign.signal_leader(signal.SIGKILL) is False
    stop_group(foreign, signal.SIGINT, 0.05)
    assert sleeper.poll() is None  # still running


def test_ref_from_another_boot_is_dead(sleeper: subprocess.Popen[bytes]) -> None:
    ref = dataclasses.replace(ProcRef.of(sleeper.pid), boot="another-boot")
    assert not ref.alive()
    assert ref.signal_group(signal.SIGKILL) is False
    assert sleeper.poll() is None


def test_stop_group_kills_the_recorded_process(sleeper: subprocess.Popen[bytes]) -> None:
    ref = ProcRef.of(sleeper.pid)
    stop_group(ref, signal.SIGKILL, 5.0, sleeper)
    assert sleeper.wait(5) == -signal.SIGKILL
    assert not ref.alive()


def test_stop_group_reaps_a_child_it_has_no_handle_for() -> None:
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    ref = ProcRef.of(proc.pid)
    stop_group(ref, signal.SIGTERM, 5.0)  # no Popen given: reaped by PID
    assert not Path(f"/proc/{proc.pid}").exists()
    proc.returncode = 0  # already reaped; keep Popen.__del__ quiet


def test_ports_are_free_distinct_and_outside_the_ephemeral_range() -> None:
    low, high = ephemeral_range()
    ports = pick_free_ports(5)
    assert len(set(ports)) == 5
    for port in ports:
        assert not low <= port <= high
        assert port >= 1024
        assert port_is_free(port)


def test_ports_above_a_range_that_leaves_no_room_below(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "range"
    fake.write_text("1024\t60999\n")
    monkeypatch.setattr(_local_procs, "_PORT_RANGE_FILE", fake)
    assert all(port > 60999 for port in pick_free_ports(3))


def test_listening_port_is_not_free() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert not port_is_free(sock.getsockname()[1])


def test_unreachable_part_names_the_closed_folder() -> None:
    base = Path(tempfile.mkdtemp(prefix="dashtam-unit-"))
    try:
        base.chmod(0o755)
        closed = base / "closed"
        closed.mkdir(mode=0o700)
        (closed / "bin").mkdir()
        assert unreachable_part(base, NOBODY) is None
        assert unreachable_part(closed / "bin", NOBODY) == closed
        # A symlink from a reachable place does not help when the target's folder is closed.
        (base / "link").symlink_to(closed / "bin")
        assert unreachable_part(base / "link", NOBODY) == closed
        # Write access asked for the last element.
        assert unreachable_part(base, NOBODY, 2) == base
    finally:
        shutil.rmtree(base)


@pytest.mark.skipif(os.geteuid() != 0, reason="the run-as user is chosen only for root")
def test_root_picks_an_unprivileged_user() -> None:
    run_as = _local_procs.pick_run_as()
    assert run_as is not None
    assert run_as.uid != 0
    assert run_as.name in {"postgres", "nobody"}


def test_group_of_a_dead_leader_is_still_cleaned_up() -> None:
    """A PostgreSQL backend can outlive its killed postmaster; its group is still ours to kill."""
    leader = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE, start_new_session=True)
    assert leader.stdout is not None
    member = int(leader.stdout.readline())
    ref = ProcRef.of(leader.pid)
    os.kill(leader.pid, signal.SIGKILL)
    leader.wait(5)
    assert _local_procs.process_group(member) == leader.pid  # orphaned, still in the group
    assert ref.signal_group(signal.SIGKILL) is True
    for _ in range(500):
        if _local_procs.process_start_time(member) is None:
            break
        time.sleep(0.01)
    assert _local_procs.process_start_time(member) is None
    assert ref.signal_group(signal.SIGKILL) is False  # nothing left: nothing signalled
