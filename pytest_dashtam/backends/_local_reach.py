"""PostgreSQL binaries the unprivileged server user can run, when root's are out of its reach.

Root in a container often has its virtualenv under /root (mode 0700): the `embedded` extra's
binaries are then installed where the `postgres` user cannot enter, and PostgreSQL refuses root.
pytest-postgresql has no answer (its issues 341 and 455); here the install tree is copied once per
binary into a root-owned, world-readable folder under /var/tmp and reused by later runs.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from pytest_dashtam.backends._local_binaries import PgBinaries
from pytest_dashtam.backends._local_procs import RunAs, unreachable_part
from pytest_dashtam.errors import BackendError

# A module attribute so tests can point the copies elsewhere.
COPY_BASE = Path("/var/tmp")
_TREES = ("bin", "lib", "share")


def _blocked(pg: PgBinaries, run_as: RunAs) -> Path | None:
    for target in (pg.postgres, pg.initdb, pg.install_root()):
        blocked = unreachable_part(target, run_as, 5)
        if blocked is not None:
            return blocked
    return None


def _safe_dir(path: Path) -> bool:
    """Ours, a real folder, and writable by nobody else: binaries run from it as the server."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and st.st_mode & 0o022 == 0


def _copy_install(root: Path, dest: Path) -> None:
    """Mirror the install tree with the layout its binaries' relative RUNPATHs expect: `root`'s
    bin/lib/share under <package>/<root name>, and a wheel's vendored `<package>.libs` beside it."""
    package_dir = dest / root.parent.name / root.name
    package_dir.mkdir(parents=True)
    for name in _TREES:
        if (root / name).is_dir():
            subprocess.run(["cp", "-a", str(root / name), str(package_dir / name)], check=True, capture_output=True)
    vendored = root.parent.parent / f"{root.parent.name}.libs"
    if vendored.is_dir():
        subprocess.run(["cp", "-a", str(vendored), str(dest / vendored.name)], check=True, capture_output=True)
    for dirpath, _dirnames, filenames in os.walk(dest):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode | 0o444)  # readable by the server user


def reachable_binaries(pg: PgBinaries, run_as: RunAs) -> tuple[PgBinaries, str | None]:
    """`pg`, or a copy `run_as` can run; the second value says where a copy came from."""
    blocked = _blocked(pg, run_as)
    if blocked is None:
        return pg, None
    # Reached through a symlink from a closed folder: the target itself may be open.
    real = PgBinaries(bindir=Path(os.path.realpath(pg.bindir)), source=pg.source)
    if _blocked(real, run_as) is None:
        return real, None
    root = real.install_root()
    base = COPY_BASE / f"pytest-dashtam-{os.geteuid()}"
    dest = base / f"pg-{pg.identity()}"
    copy = PgBinaries(bindir=dest / root.parent.name / root.name / "bin", source=pg.source)
    hint = f"PostgreSQL refuses root, and user {run_as.name!r} cannot reach {pg.bindir} ({blocked} is closed to it)"
    try:
        base.mkdir(mode=0o755, exist_ok=True)
        st = os.lstat(base)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
            os.chmod(base, 0o755)  # whatever the umask made of it: the server user must enter
        if not _safe_dir(base):
            raise BackendError(f"{hint}; {base} is not a folder only we can write, so no copy was made there")
        if not dest.exists():
            building = Path(tempfile.mkdtemp(dir=base, prefix=f".building-{dest.name}-"))
            try:
                _copy_install(root, building)
                os.chmod(building, 0o755)
                try:
                    os.rename(building, dest)
                except OSError:
                    if not dest.exists():
                        raise
            finally:
                shutil.rmtree(building, ignore_errors=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BackendError(f"{hint}, and copying the binaries to {base} failed ({exc}): chmod o+x {blocked}") from exc
    if not _safe_dir(dest) or _blocked(copy, run_as) is not None:
        raise BackendError(f"{hint}; the copy at {dest} is not usable: remove it, or chmod o+x {blocked}")
    return copy, str(real.bindir)
