"""Where and as whom bench_suite.py runs the peers (pytest-postgresql + pytest-redis).

pg_ctl refuses to run as root, and pytest-postgresql starts PostgreSQL through it, so as root the peers'
inner pytest runs as the `postgres` user (else `nobody`). That user cannot execute this project's venv
(its interpreter is a pyenv build under /root), so the peers get a venv of their own under /var/tmp, made
from the system interpreter, with the same versions of pytest, pytest-postgresql, pytest-redis, psycopg
and redis as this venv (installed from PyPI with pip, once, then cached by a hash of those pins). It also
keeps each suite's plugins apart: pytest-dashtam is not installed there, the peers' plugins not loaded
in the pytest-dashtam run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

# Same versions as the venv running this script: the comparison is between tools, not releases.
PEER_PACKAGES = ("pytest", "pytest-postgresql", "pytest-redis", "psycopg", "redis")
CACHE_ROOT = Path("/var/tmp")


@dataclass(frozen=True)
class PeerRunner:
    """The interpreter the peers' pytest runs on and the user it runs as (None: this process's user)."""

    python: str
    user: pwd.struct_passwd | None


def peer_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise SystemExit("running as root, the peers need a 'postgres' or 'nobody' user (pg_ctl refuses root)")


def _base_python(user: pwd.struct_passwd | None) -> str:
    """A system interpreter of this Python's minor version that `user` can execute."""
    if user is None:
        return getattr(sys, "_base_executable", sys.executable)
    candidate = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if not os.access(candidate, os.X_OK):
        raise SystemExit(f"the peers run as {user.pw_name} and need {candidate} (apt-get install python3)")
    return candidate


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def peer_runner(log: bool = True) -> PeerRunner:
    """The cached peer venv, built on first use (about 20 s, PyPI); concurrent callers wait for one build."""
    user = peer_user()
    base = _base_python(user)
    pins = [f"{name}=={version(name)}" for name in PEER_PACKAGES]
    key = hashlib.sha256("\n".join([base, *pins]).encode()).hexdigest()[:12]
    venv = CACHE_ROOT / f"dashtam-bench-peers-{key}"
    python = venv / "bin" / "python"
    done = venv / ".complete"
    if not done.exists():
        with _locked(CACHE_ROOT / f"dashtam-bench-peers-{key}.lock"):
            if not done.exists():
                if log:
                    print(f"building the peers' venv {venv} ({', '.join(pins)}) ...", flush=True)
                shutil.rmtree(venv, ignore_errors=True)  # a build interrupted halfway
                for command in (
                    [base, "-m", "venv", str(venv)],
                    [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins],
                ):
                    proc = subprocess.run(command, capture_output=True, text=True, check=False)
                    if proc.returncode != 0:
                        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-10:])
                        raise SystemExit(f"building the peers' venv failed: {' '.join(command)}:\n{tail}")
                done.write_text("\n".join(pins) + "\n")
    return PeerRunner(python=str(python), user=user)
