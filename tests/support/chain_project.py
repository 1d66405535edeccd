"""A real Alembic project generated in a folder: an async env.py and a linear chain of small revisions.

Revision `r0001` creates a table; each later one adds a column to the newest table, or every fourth a new
table. The incremental-template tests (2-4 revisions) and bench/bench_templates.py (100) build from it.

With `hooks`, every revision's upgrade() writes its id to the file the migration process's CHAIN_LOG
variable names (so a test sees which revisions a build ran), and SIGKILLs its parent, the process building
the template, then dies itself, if the file CHAIN_KILL names exists (removed first: one kill).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

_INI = """\
[alembic]
script_location = %(here)s/migrations
path_separator = os

[loggers]
keys = root

[handlers]
keys =

[formatters]
keys =

[logger_root]
level = WARNING
handlers =
"""

_ENV_PY = """\
import asyncio

from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool


def _run(connection):
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()


async def _main():
    engine = create_async_engine(context.config.get_main_option("sqlalchemy.url"), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


asyncio.run(_main())
"""

_HOOKS = """\
    import os
    import signal

    if os.environ.get("CHAIN_LOG"):
        with open(os.environ["CHAIN_LOG"], "a") as log:
            log.write(revision + "\\n")
    kill = os.environ.get("CHAIN_KILL")
    if kill and os.path.exists(kill):
        os.remove(kill)
        os.kill(os.getppid(), signal.SIGKILL)
        os._exit(1)
"""

_REVISION = """\
import sqlalchemy as sa
from alembic import op

revision = {revision!r}
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade():
{hooks}    {upgrade}


def downgrade():
    {downgrade}
"""


def revision_id(number: int) -> str:
    return f"r{number:04d}"


class ChainProject:
    """An Alembic project in `root` whose chain the test or benchmark grows, edits and cuts."""

    def __init__(self, root: Path, *, hooks: bool = True, work_ms: int = 0) -> None:
        self.root = root
        self.hooks = hooks
        self.work_ms = work_ms  # each revision also waits this long on the server: a heavier migration
        self.versions = root / "migrations" / "versions"
        self.versions.mkdir(parents=True, exist_ok=True)
        if not (root / "alembic.ini").exists():
            (root / "alembic.ini").write_text(_INI)
            (root / "migrations" / "env.py").write_text(_ENV_PY)

    @property
    def ini(self) -> str:
        return str(self.root / "alembic.ini")

    def revisions(self) -> list[str]:
        """The revision ids, from base to head (the chain is linear)."""
        down = {}
        for path in self.versions.glob("*.py"):
            revision, parent = re.findall(r"^(?:down_)?revision = '?(\w+)'?$", path.read_text(), re.MULTILINE)
            down[parent] = revision
        ordered, current = [], down.get("None")
        while current is not None:
            ordered.append(current)
            current = down.get(current)
        return ordered

    def copy(self, root: Path) -> ChainProject:
        """The same files under `root` (the same hash and chain: nothing in them names their folder)."""
        shutil.copytree(self.root, root, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        return ChainProject(root, hooks=self.hooks, work_ms=self.work_ms)

    def append(self, count: int = 1) -> list[str]:
        """`count` new revisions at the head, numbered after the highest one there is; their ids."""
        added = []
        for _ in range(count):
            existing = self.revisions()
            number = max((int(r[1:]) for r in existing), default=0) + 1
            self.write(number, down=existing[-1] if existing else None)
            added.append(revision_id(number))
        return added

    def write(self, number: int, *, down: str | None, column_type: str = "sa.Text") -> None:
        """Revision `number` after `down`: a new table every fourth revision, else a column on the newest."""
        table_number = number - (number - 1) % 4
        table = f"t{table_number:04d}"
        if number == table_number:
            upgrade = f'op.create_table({table!r}, sa.Column("id", sa.Integer, primary_key=True))'
            downgrade = f"op.drop_table({table!r})"
        else:
            column = f"c{number:04d}"
            upgrade = f'op.add_column({table!r}, sa.Column({column!r}, {column_type}, server_default="x"))'
            downgrade = f"op.drop_column({table!r}, {column!r})"
        if self.work_ms:
            upgrade += f'\n    op.execute("SELECT pg_sleep({self.work_ms / 1000})")'
        text = _REVISION.format(
            revision=revision_id(number),
            down=down,
            hooks=_HOOKS if self.hooks else "",
            upgrade=upgrade,
            downgrade=downgrade,
        )
        (self._path(number) or self.versions / f"{revision_id(number)}.py").write_text(text)
        self._forget_bytecode()

    def edit(self, number: int) -> None:
        """Revision `number` (not a table's first) changed in place: its column becomes a VARCHAR."""
        existing = self.revisions()
        index = existing.index(revision_id(number))
        self.write(number, down=existing[index - 1] if index else None, column_type="sa.String(50)")

    def remove(self, number: int) -> None:
        path = self._path(number)
        assert path is not None
        path.unlink()
        self._forget_bytecode()

    def _forget_bytecode(self) -> None:
        """Drop the revisions' cached bytecode: a file rewritten within the second it was compiled, at the same
        size, would otherwise be imported from its stale .pyc (Python checks mtime and size only)."""
        shutil.rmtree(self.versions / "__pycache__", ignore_errors=True)

    def _path(self, number: int) -> Path | None:
        """The file of revision `number`, whatever it is called."""
        line = re.compile(f"^revision = {re.escape(repr(revision_id(number)))}$", re.MULTILINE)
        return next((p for p in self.versions.glob("*.py") if line.search(p.read_text())), None)

    def touch_env(self) -> None:
        env = self.root / "migrations" / "env.py"
        env.write_text(env.read_text() + "\n# edited\n")
