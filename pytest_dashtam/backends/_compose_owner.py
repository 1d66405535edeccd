"""Who owns a compose stack, as recorded in its containers' labels, and whether that owner lives.

The compose files interpolate `DASHTAM_STACK_*` variables into `io.dashtam.*` labels, so the engine
itself carries the record: no state file can go stale or be lost with a deleted checkout. A stack
whose owner process is dead (checked by PID *and* process start time, so a reused PID does not pass
for the owner) is garbage and may be taken down; a stack whose owner lives, a kept stack, a stack
started by hand (no owner label) and a stack owned on another host are never touched.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

LABEL_ENV = "io.dashtam.env"
LABEL_PID = "io.dashtam.owner-pid"
LABEL_START = "io.dashtam.owner-start"
LABEL_HOST = "io.dashtam.owner-host"
LABEL_RUN = "io.dashtam.run-id"
LABEL_KEEP = "io.dashtam.keep"

OwnerState = Literal["self", "alive", "dead", "kept", "unowned", "elsewhere"]


def process_start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22); '' if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else ""


def process_alive(pid: int, start: str = "") -> bool:
    """True while `pid` runs and, when `start` is known, is the same process that was recorded."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): the signal probe is all we have
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields and fields[0] in ("Z", "X"):
        return False  # a zombie waiting for its parent's wait() is dead for our purpose
    return not start or (len(fields) > 19 and fields[19] == start)


@dataclass(frozen=True)
class Owner:
    pid: int
    start: str
    host: str
    run_id: str
    keep: bool

    @classmethod
    def current(cls, run_id: str, *, keep: bool, pid: int | None = None) -> Owner:
        pid = os.getpid() if pid is None else pid
        return cls(pid=pid, start=process_start_time(pid), host=socket.gethostname(), run_id=run_id, keep=keep)

    def compose_env(self) -> dict[str, str]:
        """The variables the compose files turn into this owner's labels."""
        return {
            "DASHTAM_STACK_OWNER_PID": str(self.pid),
            "DASHTAM_STACK_OWNER_START": self.start,
            "DASHTAM_STACK_OWNER_HOST": self.host,
            "DASHTAM_STACK_RUN_ID": self.run_id,
            "DASHTAM_STACK_KEEP": "1" if self.keep else "",
        }

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> Owner | None:
        """The recorded owner, or None for a stack started without one (by hand)."""
        pid_text = labels.get(LABEL_PID, "").strip()
        if not pid_text.isdigit():
            return None
        return cls(
            pid=int(pid_text),
            start=labels.get(LABEL_START, ""),
            host=labels.get(LABEL_HOST, ""),
            run_id=labels.get(LABEL_RUN, ""),
            keep=labels.get(LABEL_KEEP, "") not in ("", "0", "false"),
        )

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host or '?'} (run {self.run_id or '?'})"


def owner_state(owner: Owner | None, *, this_host: str | None = None, this_pid: int | None = None) -> OwnerState:
    """What may be done with a stack recorded as owned by `owner`: only `dead` may be reaped."""
    if owner is None:
        return "unowned"
    if owner.keep:
        return "kept"
    host = socket.gethostname() if this_host is None else this_host
    if owner.host and owner.host != host:
        # Another machine (or container) shares this engine: its PIDs mean nothing here.
        return "elsewhere"
    if owner.pid == (os.getpid() if this_pid is None else this_pid):
        return "self"
    return "alive" if process_alive(owner.pid, owner.start) else "dead"
