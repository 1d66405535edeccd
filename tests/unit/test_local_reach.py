"""Copies of binaries the server user cannot reach: never run from a folder someone else controls."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dashtam.backends import _local_reach
from pytest_dashtam.backends._local_binaries import PgBinaries
from pytest_dashtam.backends._local_procs import RunAs
from pytest_dashtam.errors import BackendError

NOBODY = RunAs(name="nobody", uid=65534, gid=65534)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the copy is made only for root, which needs chown")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dashtam-reach-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _fake_install(parent: Path) -> PgBinaries:
    bindir = parent / "pkg" / "pginstall" / "bin"
    bindir.mkdir(parents=True)
    for name in ("postgres", "initdb"):
        (bindir / name).write_text("#!/bin/sh\n")
        (bindir / name).chmod(0o755)
    (bindir.parent / "share").mkdir()
    (bindir.parent / "share" / "postgres.bki").write_text("x")
    (parent / "pkg.libs").mkdir()
    (parent / "pkg.libs" / "libpq.so").write_text("x")
    return PgBinaries(bindir=bindir, source="embedded")


def test_reachable_binaries_are_used_as_they_are(open_dir: Path) -> None:
    pg = _fake_install(open_dir)
    assert _local_reach.reachable_binaries(pg, NOBODY) == (pg, None)


def test_closed_binaries_are_copied_with_their_layout(
    open_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg = _fake_install(tmp_path)  # under pytest's 0700 folders
    monkeypatch.setattr(_local_reach, "COPY_BASE", open_dir)
    copy, source = _local_reach.reachable_binaries(pg, NOBODY)
    assert source == str(pg.bindir)
    dest = copy.bindir.parent.parent.parent
    assert (copy.bindir / "postgres").is_file()
    assert (dest / "pkg" / "pginstall" / "share" / "postgres.bki").is_file()
    assert (dest / "pkg.libs" / "libpq.so").is_file()  # the RUNPATH $ORIGIN/../../../pkg.libs still resolves
    assert _local_reach.reachable_binaries(pg, NOBODY) == (copy, source)  # reused


def test_copy_folder_controlled_by_another_user_is_refused(
    open_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg = _fake_install(tmp_path)
    planted = open_dir / f"pytest-dashtam-{os.geteuid()}"
    planted.mkdir()
    os.chown(planted, NOBODY.uid, NOBODY.gid)  # pre-created by someone else: binaries there could be swapped
    monkeypatch.setattr(_local_reach, "COPY_BASE", open_dir)
    with pytest.raises(BackendError, match="not a folder only we can write") as info:
        _local_reach.reachable_binaries(pg, NOBODY)
    assert "\n" not in str(info.value)
    assert list(planted.iterdir()) == []
