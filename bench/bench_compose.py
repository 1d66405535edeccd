"""Compose backend start-to-healthy and teardown times, beside the local backend's, from one run.

    .venv/bin/python bench/bench_compose.py [--runs 5]

For each backend: `start()` until it returns a Stack whose servers answered through their ports
(for compose: `up --wait` on the healthchecks, host ports, the SHOW/INFO probes), then `stop()`
(compose: `down --volumes`). Compose also gets its attach time: `start()` on a stack that is already
up, which is what a run pays after `make test-up` or `--dashtam-keep`.

Images: DASHTAM_POSTGRES_IMAGE / DASHTAM_REDIS_IMAGE if set, else the offline stand-ins
dashtam-ci/postgres:15 and dashtam-ci/redis:7 when the engine has them. Host ports are chosen by
Docker, and the project name is this run's own, so a developer's stacks are never touched.
The local column is left out when pytest_dashtam.backends.local cannot be imported.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pytest_dashtam.backends.base import BackendOptions
from pytest_dashtam.backends.compose import ComposeBackend, docker_available

REPO = Path(__file__).resolve().parents[1]


def _use_stand_ins() -> None:
    os.environ.setdefault("DASHTAM_TEST_POSTGRES_PORT", "0")
    os.environ.setdefault("DASHTAM_TEST_REDIS_PORT", "0")
    for variable, stand_in in (
        ("DASHTAM_POSTGRES_IMAGE", "dashtam-ci/postgres:15"),
        ("DASHTAM_REDIS_IMAGE", "dashtam-ci/redis:7"),
    ):
        if variable in os.environ:
            continue
        found = subprocess.run(["docker", "image", "inspect", stand_in], capture_output=True, check=False)
        if found.returncode == 0:
            os.environ[variable] = stand_in


def bench_compose(runs: int) -> dict[str, list[float]]:
    project = f"dashtam-bench-{os.getpid()}"
    options = BackendOptions(env="test", project_root=REPO, project_name=project, timeout=120.0)
    start: list[float] = []
    stop: list[float] = []
    attach: list[float] = []
    try:
        for _ in range(runs):
            backend = ComposeBackend(options)
            t0 = time.perf_counter()
            stack = backend.start()
            start.append(time.perf_counter() - t0)
            assert stack.started, "the bench project was already up"
            # A second run attaching to the stack that is up.
            t0 = time.perf_counter()
            attached = ComposeBackend(options).start()
            attach.append(time.perf_counter() - t0)
            assert not attached.started
            t0 = time.perf_counter()
            backend.stop()
            stop.append(time.perf_counter() - t0)
    finally:
        subprocess.run(
            ["docker", "compose", "--project-name", project, "down", "--volumes", "--timeout", "1"],
            capture_output=True,
            check=False,
            cwd="/",
        )
    return {"start": start, "stop": stop, "attach": attach}


def bench_local(runs: int) -> dict[str, list[float]] | str:
    """The local backend on its defaults, in a private cache: the first start is cold, the rest warm."""
    try:
        from pytest_dashtam.backends.local import LocalBackend
    except ImportError as exc:
        return f"not importable ({exc})"
    work = Path(tempfile.mkdtemp(prefix="dashtam-bench-compose-"))
    options = BackendOptions(env="test", project_root=REPO, state_dir=work / "state", timeout=60.0)

    def make() -> LocalBackend:
        try:
            return LocalBackend(options, cache_dir=work / "cache")
        except TypeError:  # an older signature without a private cache folder
            return LocalBackend(options)

    start: list[float] = []
    stop: list[float] = []
    try:
        for _ in range(runs + 1):
            backend = make()
            t0 = time.perf_counter()
            backend.start()
            start.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            backend.stop()
            stop.append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"cold": start[:1], "start": start[1:], "stop": stop[1:]}


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{_median(values):7.3f} s  (min {min(values):.3f}, max {max(values):.3f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="measured starts per backend (default 5)")
    args = parser.parse_args(argv)
    if not docker_available():
        print("no Docker engine with compose v2 answers: install Docker with the compose plugin and start it")
        return 2
    _use_stand_ins()
    images = (
        f"{os.environ.get('DASHTAM_POSTGRES_IMAGE', 'default')} + {os.environ.get('DASHTAM_REDIS_IMAGE', 'default')}"
    )
    print(f"compose images: {images}; {args.runs} runs each; medians")

    compose = bench_compose(args.runs)
    local = bench_local(args.runs)

    print(f"{'':34}{'compose':<40}{'local':<40}")
    local_start = local["start"] if isinstance(local, dict) else []
    local_stop = local["stop"] if isinstance(local, dict) else []
    print(f"{'start-to-healthy (fresh stack)':34}{_fmt(compose['start']):<40}{_fmt(local_start):<40}")
    if isinstance(local, dict):
        print(f"{'  local cold (empty initdb cache)':34}{'':<40}{_fmt(local['cold']):<40}")
    print(f"{'attach to a running stack':34}{_fmt(compose['attach']):<40}{'-':<40}")
    print(f"{'teardown':34}{_fmt(compose['stop']):<40}{_fmt(local_stop):<40}")
    if isinstance(local, dict):
        print(
            f"ratios compose/local: start {_median(compose['start']) / _median(local_start):.1f}x, "
            f"teardown {_median(compose['stop']) / _median(local_stop):.1f}x"
        )
    else:
        print(f"local backend: {local}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
