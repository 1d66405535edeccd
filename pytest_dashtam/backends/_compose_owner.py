"""Who owns a compose stack, as recorded in its containers' labels, whether that owner lives, and
so which stacks may be reaped.

The compose files interpolate `DASHTAM_STACK_*` variables into `io.dashtam.*` labels, so the engine
itself carries the record: no state file can go stale or be lost with a deleted checkout. A stack
whose owner process is dead (checked by PID *and* process start time, so a reused PID does not pass
for the owner) is garbage and may be taken down; a stack whose owner lives, a kept stack, a stack
started by hand (no owner label) and a stack owned on another host are never touched.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pytest_dashtam import process
from pytest_dashtam.backends._compose_containers import Container

LABEL_ENV = "io.dashtam.env"
LABEL_PID = "io.dashtam.owner-pid"
LABEL_START = "io.dashtam.owner-start"
LABEL_HOST = "io.dashtam.owner-host"
LABEL_RUN = "io.dashtam.run-id"
LABEL_KEEP = "io.dashtam.keep"

OwnerState = Literal["self", "alive", "dead", "kept", "unowned", "elsewhere"]


def owner_start(pid: int) -> str:
    """The label value of `pid`'s start time (clock ticks after boot, see pytest_dashtam.process); '' if gone."""
    started = process.start_time(pid)
    return "" if started is None else str(started)


def owner_alive(pid: int, start: str = "") -> bool:
    """True while `pid` runs and, when the label holds its start time, is the process that was recorded."""
    return process.alive(pid, int(start) if start.strip().isdigit() else None)


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
        return cls(pid=pid, start=owner_start(pid), host=socket.gethostname(), run_id=run_id, keep=keep)

    def compose_env(self) -> dict[str, str]:
        """The variables the compose files turn into this owner's labels."""
        return {
            "DASHTAM_STACK_OWNER_PID": str(self.pid),
            "DASHTAM_STACK_OWNER_START": self.start,
            "DASHTAM_STACK_OWNER_HOST": self.host,
            "DASHTAM_STACK_RUN_ID": self.run_id,
            "DASHTAM_STACK_KEEP": "1" if self.keep else "",
        }

    def labels(self, env: str) -> dict[str, str]:
        """The labels `compose_env` gives a compose file that interpolates them, for a file that does not."""
        return {
            LABEL_ENV: env,
            LABEL_PID: str(self.pid),
            LABEL_START: self.start,
            LABEL_HOST: self.host,
            LABEL_RUN: self.run_id,
            LABEL_KEEP: "1" if self.keep else "",
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
    return "alive" if owner_alive(owner.pid, owner.start) else "dead"


def owner_text(containers: Sequence[Container], *, this_pid: int | None = None) -> str:
    """Who owns a project's stack and what that makes it, for messages."""
    owner = Owner.from_labels(containers[0].labels) if containers else None
    if owner is None:
        return "started without an owner (kept)"
    state = owner_state(owner, this_pid=this_pid)
    return f"owner {owner.describe()}: {state}"


def dead_projects(containers: Sequence[Container], *, this_pid: int | None = None) -> list[str]:
    """The compose projects among `containers` whose recorded owner is dead: the ones to reap."""
    by_project: dict[str, list[Container]] = {}
    for container in containers:
        if container.project:
            by_project.setdefault(container.project, []).append(container)
    dead: list[str] = []
    for project, members in sorted(by_project.items()):
        states = {owner_state(Owner.from_labels(c.labels), this_pid=this_pid) for c in members}
        # Every container of the project must agree: one live or kept label protects it all.
        if states == {"dead"}:
            dead.append(project)
    return dead
