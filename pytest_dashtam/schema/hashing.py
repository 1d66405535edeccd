"""The template hash: 12 hex characters covering what the template is built from.

The hash is part of the template's name (`<test_db>_tpl_<hash>`), so a template is reused exactly while its
inputs are unchanged: the Alembic scripts (env.py and the revisions, found the way Alembic itself finds
them) and the `[alembic]` section of alembic.ini, or without Alembic the metadata's DDL. The hash reads the
files only, so a cache hit imports nothing; the order of the revisions (chain.py) is read only when a
template is built. The migrations themselves run in a child process (migration.py).
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_dashtam.errors import ConfigError

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy import MetaData

# Bump when the way a template is built changes, so templates built by an older plugin are rebuilt.
# v2: alembic.ini's [alembic] section is hashed, and the stamp records the chain (chain.py).
BUILD_VERSION = b"pytest-dashtam template v2\n"


def _alembic_config(alembic_ini: str) -> Config:
    """The project's Alembic configuration, read in this process only for the script files and heads."""
    from alembic.config import Config

    path = Path(alembic_ini)
    if not path.is_file():
        raise ConfigError(
            f"alembic.ini not found at {alembic_ini!r}; set dashtam_alembic_ini to its path, "
            "or to an empty value to build the schema with metadata.create_all"
        )
    return Config(str(path))


@contextlib.contextmanager
def _sys_path_kept() -> Iterator[None]:
    """Alembic prepends `prepend_sys_path` to sys.path on every ScriptDirectory.from_config: undone after."""
    saved = list(sys.path)
    try:
        yield
    finally:
        sys.path[:] = saved


def _script_locations(alembic_ini: str) -> tuple[Path, list[Path]]:
    """(script directory, version locations) as Alembic itself resolves them from the configuration."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    config = _alembic_config(alembic_ini)
    with _sys_path_kept():
        try:
            script = ScriptDirectory.from_config(config)
        except CommandError as exc:
            raise ConfigError(f"cannot read the Alembic scripts configured in {alembic_ini!r}: {exc}") from exc
        versions = getattr(script, "_version_locations", None) or [Path(script.dir, "versions")]
        return Path(script.dir).resolve(), [Path(p).resolve() for p in versions]


# The note of where a project's Alembic scripts are (see _remembered_locations); bump when its form changes.
_LOCATIONS_NOTE = 1


def _folders(bases: list[Path]) -> dict[str, int]:
    """Every folder under `bases` (themselves included) and its mtime: a file added, removed or renamed in a
    folder changes the folder's mtime, so equal mtimes mean the same set of files in each."""
    found: dict[str, int] = {}
    for base in bases:
        with contextlib.suppress(OSError):
            found[str(base)] = base.stat().st_mtime_ns
            for sub in base.rglob("*"):
                if sub.is_dir() and "__pycache__" not in sub.parts:
                    found[str(sub)] = sub.stat().st_mtime_ns
    return found


def _note_path(alembic_ini: str) -> Path | None:
    from pytest_dashtam.cache import cache_root

    try:
        root = cache_root()
    except ConfigError:
        return None  # an unusable DASHTAM_CACHE_DIR is the local backend's to refuse; no note then
    key = hashlib.blake2b(str(Path(alembic_ini).resolve()).encode(), digest_size=8).hexdigest()
    return root / f"alembic-locations-{key}.json"


def _remembered_locations(alembic_ini: str) -> tuple[Path, list[Path]]:
    """`_script_locations`, remembered in the user's cache while alembic.ini and the script folders are
    unchanged (their mtimes and the ini's size).

    Asking Alembic where the scripts are means importing it and reading the configuration, the largest part
    of a cache hit's template phase; what the files hold is still read and hashed every run, so the note
    only spares finding them. Any change to alembic.ini or to the set of files in a script folder makes it
    ask Alembic again; a note that cannot be read or written is simply not used.
    """
    ini = Path(alembic_ini)
    note = _note_path(alembic_ini)
    try:
        ini_stat = ini.stat()
    except OSError:
        return _script_locations(alembic_ini)  # _alembic_config says what is wrong with it
    ini_key = [ini_stat.st_mtime_ns, ini_stat.st_size]
    if note is not None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = json.loads(note.read_text(encoding="utf-8"))
            root, locations = Path(data["root"]), [Path(p) for p in data["locations"]]
            if (
                data["note"] == _LOCATIONS_NOTE
                and data["ini"] == ini_key
                and data["folders"] == _folders([root, *locations])
            ):
                return root, locations
    root, locations = _script_locations(alembic_ini)
    if note is not None:
        record = {
            "note": _LOCATIONS_NOTE,
            "ini_path": str(ini.resolve()),
            "ini": ini_key,
            "root": str(root),
            "locations": [str(p) for p in locations],
            "folders": _folders([root, *locations]),
        }
        with contextlib.suppress(OSError):
            note.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=note.parent, prefix=f".{note.name}.")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump(record, out)
                os.replace(tmp, note)  # whole or not at all: concurrent runs read one note or the other
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)  # a full disk: no half-written file left behind
                raise
        _forget_gone_projects(note.parent)
    return root, locations


