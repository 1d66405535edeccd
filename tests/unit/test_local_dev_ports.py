"""Dev ports: the standard ones when free, else free ones remembered across restarts."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dashtam.backends import _local_start
from pytest_dashtam.backends._local_procs import pick_free_ports
from pytest_dashtam.errors import BackendError


@pytest.fixture
def held_ports(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, int]]:
    """Two listening sockets standing for a developer's own PostgreSQL and Redis on the standard ports."""
    for var in ("DASHTAM_DEV_POSTGRES_PORT", "DASHTAM_DEV_REDIS_PORT"):
        monkeypatch.delenv(var, raising=False)
    sockets = []
    ports = pick_free_ports(2)
    for port in ports:
        s = socket.socket()
        s.bind(("127.0.0.1", port))
        s.listen()
        sockets.append(s)
    monkeypatch.setattr(
        _local_start,
        "DEV_PORT_VARS",
        {"postgres": ("DASHTAM_DEV_POSTGRES_PORT", ports[0]), "redis": ("DASHTAM_DEV_REDIS_PORT", ports[1])},
    )
    yield ports[0], ports[1]
    for s in sockets:
        s.close()


def test_taken_standard_ports_fall_back_to_free_ones_and_are_remembered(
    tmp_path: Path, held_ports: tuple[int, int]
) -> None:
    first = _local_start.dev_ports(tmp_path)
    assert first["postgres"] not in held_ports
    assert first["redis"] not in held_ports
    assert first["postgres"] != first["redis"]
    assert json.loads((tmp_path / "dev-ports.json").read_text()) == first
    assert _local_start.dev_ports(tmp_path) == first  # stable across restarts


def test_free_standard_ports_are_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DASHTAM_DEV_POSTGRES_PORT", "DASHTAM_DEV_REDIS_PORT"):
        monkeypatch.delenv(var, raising=False)
    free = pick_free_ports(2)
    monkeypatch.setattr(
        _local_start,
        "DEV_PORT_VARS",
        {"postgres": ("DASHTAM_DEV_POSTGRES_PORT", free[0]), "redis": ("DASHTAM_DEV_REDIS_PORT", free[1])},
    )
    assert _local_start.dev_ports(tmp_path) == {"postgres": free[0], "redis": free[1]}


def test_an_explicit_taken_port_is_an_error_not_a_fallback(
    tmp_path: Path, held_ports: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DASHTAM_DEV_POSTGRES_PORT", str(held_ports[0]))
    with pytest.raises(BackendError, match="set DASHTAM_DEV_POSTGRES_PORT to a free port"):
        _local_start.dev_ports(tmp_path)
