"""Where a fresh test cluster comes from: an earlier run's seed, the initdb cache, or initdb itself.

Speed notes (numbers from issue 3, this machine): initdb costs ~0.45 s, so an initdb'd cluster is
cached per binary and copied (with 1 MB WAL segments the copy is ~25 MB instead of ~40 MB); a test
cluster that built the schema template is kept as the next runs' seed, so they start with it in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Literal

from pytest_dashtam.backends._local_binaries import PgBinaries
from pytest_dashtam.backends._local_procs import RunAs, chown_tree
from pytest_dashtam.backends._local_servers import log_tail, server_env
from pytest_dashtam.cache import cache_root
from pytest_dashtam.errors import BackendError, ConfigError

# Bump when the initdb arguments change: old cache entries then stop matching.
_CACHE_FORMAT = "1"
INITDB_ARGS = ("-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync", "--wal-segsize=1")
# A file in a test stack's run folder: "when this cluster stops, keep it as the next runs' seed".
SEED_REQUEST = "keep-as-seed"
ClusterSource = Literal["seed", "hit", "miss"]


def seed_cache_root() -> Path | None:
    """Where a finished test cluster may be kept as a seed; None when the named cache folder is unusable
    (the start already said so): teardown must still stop the servers, never fail on the cache."""
    try:
        return cache_root()
    except ConfigError:
        return None


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy preserving modes and (as root) owners; cp is several times faster than copytree here."""
    cp = shutil.which("cp")
    if cp:
        subprocess.run([cp, "-a", str(src), str(dst)], check=True, capture_output=True)
    else:
        shutil.copytree(src, dst, symlinks=True)


def _make_owned_dir(path: Path, run_as: RunAs | None, mode: int = 0o700) -> None:
    path.mkdir(mode=mode, parents=False, exist_ok=True)
    os.chmod(path, mode)
    if run_as is not None:
        os.chown(path, run_as.uid, run_as.gid)


def _run_initdb(binaries: PgBinaries, data_dir: Path, run_as: RunAs | None, log_path: Path) -> None:
    _make_owned_dir(data_dir, run_as)
    with open(log_path, "ab") as log:
        proc = subprocess.run(
            [str(binaries.initdb), "-D", str(data_dir), *INITDB_ARGS],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server_env(),
            user=None if run_as is None else run_as.uid,
            group=None if run_as is None else run_as.gid,
            extra_groups=None if run_as is None else [],
            check=False,
            timeout=300,
        )
    if proc.returncode != 0:
        raise BackendError(f"initdb ({binaries.initdb}) failed with exit {proc.returncode}: {log_tail(log_path)}")


def _fill_cache(snapshot: Path, root: Path, entry: Path, meta: dict[str, object]) -> None:
    """Copy a pristine cluster into the cache under a temporary name, then rename it into place."""
    meta_path = entry / "meta.json"
    try:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            root.mkdir(parents=True, exist_ok=True)
            building = Path(tempfile.mkdtemp(dir=root, prefix=f".building-{entry.name}-"))
            try:
                _copy_tree(snapshot, building / "data")
                (building / "meta.json").write_text(json.dumps(meta))
                try:
                    os.rename(building, entry)
                except OSError:
                    if not meta_path.is_file():  # a broken entry without meta: replace it
                        shutil.rmtree(entry, ignore_errors=True)
                        os.rename(building, entry)
            finally:
                shutil.rmtree(building, ignore_errors=True)
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)


def _clean_stale_builds(root: Path) -> None:
    """Half-built entries of runs killed while filling the cache (an hour is far beyond any fill)."""
    cutoff = time.time() - 3600
    with contextlib.suppress(OSError):
        for stale in root.glob(".building-*"):
            with contextlib.suppress(OSError):
                if stale.stat().st_mtime < cutoff:
                    shutil.rmtree(stale, ignore_errors=True)


def _seed_entry(root: Path, identity: str) -> Path:
    return root / f"pg-{_CACHE_FORMAT}-{identity}-seed"