def _forget_gone_projects(folder: Path) -> None:
    """Notes of projects whose alembic.ini is gone (a deleted checkout, a test's temporary copy) are removed
    whenever a note is written, so the cache does not grow with every project that ever ran here."""
    for other in folder.glob("alembic-locations-*.json"):
        with contextlib.suppress(OSError):
            try:
                data = json.loads(other.read_text(encoding="utf-8"))
                gone = data["note"] != _LOCATIONS_NOTE or not Path(data["ini_path"]).exists()
            except (ValueError, KeyError, TypeError):
                gone = True  # unreadable, or of an older form: made again when its project runs
            if gone:
                other.unlink()


def _alembic_files(alembic_ini: str) -> list[tuple[str, Path]]:
    """(stable name, path) of every Python file that shapes the migrated schema: env.py and the revisions."""
    root, locations = _remembered_locations(alembic_ini)
    found: dict[Path, str] = {}
    for base in [root, *locations]:
        for path in base.rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(root) if path.is_relative_to(root) else path.relative_to(base)
            found.setdefault(path.resolve(), rel.as_posix())
    return sorted(((name, path) for path, name in found.items()), key=lambda item: item[0])


def _ini_section(alembic_ini: str) -> bytes:
    """alembic.ini's `[alembic]` section as written (`%(here)s` kept, so the checkout may move): what Alembic
    and env.py's `config.get_main_option` read. Left out: the logging sections, and `sqlalchemy.url`, which
    the migration process replaces with the template's (a URL that differs per machine rebuilds nothing)."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(alembic_ini, encoding="utf-8")
    except configparser.Error as exc:
        raise ConfigError(f"cannot read {alembic_ini!r}: {str(exc).splitlines()[0]}; fix its syntax") from exc
    items = sorted(parser.items("alembic", raw=True)) if parser.has_section("alembic") else []
    items = [(key, value) for key, value in items if key != "sqlalchemy.url"]
    return "".join(f"{key}\0{value}\n" for key, value in items).encode()


def _metadata_ddl(metadata: MetaData) -> str:
    """The CREATE statements `metadata.create_all` would run on PostgreSQL, in order."""
    from sqlalchemy import create_mock_engine

    statements: list[str] = []

    def collect(sql: Any, *_: Any, **__: Any) -> None:
        statements.append(str(sql.compile(dialect=engine.dialect)).strip())

    engine = create_mock_engine("postgresql+asyncpg://", collect)
    metadata.create_all(engine, checkfirst=False)
    return ";\n".join(statements)


def template_hash(alembic_ini: str | None, metadata: MetaData | None) -> str:
    """12 hex characters covering what the template is built from.

    With Alembic: the `[alembic]` section, env.py and every revision file's bytes, sorted by path (the
    metadata is not used to build the template then, so it is not hashed: a model edit without a migration
    leaves the template valid). Without Alembic: the metadata's CREATE DDL.
    """
    digest = hashlib.sha256(BUILD_VERSION)
    if alembic_ini:
        digest.update(b"alembic\n")
        digest.update(_ini_section(alembic_ini))
        for name, path in _alembic_files(alembic_ini):
            data = path.read_bytes()
            digest.update(f"{name}\0{len(data)}\0".encode())
            digest.update(data)
    elif metadata is not None:
        digest.update(b"metadata\n")
        digest.update(_metadata_ddl(metadata).encode())
    else:
        raise ConfigError(
            "no schema source: set dashtam_alembic_ini to the project's alembic.ini, "
            "or dashtam_metadata to its SQLAlchemy metadata"
        )
    return digest.hexdigest()[:12]
