"""The Alembic chain a template was migrated through, recorded in its stamp so that a longer chain can extend it.

A template built by Alembic is stamped `pytest-dashtam:template:<hash> chain=<n>.<digest>`: `n` revisions,
and a digest over everything that shapes the migrated schema besides the revisions (the plugin's build
version, alembic.ini's `[alembic]` section, env.py and every other Python file of the scripts) followed by
those n revisions in Alembic's order from base to head, each as its revision id and the digest of its file.

A new chain extends that template when its own digest over its first n revisions is the template's, and it
has more: the same environment, the same revisions with the same bytes in the same order, new ones at the
head. The new template is then a clone of the old one upgraded through the new revisions only; any other
difference (an edited or removed revision, a changed env.py or [alembic] section) builds from empty.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from pytest_dashtam.errors import SchemaError
from pytest_dashtam.safety import ownership_comment
from pytest_dashtam.schema.hashing import (
    BUILD_VERSION,
    _alembic_config,
    _alembic_files,
    _ini_section,
    _sys_path_kept,
)
from pytest_dashtam.schema.names import ROLE_TEMPLATE

# `pytest-dashtam:template:<hash>`, then ` chain=<n>.<digest>` on a template built by Alembic.
_READY_STAMP = re.compile(
    re.escape(ownership_comment(ROLE_TEMPLATE, ""))
    + r"(?P<hash>[0-9a-f]{12})(?: chain=(?P<n>[0-9]+)\.(?P<digest>[0-9a-f]{32}))?"
)


@dataclass(frozen=True)
class Chain:
    """The revisions from base to head in Alembic's order, each (revision id, digest of its file), after the
    digest of everything else the migrated schema depends on."""

    environment: str
    revisions: tuple[tuple[str, str], ...]

    @property
    def head(self) -> str:
        return self.revisions[-1][0]

    def digest(self, length: int) -> str:
        """The digest of the environment and the first `length` revisions."""
        digest = hashlib.sha256(self.environment.encode())
        for revision, file_digest in self.revisions[:length]:
            digest.update(f"\n{revision}\0{file_digest}".encode())
        return digest.hexdigest()[:32]

    def record(self) -> str:
        """What the stamp of a template migrated through this whole chain records: `<n>.<digest>`."""
        return f"{len(self.revisions)}.{self.digest(len(self.revisions))}"

    def extends(self, record: str) -> int | None:
        """How many of this chain's revisions a template with `record` already has, when this chain extends
        that template's (its first n revisions are the template's n, and it has more); None otherwise."""
        count, _, digest = record.partition(".")
        if not count.isdigit() or not 0 < int(count) < len(self.revisions):
            return None
        return int(count) if self.digest(int(count)) == digest else None


def ready_stamp(hash_: str, chain: Chain | None) -> str:
    """The stamp of a finished template: its hash, and with Alembic the chain it was migrated through."""
    tag = hash_ if chain is None else f"{hash_} chain={chain.record()}"
    return ownership_comment(ROLE_TEMPLATE, tag)


def parse_ready_stamp(comment: str | None) -> tuple[str, str | None] | None:
    """(hash, chain record or None) of a finished template's stamp; None for anything else (one half-built
    or someone else's database)."""
    match = _READY_STAMP.fullmatch(comment or "")
    if match is None:
        return None
    return match["hash"], (f"{match['n']}.{match['digest']}" if match["n"] is not None else None)


def load_chain(alembic_ini: str) -> Chain:
    """The project's chain as Alembic orders it; refused unless the scripts have exactly one head.

    Imports the revision files (Alembic reads them as modules): only when a template is built.
    """
    from alembic.script import ScriptDirectory
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    config = _alembic_config(alembic_ini)
    with _sys_path_kept():  # revision files may import the application's modules through prepend_sys_path
        try:
            script = ScriptDirectory.from_config(config)
            heads = script.get_heads()
            ordered = list(reversed(list(script.walk_revisions("base", "heads")))) if len(heads) == 1 else []
        except (CommandError, RevisionError, KeyError) as exc:
            # Alembic raises a bare KeyError for a down_revision that names no revision.
            cause = f"no revision {exc} (named as a down_revision)" if isinstance(exc, KeyError) else str(exc)
            raise SchemaError(
                f"cannot read the Alembic revisions configured in {alembic_ini!r}: {cause.splitlines()[0]}; "
                "fix the revision files (alembic history shows the same error)"
            ) from exc
    if len(heads) != 1:
        raise SchemaError(
            f"the Alembic scripts have {len(heads)} heads ({', '.join(sorted(heads)) or 'none'}); "
            "the test schema needs exactly one: run `alembic merge heads` (or add a first revision)"
        )
    paths = {Path(s.path).resolve() for s in ordered}
    environment = hashlib.sha256(BUILD_VERSION + b"alembic\n" + _ini_section(alembic_ini))
    for name, path in _alembic_files(alembic_ini):
        if path not in paths:
            data = path.read_bytes()
            environment.update(f"{name}\0{len(data)}\0".encode())
            environment.update(data)
    revisions = tuple((s.revision, hashlib.sha256(Path(s.path).read_bytes()).hexdigest()) for s in ordered)
    return Chain(environment=environment.hexdigest(), revisions=revisions)
