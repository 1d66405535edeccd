"""Is this still the process I recorded? One answer for every backend and the xdist coordination.

A PID alone names no process: a server or an owner recorded by a run that crashed may be gone and its PID
handed to someone else's process since, which must never be signalled nor waited for. A record is therefore
the PID, the process's start time and the boot it ran in, and every kill, wait and "alive?" here compares
all three first (psutil reads the start time; the comparison is ours).

The start time is kept in clock ticks after boot, the unit of /proc/PID/stat: unlike psutil's epoch
`create_time()` it does not move when the system clock is stepped, so equality is exact, and it is what
state files and compose labels have always held, so the records of a stack that another checkout's run
owns keep their meaning on both sides.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil

from pytest_dashtam.poll import PollTimeout, poll

_BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# A start time that no process has: the process was gone before it could be recorded.
GONE = -1


def boot_id() -> str:
    """This boot's identity: a PID and start time recorded before a reboot mean nothing after it."""
    try:
        return _BOOT_ID_FILE.read_text().strip()
    except OSError:
        return ""


def _ticks(proc: psutil.Process) -> int:
    return round((proc.create_time() - psutil.boot_time()) * _CLOCK_TICKS)


def start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks after boot); None when it is gone or a zombie."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return _ticks(proc)
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def process_group(pid: int) -> int | None:
    """The process group of `pid`, None when it is gone."""
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def alive(pid: int, started: int | None = None) -> bool:
    """`pid` runs (a zombie does not) and, when `started` is known, is the process that started then."""
    if pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or _ticks(proc) == started
    except psutil.AccessDenied:
        return True  # it exists but hides its details (hidepid): never take it for dead
    except (psutil.NoSuchProcess, ValueError):
        return False


def _backoff(waited: float) -> float:
    # A process asked to exit is usually gone within milliseconds: pause as long as waited so far (the pauses
    # double), from 1 ms up to 20 ms.
    return min(max(waited, 0.001), 0.02)


@dataclass(frozen=True)
class ProcessId:
    """A process as a state file or a label records it: PID, start time (clock ticks after boot), boot."""

    pid: int
    start_time: int
    boot: str

    @classmethod
    def of(cls, pid: int | None = None) -> ProcessId:
        """The identity of `pid` (default: this process) now; one that matches nothing if it is gone."""
        pid = os.getpid() if pid is None else pid
        started = start_time(pid)
        return cls(pid=pid, start_time=GONE if started is None else started, boot=boot_id())

    def to_dict(self) -> dict[str, object]:
        return {"pid": self.pid, "start_time": self.start_time, "boot": self.boot}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ProcessId:
        return cls(pid=int(str(data["pid"])), start_time=int(str(data["start_time"])), boot=str(data["boot"]))

    def _same(self) -> psutil.Process | None:
        """The recorded process, a zombie included, or None when it is gone or the PID is someone else's."""
        if self.start_time == GONE or self.boot != boot_id():
            return None
        try:
            proc = psutil.Process(self.pid)
            return proc if _ticks(proc) == self.start_time else None
        except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
            return None

    def alive(self) -> bool:
        """The very process we recorded still runs (not a zombie, not a newcomer with its PID)."""
        proc = self._same()
        try:
            return proc is not None and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def frozen(self) -> bool:
        """The recorded process is stopped (SIGSTOP, a debugger): it runs no code until continued."""
        proc = self._same()
        try:
            return proc is not None and proc.status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
        except psutil.NoSuchProcess:
            return False

    def _pid_taken(self) -> bool:
        """The PID now belongs to another process: nothing may be sent to it, nor to its group."""
        now = start_time(self.pid)
        return now is not None and now != self.start_time

    def signal(self, sig: int) -> bool:
        """Send `sig` to the recorded process only; True if it got it."""
        if not self.alive():
            return False
        try:
            os.kill(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def signal_group(self, sig: int) -> bool:
        """Send `sig` to the process group we started (leader = this PID); True if anything got it.

        The leader must be the recorded process; if it is gone, its group is signalled only when the leader's
        PID is not in use by another process (then the members can only be ours: while a group has members,
        Linux does not hand out its number as a new PID).
        """
        if self.boot != boot_id() or self._pid_taken():
            return False
        if not self.alive() and not self._group_has_members():
            return False
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def _group_has_members(self) -> bool:
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
                # Zombies are dead already (their parent has yet to collect them): nothing to signal.
                if os.getpgid(proc.pid) == self.pid and proc.status() != psutil.STATUS_ZOMBIE:
                    return True
        return False

    def _collected(self, child: subprocess.Popen[bytes] | None) -> bool | None:
        """True once the recorded process has exited and, if it is our child, been collected."""
        if child is not None:
            child.poll()
        proc = self._same()
        if proc is None:
            return True
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                return None
            if child is not None or proc.ppid() != os.getpid():
                return True  # exited; collecting it is its parent's business
            # A child we hold no handle for (a kept stack stopped by `down` in its own run): collect it, or it
            # lingers as a zombie. A multi-threaded leader shows Z before its threads end: not collectable yet.
            proc.wait(timeout=0)
        except psutil.TimeoutExpired:
            return None
        except (psutil.NoSuchProcess, ChildProcessError):
            return True
        return True

    def wait_gone(self, timeout: float, child: subprocess.Popen[bytes] | None = None) -> bool:
        """Wait, up to `timeout` seconds, until the recorded process has exited; False if it still runs."""
        try:
            poll(lambda: self._collected(child), timeout=timeout, interval=_backoff, what=f"pid {self.pid}")
        except PollTimeout:
            return False
        return True

    def stop(self, first: int, timeout: float, child: subprocess.Popen[bytes] | None = None) -> None:
        """Signal `first` to the leader and wait up to `timeout`; then SIGKILL the whole group.

        With `first` = SIGKILL the group is killed at once; otherwise the group is continued (SIGCONT) so a
        stopped leader can act on `first`. Whatever lingers in the group afterwards (the
        backends of a PostgreSQL killed hard) is killed too.
        """
        if first == signal.SIGKILL:
            self.signal_group(signal.SIGKILL)
        else:
            self.signal(first)
            # A stopped process (SIGSTOP, a debugger) handles `first` only once it runs again: without this
            # the whole `timeout` would pass before the SIGKILL. A running process ignores SIGCONT.
            self.signal_group(signal.SIGCONT)
            if not self.wait_gone(timeout, child):
                self.signal_group(signal.SIGKILL)
        self.wait_gone(5.0, child)
        self.signal_group(signal.SIGKILL)