def cluster_from_cache(
    binaries: PgBinaries, data_dir: Path, run_as: RunAs | None, log_path: Path, cache: Path | None = None
) -> tuple[str, ClusterSource, threading.Thread | None]:
    """Put a fresh test cluster at `data_dir` (absent yet).

    Returns (binary version, where the cluster came from, the thread still filling the cache on a
    miss: join it before removing `data_dir`'s parent). The seed (a stopped test cluster of an
    earlier run, holding the schema templates it built: see `save_seed`) is preferred over the
    pristine initdb'd cluster, which is preferred over running initdb. Cache entries are built beside
    their final name and renamed into place, so concurrent runs never see a half-written one: the
    loser of the rename race discards its copy, and a reader that loses an entry mid-copy falls back
    to the next source. On a miss, the cache (on disk: ~0.3 s for ~1000 files) is filled in the
    background from a snapshot taken on the same tmpfs (~40 ms), so the server starts without
    waiting for the disk.
    """
    root = cache or cache_root()
    identity = binaries.identity()
    entry = root / f"pg-{_CACHE_FORMAT}-{identity}"
    sources: tuple[tuple[ClusterSource, Path], ...] = (("seed", _seed_entry(root, identity)), ("hit", entry))
    for source, candidate in sources:
        meta_path = candidate / "meta.json"
        if not meta_path.is_file():
            continue
        try:
            version = str(json.loads(meta_path.read_text())["version"])
            _copy_tree(candidate / "data", data_dir)
            if run_as is not None and os.stat(data_dir).st_uid != run_as.uid:
                chown_tree(data_dir, run_as.uid, run_as.gid)
            return version, source, None
        except (OSError, ValueError, KeyError, subprocess.CalledProcessError):
            shutil.rmtree(data_dir, ignore_errors=True)  # a damaged or vanished entry: try the next source
    version = binaries.version()
    _run_initdb(binaries, data_dir, run_as, log_path)
    _clean_stale_builds(root)
    snapshot = data_dir.parent / f".{data_dir.name}-initdb-snapshot"
    try:
        _copy_tree(data_dir, snapshot)
    except (OSError, subprocess.CalledProcessError):
        shutil.rmtree(snapshot, ignore_errors=True)
        return version, "miss", None  # no cache this time; the next cold start tries again
    meta: dict[str, object] = {
        "version": version,
        "postgres": str(binaries.postgres),
        "initdb_args": list(INITDB_ARGS),
    }
    filler = threading.Thread(
        target=_fill_cache, args=(snapshot, root, entry, meta), name="dashtam-cache-fill", daemon=True
    )
    filler.start()
    return version, "miss", filler


def save_seed(data_dir: Path, identity: str, version: str, cache: Path | None = None) -> bool:
    """Keep a cleanly stopped test cluster as the starting cluster of the next runs on these binaries.

    A fresh cluster every run would mean building the schema template (all the migrations) every
    run; seeding the next cluster with this one, templates included, lets the plugin reuse a
    template while its hash matches, as on a kept or external server. Only called for a cluster
    whose template was just built (the plugin asks through `SEED_REQUEST`), so runs that hit the
    template pay nothing. A cluster not shut down cleanly (postmaster.pid left) is not kept.
    """
    if (data_dir / "postmaster.pid").exists() or not (data_dir / "PG_VERSION").is_file():
        return False
    root = cache or cache_root()
    entry = _seed_entry(root, identity)
    building: Path | None = None
    trash: Path | None = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(dir=root, prefix=f".building-{entry.name}-"))
        _copy_tree(data_dir, building / "data")
        (building / "meta.json").write_text(json.dumps({"version": version, "seed": True}))
        if entry.exists():
            trash = Path(tempfile.mkdtemp(dir=root, prefix=f".trash-{entry.name}-"))
            os.rename(entry, trash / "old")
        os.rename(building, entry)
        return True
    except (OSError, subprocess.CalledProcessError):
        return False  # another run swapped its seed in first, or the disk is full: the next run rebuilds
    finally:
        for leftover in (building, trash):
            if leftover is not None:
                shutil.rmtree(leftover, ignore_errors=True)
