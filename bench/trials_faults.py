"""Kills at random moments, N trials per class, and the table of counts (issue 10's fault loops, full count).

    .venv/bin/python bench/trials_faults.py --trials 20                       # every class, 20 trials each
    .venv/bin/python bench/trials_faults.py --trials 5 --classes local:SIGINT,external:SIGKILL
    .venv/bin/python bench/trials_faults.py --trials 15 --classes local-cold:SIGINT --moments start
    .venv/bin/python bench/trials_faults.py --trials 20 --classes any:SIGINT,any:SIGTERM,any:SIGKILL --budget-min 25
    .venv/bin/python bench/trials_faults.py --seeds 10001 --classes local:SIGTERM --json out.jsonl

A class is `backend:signal`: backends local, local-cold (an empty cache every trial, so initdb runs in the
start), external, and any (each trial draws local or external); signals SIGINT, SIGTERM, SIGKILL. Each trial
draws -n 0 or -n 2, pytest or its whole process group, and a moment in the start, the tests or the teardown
(tests/support/fault_trials.py says what is checked after each). The external backend and the dev data use
the servers DASHTAM_POSTGRES_URL / DASHTAM_REDIS_URL name, else a private local stack started for this
script. A trial that was not clean is printed with its seed: `--seeds S --classes C` replays it (the moment
drawn again from the replay's own calibration). `--budget-min` starts no new round once the time is spent,
and Ctrl-C prints the counts so far: the table counts what ran. tests/reliability/test_kills.py runs the same
engine with DASHTAM_FAULT_TRIALS trials (1 by default) in every `make test`.

It is a measurement, not a test: it exits 1 when a trial was not clean, after printing the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))

from dev_data import dev_data
from fault_trials import MOMENTS, SIGNALS, TARGETS, WORKERS, Outcome, TrialClass, Trials, cleanup, problems, table
from selftest import named_servers, private_servers

BACKENDS = ("local", "local-cold", "external", "any")


def parse_classes(text: str | None, args: argparse.Namespace) -> list[TrialClass]:
    wanted = text.split(",") if text else [f"{b}:{s}" for b in ("local", "external") for s in SIGNALS]
    out = []
    for item in wanted:
        backend, _, sig = item.partition(":")
        if backend not in BACKENDS or sig not in SIGNALS:
            raise SystemExit(f"unknown class {item!r}: use backend:signal, backend in {BACKENDS}, signal in {SIGNALS}")
        out.append(
            TrialClass(
                backend.removesuffix("-cold"),  # "any": each trial draws local or external
                sig,
                workers=args.workers.split(","),
                targets=args.targets.split(","),
                moments=args.moments.split(","),
                cold=backend.endswith("-cold"),
            )
        )
    return out


def _line(at: float, tc: TrialClass, n: int, seed: int, o: Outcome) -> str:
    return (
        f"[{at:6.0f}s] {tc.name} #{n + 1} seed={seed} -n {o.workers} {o.target} {o.moment}->{o.phase} "
        f"+{o.delay:.2f}s exit={o.exit_code} end={o.ended_s:.1f}s {'ok' if o.clean else 'NOT CLEAN'}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20, help="trials per class")
    parser.add_argument("--classes", help="comma-separated backend:signal (default: local and external x 3)")
    parser.add_argument("--workers", default=",".join(WORKERS))
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--moments", default=",".join(MOMENTS))
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    parser.add_argument("--seeds", help="replay these trial seeds (as printed), each with every --classes class")
    parser.add_argument("--budget-min", type=float, help="start no new round of trials after this many minutes")
    parser.add_argument("--json", type=Path, help="append every trial's outcome here, one JSON line each")
    args = parser.parse_args()
    classes = parse_classes(args.classes, args)
    replays = [int(x) for x in args.seeds.split(",")] if args.seeds else None
    rounds = len(replays) if replays is not None else args.trials
    print(f"seed {args.seed}; {rounds} trials x {len(classes)} classes: {', '.join(c.name for c in classes)}")
    outcomes: list[Outcome] = []
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="dashtam-trials-") as tmp:
            root = Path(tmp)
            named = named_servers()
            with private_servers(root / "servers") if named is None else contextlib.nullcontext(named) as servers:
                print(f"servers: {'named by the environment' if named else 'a private local stack'}")
                with dev_data(servers.postgres_url, servers.redis_url) as data:
                    trials = Trials(root / "trials", servers, data)
                    try:
                        for n in range(rounds):
                            if args.budget_min and time.monotonic() - started > args.budget_min * 60:
                                print(f"time budget of {args.budget_min:g} min spent: stopping after {n} rounds")
                                break
                            for index, tc in enumerate(classes):
                                seed = (
                                    replays[n] if replays is not None else args.seed * 1000 + n * len(classes) + index
                                )
                                outcome = trials.run_one(tc, seed)
                                outcomes.append(outcome)
                                print(_line(time.monotonic() - started, tc, n, seed, outcome), flush=True)
                                if args.json:
                                    with args.json.open("a") as sink:
                                        sink.write(json.dumps(asdict(outcome)) + "\n")
                    finally:
                        cleanup(trials)
    except KeyboardInterrupt:
        print("\ninterrupted: the counts so far")
    print()
    print(table(outcomes))
    bad = problems(outcomes)
    if bad:
        print(f"\n{len(bad)} trial(s) not clean:\n")
        print("\n\n".join(bad))
    print(f"\n{len(outcomes)} trials in {time.monotonic() - started:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
