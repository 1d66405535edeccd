"""Process identity: a recorded PID is acted on only while it is still the process that was recorded."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pytest_dashtam import process
from pytest_dashtam.process import GONE, ProcessId


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _proc_stat_start(pid: int) -> int:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return int(raw[raw.rindex(")") + 2 :].split()[19])


def test_the_start_time_is_the_one_earlier_records_hold(sleeper: subprocess.Popen[bytes]) -> None:
    """Clock ticks after boot, as /proc/PID/stat says: state files and compose labels written by earlier
    versions (and read by them) keep their meaning."""
    assert process.start_time(sleeper.pid) == _proc_stat_start(sleeper.pid)
    assert process.start_time(os.getpid()) == _proc_stat_start(os.getpid())


def test_identity_of_a_live_process(sleeper: subprocess.Popen[bytes]) -> None:
    ref = ProcessId.of(sleeper.pid)
    assert ref.alive()
    assert ProcessId.from_dict(ref.to_dict()) == ref
    assert ProcessId.of().pid == os.getpid()
    assert process.alive(sleeper.pid, ref.start_time)
    assert process.alive(sleeper.pid)  # start unknown: the PID's existence is all there is


def test_a_reused_pid_is_never_signalled(sleeper: subprocess.Popen[bytes]) -> None:
    """A record whose PID is now held by another process (other start time): nothing reaches that one."""
    foreign = dataclasses.replace(ProcessId.of(sleeper.pid), start_time=ProcessId.of(sleeper.pid).start_time - 1)
    assert not foreign.alive()
    assert not process.alive(sleeper.pid, foreign.start_time)
    assert foreign.signal_group(signal.SIGKILL) is False
    assert foreign.signal(signal.SIGKILL) is False
    foreign.stop(signal.SIGINT, 0.05)
    assert foreign.wait_gone(0.05)  # the recorded process is gone, whatever holds its PID now
    assert sleeper.poll() is None  # still running


def test_a_record_from_another_boot_is_dead(sleeper: subprocess.Popen[bytes]) -> None:
    ref = dataclasses.replace(ProcessId.of(sleeper.pid), boot="another-boot")
    assert not ref.alive()
    assert ref.signal_group(signal.SIGKILL) is False
    assert sleeper.poll() is None


def test_a_process_gone_before_it_was_recorded_matches_nothing() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    ref = ProcessId.of(proc.pid)
    assert ref.start_time == GONE
    assert not ref.alive()
    assert process.start_time(proc.pid) is None
    assert not process.alive(proc.pid)
    assert not process.alive(0)


def test_stop_kills_the_recorded_process(sleeper: subprocess.Popen[bytes]) -> None:
    ref = ProcessId.of(sleeper.pid)
    ref.stop(signal.SIGKILL, 5.0, sleeper)
    assert sleeper.wait(5) == -signal.SIGKILL
    assert not ref.alive()


def test_stop_collects_a_child_it_has_no_handle_for() -> None:
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    ref = ProcessId.of(proc.pid)
    ref.stop(signal.SIGTERM, 5.0)  # no Popen given: collected by PID
    assert not Path(f"/proc/{proc.pid}").exists()
    proc.returncode = 0  # already collected; keep Popen.__del__ quiet


def test_a_zombie_is_dead() -> None:
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as child:
        ref = ProcessId.of(child.pid)
        os.kill(child.pid, signal.SIGKILL)
        for _ in range(500):  # killed, not yet waited for: a zombie
            if psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE:
                break
            time.sleep(0.01)
        assert not ref.alive()
        assert not process.alive(child.pid, ref.start_time)
        assert ref.wait_gone(1.0, child)


def test_wait_gone_is_bounded(sleeper: subprocess.Popen[bytes]) -> None:
    started = time.monotonic()
    assert ProcessId.of(sleeper.pid).wait_gone(0.1) is False
    assert time.monotonic() - started < 2.0
    assert sleeper.poll() is None


def test_group_of_a_dead_leader_is_still_cleaned_up() -> None:
    """A PostgreSQL backend can outlive its killed postmaster; its group is still ours to kill."""
    leader = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE, start_new_session=True)
    assert leader.stdout is not None
    member = int(leader.stdout.readline())
    ref = ProcessId.of(leader.pid)
    os.kill(leader.pid, signal.SIGKILL)
    leader.wait(5)
    leader.stdout.close()
    assert process.process_group(member) == leader.pid  # orphaned, still in the group
    assert ref.signal_group(signal.SIGKILL) is True
    for _ in range(500):
        if process.start_time(member) is None:
            break
        time.sleep(0.01)
    assert process.start_time(member) is None
    assert ref.signal_group(signal.SIGKILL) is False  # nothing left: nothing signalled
