"""Users' reach and port choice of the local backend (process identity: tests/unit/test_process.py)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from pytest_dashtam.backends import _local_procs
from pytest_dashtam.backends._local_procs import (
    RunAs,
    ephemeral_range,
    pick_free_ports,
    port_is_free,
    unreachable_part,
)

NOBODY = RunAs(name="nobody", uid=65534, gid=65534)


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
