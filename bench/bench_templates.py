"""Template build time on a 100-revision chain: one revision appended (incremental) against a build from empty.

A real Alembic project is generated in a temporary folder (tests/support/chain_project.py: an async env.py,
revisions each adding a table or a column), 100 revisions, then one more. Each run, interleaved:

  from empty    `ensure_template(..., rebuild=True)` of the 101-revision chain: all 101 migrations;
  incremental   the same chain where the 100-revision template is on the server (a copy of one built once,
                under the name a previous run would have left): a clone of it, and the one new migration;

then, for scale, what every build pays whatever it migrates: the migration process with nothing to upgrade
(Python, SQLAlchemy, Alembic, env.py, the connection), reading the chain's order (Alembic loads the 101
revision files in the test process), and a cache hit. Medians over the runs; the ratio against the issue's
target (incremental at most 0.1x of from empty). A measurement, not a test: nothing here asserts a time, only
that each build took the path it is named after.

    .venv/bin/python bench/bench_templates.py                 # a private local-backend stack (tuned, tmpfs)
    .venv/bin/python bench/bench_templates.py --runs 5 --revisions 100
    .venv/bin/python bench/bench_templates.py --revision-ms 50   # each revision also waits 50 ms on the server
    .venv/bin/python bench/bench_templates.py --postgres-url postgresql://postgres@127.0.0.1:5432/postgres

Every build pays a fixed price (the migration process) that small revisions are cheap beside, so the ratio
for a real project's chain depends on what its revisions do: --revision-ms adds a `pg_sleep` to each
revision's upgrade, a stand-in for migrations heavier than adding a column (data migrations, indexes).

With --postgres-url the databases are made on that server under a random `bench_<hex>_test` name and dropped
after (only what carries the plugin's stamp); its own settings apply (fsync on a shared server).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "support"))

import asyncpg  # noqa: E402
from chain_project import ChainProject  # noqa: E402

from pytest_dashtam import schema  # noqa: E402
from pytest_dashtam.schema.chain import load_chain  # noqa: E402

TARGET_RATIO = 0.1


@contextlib.contextmanager
def _server(postgres_url: str | None, root: Path) -> Iterator[tuple[str, str]]:
    """(admin URL, what it is): the URL given, or a local-backend stack of this run's own."""
    if postgres_url:
        yield postgres_url, "the server given"
        return
    from pytest_dashtam.backends import get_backend
    from pytest_dashtam.backends.base import BackendOptions

    backend = get_backend("local", BackendOptions(env="test", project_root=root, state_dir=root / "state"))
    stack = backend.start()
    try:
        yield stack.postgres_url, f"a local-backend stack (PostgreSQL {stack.postgres_version}, tuned)"
    finally:
        backend.stop()


async def _timed(call: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await call()
    return time.perf_counter() - started, result


async def _plant(admin_url: str, source: str, test_db: str, hash_: str) -> str:
    """`source` (a finished template) copied under `test_db`'s template name with its stamp, untimed."""
    conn = await asyncpg.connect(admin_url.replace("+asyncpg", ""))
    try:
        stamp = await conn.fetchval(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1", source
        )
        name = schema.template_name(test_db, hash_)
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
        await conn.execute(f"COMMENT ON DATABASE \"{name}\" IS '{stamp}'")
        await conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        return name
    finally:
        await conn.close()


async def bench(admin_url: str, work: Path, revisions: int, runs: int, work_ms: int) -> dict[str, Any]:
    base = f"bench_{secrets.token_hex(3)}"
    pristine_db, empty_db, incremental_db = f"{base}_p_test", f"{base}_e_test", f"{base}_i_test"
    old = ChainProject(work / "old", hooks=False, work_ms=work_ms)
    old.append(revisions)
    new = old.copy(work / "new")
    new.append()
    old_hash = schema.template_hash(old.ini, None)
    clone = f"{empty_db}_gw0"  # a clone of the new template, for the migration process's fixed cost
    times: dict[str, list[float]] = {"from_empty": [], "incremental": [], "noop_migration": [], "chain": [], "hit": []}
    try:
        first, pristine = await _timed(
            lambda: schema.ensure_template(admin_url, test_db=pristine_db, alembic_ini=old.ini, metadata=None)
        )
        print(f"  built the {revisions}-revision template to extend from empty once: {first:.2f} s", flush=True)
        for run in range(runs):
            elapsed, result = await _timed(
                lambda: schema.ensure_template(
                    admin_url, test_db=empty_db, alembic_ini=new.ini, metadata=None, rebuild=True
                )
            )
            assert (result.extended_from, result.revisions_run) == (None, revisions + 1), result
            times["from_empty"].append(elapsed)

            await schema.drop_templates(admin_url, test_db=incremental_db)
            planted = await _plant(admin_url, pristine.name, incremental_db, old_hash)
            elapsed, result = await _timed(
                lambda: schema.ensure_template(admin_url, test_db=incremental_db, alembic_ini=new.ini, metadata=None)
            )
            assert (result.extended_from, result.revisions_run) == (planted, 1), result
            times["incremental"].append(elapsed)

            elapsed, result = await _timed(
                lambda: schema.ensure_template(admin_url, test_db=incremental_db, alembic_ini=new.ini, metadata=None)
            )
            assert result.cache_hit, result
            times["hit"].append(elapsed)

            await schema.create_test_database(admin_url, clone, template=result.name, per_database_tuning=False)
            elapsed, _ = await _timed(lambda: schema.migrate(schema.database_url(admin_url, clone), new.ini))
            times["noop_migration"].append(elapsed)
            started = time.perf_counter()
            load_chain(new.ini)
            times["chain"].append(time.perf_counter() - started)
            print(
                f"  run {run + 1}/{runs}: from empty {times['from_empty'][-1]:.2f} s, "
                f"incremental {times['incremental'][-1]:.2f} s",
                flush=True,
            )
    finally:
        await schema.drop_test_database(admin_url, clone)
        for test_db in (pristine_db, empty_db, incremental_db):
            await schema.drop_templates(admin_url, test_db=test_db)
    medians = {key: statistics.median(values) for key, values in times.items()}
    return {"revisions": revisions, "revision_ms": work_ms, "runs": runs, "seconds": times, "medians": medians}


def report(result: dict[str, Any], where: str) -> list[str]:
    m = result["medians"]
    n = result["revisions"]
    incremental = f"incremental (clone of the {n}-revision template + 1 migration)"
    each = f" each also waiting {result['revision_ms']} ms," if result["revision_ms"] else ""
    ratio = m["incremental"] / m["from_empty"]
    verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
    return [
        f"\ntemplate build, {n}-revision chain + 1 appended,{each} on {where}; medians of {result['runs']} runs;"
        f" 1-minute load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores",
        f"  {'from empty (' + str(n + 1) + ' migrations)':58} {m['from_empty']:>7.3f} s",
        f"  {incremental:58} {m['incremental']:>7.3f} s",
        f"  {'incremental / from empty':58} {ratio:>7.3f}x   target <= {TARGET_RATIO}x: {verdict}",
        "  what every build pays, whatever it migrates:",
        f"    {'the migration process with nothing to upgrade':56} {m['noop_migration']:>7.3f} s",
        f"    {'reading the chain (Alembic loads the revision files)':56} {m['chain']:>7.3f} s",
        f"    {'a cache hit, for comparison':56} {m['hit']:>7.3f} s",
        f"  incremental beyond that floor: {m['incremental'] - m['noop_migration'] - m['chain']:.3f} s; from empty: "
        f"{m['from_empty'] - m['noop_migration'] - m['chain']:.3f} s",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--revisions", type=int, default=100, help="the chain's length before the append (100)")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs of each build (3)")
    parser.add_argument("--revision-ms", type=int, default=0, help="server time each revision takes (pg_sleep; 0)")
    parser.add_argument("--postgres-url", help="an admin URL of an existing server (default: a private stack)")
    parser.add_argument("--json", type=Path, help="also write the times here")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dashtam-bench-templates-") as tmp:
        work = Path(tmp)
        with _server(options.postgres_url, work / "stack") as (admin_url, where):
            print(f"generated a {options.revisions}-revision Alembic project under {work}; server: {where}")
            result = asyncio.run(bench(admin_url, work, options.revisions, options.runs, options.revision_ms))
    print("\n".join(report(result, where)))
    if options.json:
        options.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
