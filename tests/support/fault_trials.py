"""Kills at random moments, repeated, with counts: the engine of tests/reliability/test_kills.py and
bench/trials_faults.py.

One trial: the `todo` project runs three short tests (tests that talk to PostgreSQL and Redis for a few
tenths of a second each); at a random moment of its start, of its tests or of its teardown it gets SIGINT,
SIGTERM or SIGKILL, sent to pytest alone or to its whole process group (what Ctrl-C in a terminal does, xdist
workers included). Then:

* the killed run must end (a **hang** is one still there a minute after the signal), and after SIGINT end
  with pytest's own interrupt summary and no **traceback** (nor one after SIGTERM: a traceback anywhere is
  counted); a SIGINT or SIGTERM before the tests were over must not be **swallowed** (the run going on);
* the **next run** of the same project (same database name, same state folder, same cache) must pass;
* after it, nothing of the killed run is **left** that the next run did not reclaim: no process it started
  (servers, janitor, xdist workers), no database of the project's name but its one template, no Redis key
  the tests wrote and no index stamped by a dead owner, no run folder or state file of a local stack, no
  growth of the local backend's cache beyond its first fill, no `dashtam*` entry in the run's TMPDIR;
* someone's dev data on the same servers (tests/support/dev_data.py) has the same checksum.

A class of trials is a backend (or "any": drawn per trial) and a signal; each trial of it draws the workers
(-n 0 / -n 2), the target (pytest / its group) and the moment at random from a seed that is printed, so a
failure can be replayed (the moment in seconds is drawn again from the replay's own calibration).

A traceback of a SIGINT that lands in pytest's own start, before the plugin is imported, is counted apart
("tb in pytest's start"): no plugin can catch it, and the run still ends and leaves nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis
from dev_data import DevData
from foreign import databases_like
from inner_project import drop_stamped
from selftest import Servers
from todo_project import Todo

SIGNALS = ("SIGINT", "SIGTERM", "SIGKILL")
TARGETS = ("pytest", "group")
MOMENTS = ("start", "tests", "teardown")
WORKERS = ("0", "2")
HANG_S = 60.0  # a killed run still there this long after the signal hangs
NEXT_RUN_S = 300.0
SETTLE_S = 30.0  # what a killed run's janitor and orphaned workers get to finish before anything is counted
_CACHE_SLACK = 1 << 20  # bytes the cache may change by between runs (logs, lock files)

TRIAL_TESTS = """
import asyncio
import os
from pathlib import Path

from sqlalchemy import text

MARKS = Path(os.environ["TRIAL_MARKS"])
TAG = os.environ["TRIAL_TAG"]


def mark(name):
    (MARKS / f"{name}-{os.getpid()}").touch()


async def test_one(db_session, redis_client):
    mark("began")
    for i in range(8):
        await db_session.execute(text("SELECT pg_sleep(0.02)"))
        await redis_client.set(f"{TAG}:one:{i}", i)
    mark("done-one")


async def test_two(client):
    mark("began")
    for i in range(4):
        assert (await client.post(f"/entries/trial{i}")).status_code == 201
        await asyncio.sleep(0.04)
    mark("done-two")


async def test_three(db_session, redis_client):
    mark("began")
    await redis_client.set(f"{TAG}:three", 1)
    for i in range(8):
        await db_session.execute(text("SELECT pg_sleep(0.02)"))
    mark("done-three")
"""
_DONE = ("done-one", "done-two", "done-three")


@dataclass(frozen=True)
class TrialClass:
    """What a class of trials fixes; the rest each trial draws."""

    backend: str  # "local" or "external"; "any": each trial draws one of `backends`
    signal: str
    workers: Sequence[str] = WORKERS
    targets: Sequence[str] = TARGETS
    moments: Sequence[str] = MOMENTS
    cold: bool = False  # local only: an empty cache every trial (initdb runs during the start)
    backends: Sequence[str] = ("local", "external")  # what "any" draws from

    @property
    def name(self) -> str:
        return f"{self.backend}{'-cold' if self.cold else ''} {self.signal}"


@dataclass
class Outcome:
    """One trial, as the table counts it."""

    trial_class: str
    workers: str
    target: str
    moment: str  # the one drawn
    phase: str  # where the run really was when the signal went out
    delay: float
    exit_code: int | None = None
    ended_s: float = 0.0  # from the signal to the killed run's exit
    hang: bool = False
    traceback: str = ""  # "" none, else where the innermost frame was
    # A traceback of a SIGINT that landed in pytest's own start, before any plugin is imported: no plugin can
    # catch it (a known gap, counted apart; the run still ends and leaves nothing).
    early_traceback: str = ""
    interrupt_summary: bool | None = None  # SIGINT only
    swallowed: bool = False
    next_passed: bool = False
    leftovers: list[str] = field(default_factory=list)
    dev_data_changed: bool = False
    seed: int = 0
    backend: str = ""
    detail: str = ""

    @property
    def clean(self) -> bool:
        return (
            not self.hang
            and not self.traceback
            and self.interrupt_summary is not False
            and not self.swallowed
            and self.next_passed
            and not self.leftovers
            and not self.dev_data_changed
        )


@dataclass
class _Timing:
    began: float  # spawn -> the first test's body
    done: float  # spawn -> every test's body done
    exit: float  # spawn -> the run's exit


class _Tree:
    """Every process under a run, recorded while it lives (its children reparent when it is killed)."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.seen: dict[int, tuple[float, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(self.root)
                for proc in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        if proc.pid not in self.seen:
                            self.seen[proc.pid] = (proc.create_time(), " ".join(proc.cmdline()[:4]) or proc.name())
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def alive(self) -> list[str]:
        left = []
        for pid, (created, what) in self.seen.items():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"pid {pid} ({what})")
        return left

    def wait_gone(self, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while (left := self.alive()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left


def _tree_size(path: Path) -> tuple[int, int]:
    files = size = 0
    for entry in path.rglob("*") if path.is_dir() else ():
        with contextlib.suppress(OSError):
            if entry.is_file():
                files += 1
                size += entry.stat().st_size
    return files, size


_TRACEBACK = "Traceback (most recent call last)"
_EARLY = "pytest's own start (before the plugin loads)"
_FRAME = re.compile(r'File "([^"]+)", line \d+, in (\S+)')
_SUMMARY = re.compile(r"^!+ .*(KeyboardInterrupt|Interrupted).* !+$|^!+ KeyboardInterrupt !+$", re.M)


def _where(text: str) -> str:
    """Where a traceback's innermost frame is: the plugin, the project, or pytest's own start (imports)."""
    block = text[text.index(_TRACEBACK) :]
    frames = _FRAME.findall(block.split("\n\n")[0])
    if not frames:
        return "unknown"
    files = [f for f, _fn in frames]
    innermost, function = frames[-1]
    if any("pytest_dashtam" in f for f in files):
        return f"plugin: {Path(innermost).name}:{function}"
    if any(f.startswith("/") and "/site-packages/" not in f and "/lib/python" not in f for f in files):
        return f"project: {Path(innermost).name}:{function}"
    return f"{_EARLY}: {Path(innermost).name}:{function}"


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Trials:
    """Runs trial classes against `servers` (external) or local stacks, with `data` planted on `servers`."""

    def __init__(
        self,
        root: Path,
        servers: Servers,
        data: DevData,
        *,
        log: Callable[[str], None] = print,
        calibration_runs: int = 2,
    ) -> None:
        self.root = root
        # The first run of a project builds its template (and seeds the local cache): a second one times the
        # phases as the trials will see them; one is enough where speed matters more than the draw.
        self.calibration_runs = calibration_runs
        self.servers = servers
        self.data = data
        self.log = log
        self._projects: dict[str, Todo] = {}
        self._timings: dict[tuple[str, str, bool], _Timing] = {}
        self._cache_size: dict[str, tuple[int, int]] = {}

    # --- the project of a class, its calibration ----------------------------------------------------------
    def _project(self, tc: TrialClass) -> Todo:
        key = f"{tc.backend}{'-cold' if tc.cold else ''}"
        if key not in self._projects:
            todo = Todo.make(self.root / key / "todo", self.servers.postgres_url, self.servers.redis_url, 1)
            (todo.path / "tests" / "test_trial.py").write_text(TRIAL_TESTS)
            for sub in ("marks", "tmp", "cache", "out"):
                (self.root / key / sub).mkdir(parents=True, exist_ok=True)
            self._projects[key] = todo
        return self._projects[key]

    def _dirs(self, tc: TrialClass) -> dict[str, Path]:
        base = self.root / f"{tc.backend}{'-cold' if tc.cold else ''}"
        return {name: base / name for name in ("marks", "tmp", "cache", "out")}

    def _env(self, tc: TrialClass, todo: Todo) -> dict[str, str]:
        dirs = self._dirs(tc)
        env = todo.environ(tc.backend)
        env.update(
            TRIAL_MARKS=str(dirs["marks"]),
            TRIAL_TAG=f"trial:{todo.database}",
            TMPDIR=str(dirs["tmp"]),
            DASHTAM_CACHE_DIR=str(dirs["cache"]),
        )
        return env

    def _spawn(self, tc: TrialClass, todo: Todo, workers: str, name: str) -> tuple[subprocess.Popen[bytes], Path]:
        out = self._dirs(tc)["out"] / name
        with open(out, "wb") as sink:  # a file, not a pipe: orphaned workers must not hold our read open
            proc = subprocess.Popen(
                todo.command("tests/test_trial.py", "-n", workers),
                cwd=todo.path,
                env=self._env(tc, todo),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # A SIGINT ignored here (a background job of a shell without job control ignores it) would be
                # ignored by the inner run too, which Python then never turns into KeyboardInterrupt.
                preexec_fn=_default_sigint,
            )
        return proc, out

    def _marks(self, tc: TrialClass) -> set[str]:
        return {p.name.rsplit("-", 1)[0] for p in self._dirs(tc)["marks"].iterdir()}

    def _clear_marks(self, tc: TrialClass) -> None:
        for path in self._dirs(tc)["marks"].iterdir():
            path.unlink(missing_ok=True)

    def _phase(self, tc: TrialClass) -> str:
        marks = self._marks(tc)
        if all(d in marks for d in _DONE):
            return "teardown"
        return "tests" if "began" in marks else "start"

    def _fresh_cache(self, tc: TrialClass) -> None:
        cache = self._dirs(tc)["cache"]
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir()

    def _passing_run(self, tc: TrialClass, workers: str, name: str) -> tuple[bool, _Timing, str]:
        """A run left alone: it must pass; how long its phases took."""
        todo = self._project(tc)
        if tc.cold:
            self._fresh_cache(tc)
        self._clear_marks(tc)
        began = done = 0.0
        started = time.monotonic()
        proc, out = self._spawn(tc, todo, workers, name)
        tree = _Tree(proc.pid)
        try:
            while proc.poll() is None and time.monotonic() - started < NEXT_RUN_S:
                phase = self._phase(tc)
                now = time.monotonic() - started
                if phase != "start" and not began:
                    began = now
                if phase == "teardown" and not done:
                    done = now
                time.sleep(0.02)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return False, _Timing(began, done, NEXT_RUN_S), f"the run did not end in {NEXT_RUN_S:.0f} s"
        finally:
            tree.stop()
        exit_s = time.monotonic() - started
        text = out.read_text(errors="replace")
        passed = proc.returncode == 0 and re.search(r"\b3 passed\b", text) is not None
        tree.wait_gone(SETTLE_S)
        return passed, _Timing(began or exit_s, done or exit_s, exit_s), text

    def calibrate(self, tc: TrialClass, workers: str) -> _Timing:
        key = (tc.backend, workers, tc.cold)
        if key not in self._timings:
            for attempt in range(self.calibration_runs):
                passed, timing, text = self._passing_run(tc, workers, f"calibrate-n{workers}-{attempt}")
                if not passed:
                    raise AssertionError(f"the calibration run of {tc.name} -n {workers} failed:\n{text[-4000:]}")
            self._timings[key] = timing
            self._cache_size.setdefault(tc.backend, _tree_size(self._dirs(tc)["cache"]))
            self.log(
                f"calibrated {tc.name} -n {workers}: tests from {timing.began:.1f} s, done {timing.done:.1f} s, "
                f"exit {timing.exit:.1f} s"
            )
        return self._timings[key]

    # --- what a run may leave -------------------------------------------------------------------------------
    def _dead_stamps(self) -> set[tuple[int, str]]:
        """Redis indexes stamped by an owner whose lease connection is gone (a dead run's, till reclaimed)."""
        base = redis.Redis.from_url(self.servers.redis_url, decode_responses=True)
        try:
            count = int(str(base.config_get("databases").get("databases", 16)))
            live = {str(c.get("name", "")) for c in base.client_list()}
            found = set()
            for index in range(count):
                with redis.Redis.from_url(f"{self.servers.redis_url}/{index}", decode_responses=True) as client:
                    owner = client.get("pytest-dashtam:owner")
                if owner is not None and f"pytest-dashtam-lease-{owner}" not in live:
                    found.add((index, str(owner)))
            return found
        finally:
            base.close()

    def _server_leftovers(self, tc: TrialClass, todo: Todo, dead_before: set[tuple[int, str]]) -> list[str]:
        left: list[str] = []
        names = databases_like(self.servers.postgres_url, todo.database)
        if tc.backend == "external":
            extra = sorted(n for n in names if "_tpl_" not in n)
            templates = sorted(n for n in names if "_tpl_" in n)
            if extra:
                left.append(f"databases {extra}")
            if len(templates) > 1:
                left.append(f"templates {templates}")
        elif names:
            left.append(f"databases on the shared server {sorted(names)}")
        count = int(str(redis.Redis.from_url(self.servers.redis_url).config_get("databases").get("databases", 16)))
        for index in range(count):
            client = redis.Redis.from_url(f"{self.servers.redis_url}/{index}", decode_responses=True)
            keys = client.keys(f"trial:{todo.database}:*")
            if keys:
                left.append(f"Redis keys in index {index}: {sorted(keys)[:3]}")
            client.close()
        # New since the trial began: the killed run's stamp that the next run did not reclaim (on a shared
        # server another checkout's killed run could add one too; a private one has only ours).
        left.extend(f"Redis index {i} stamped by dead owner {o}" for i, o in sorted(self._dead_stamps() - dead_before))
        return left

    def _local_leftovers(self, tc: TrialClass, todo: Todo, pids: set[int]) -> list[str]:
        left: list[str] = []
        state_dir = todo.path / ".dashtam" / "test"
        for path in state_dir.glob("*.json") if state_dir.is_dir() else ():
            left.append(f"state file {path.name}")
        for pid in pids:
            for folder in (Path("/dev/shm"), state_dir / "runs"):
                left.extend(f"run folder {p}" for p in folder.glob(f"dashtam-{pid}-*"))
        files, size = _tree_size(self._dirs(tc)["cache"])
        base_files, base_size = self._cache_size.get(tc.backend, (files, size))
        if not tc.cold and (files > base_files + 2 or size > base_size + _CACHE_SLACK):
            left.append(f"cache grew: {base_files} -> {files} files, {base_size} -> {size} bytes")
        return left

    def _tmp_leftovers(self, tc: TrialClass) -> list[str]:
        tmp = self._dirs(tc)["tmp"]
        return [f"TMPDIR entry {p.name}" for p in tmp.iterdir() if p.name.startswith("dashtam")]

    # --- one trial --------------------------------------------------------------------------------------------
    def run_one(self, drawn: TrialClass, seed: int) -> Outcome:
        rng = random.Random(seed)
        backend = rng.choice(drawn.backends) if drawn.backend == "any" else drawn.backend
        tc = dataclasses.replace(drawn, backend=backend)
        workers, target, moment = rng.choice(tc.workers), rng.choice(tc.targets), rng.choice(tc.moments)
        timing = self.calibrate(tc, workers)
        todo = self._project(tc)
        before = self.data.checksum()
        dead_before = self._dead_stamps()
        outcome = Outcome(drawn.name, workers, target, moment, phase="", delay=0.0, seed=seed, backend=backend)
        for attempt in range(4):  # a teardown moment can miss (the run ended first): draw again, shorter
            if tc.cold:
                self._fresh_cache(tc)
            self._clear_marks(tc)
            proc, out = self._spawn(tc, todo, workers, f"trial-{seed}-{attempt}")
            tree = _Tree(proc.pid)
            spawned = time.monotonic()
            shrink = 0.5**attempt
            if moment == "start":
                delay = rng.uniform(0, timing.began) * shrink
                self._sleep_until(proc, spawned + delay)
            else:
                wanted = "tests" if moment == "tests" else "teardown"
                while self._phase(tc) not in (wanted, "teardown") and proc.poll() is None:
                    time.sleep(0.01)
                width = timing.done - timing.began if moment == "tests" else timing.exit - timing.done
                delay = rng.uniform(0, max(width, 0.05)) * shrink
                self._sleep_until(proc, time.monotonic() + delay)
            outcome.delay = round(delay, 3)
            outcome.phase = self._phase(tc)
            if proc.poll() is not None:
                tree.stop()
                outcome.phase = "missed"
                continue
            sig = getattr(signal, tc.signal)
            sent = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                if target == "group":
                    os.killpg(proc.pid, sig)
                else:
                    os.kill(proc.pid, sig)
            try:
                proc.wait(HANG_S)
            except subprocess.TimeoutExpired:
                outcome.hang = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            outcome.ended_s = round(time.monotonic() - sent, 2)
            outcome.exit_code = proc.returncode
            tree.stop()
            self._judge_output(outcome, tc, out.read_text(errors="replace"))
            lingering = tree.wait_gone(SETTLE_S)
            break
        else:
            outcome.detail = "every attempt missed: the run ended before the signal"
            return outcome
        passed, _timing, text = self._passing_run(tc, workers, f"next-{seed}")
        outcome.next_passed = passed
        if not passed:
            outcome.detail = text[-3000:]
        outcome.leftovers = [f"process {p}" for p in tree.alive()]
        outcome.leftovers += self._server_leftovers(tc, todo, dead_before)
        if tc.backend == "local":
            outcome.leftovers += self._local_leftovers(tc, todo, set(tree.seen))
        outcome.leftovers += self._tmp_leftovers(tc)
        if lingering and not outcome.leftovers:
            outcome.detail = f"reclaimed by the next run: {lingering}"
        outcome.dev_data_changed = self.data.checksum() != before
        return outcome

    @staticmethod
    def _sleep_until(proc: subprocess.Popen[bytes], when: float) -> None:
        while time.monotonic() < when and proc.poll() is None:
            time.sleep(min(0.005, max(when - time.monotonic(), 0)))

    def _judge_output(self, outcome: Outcome, tc: TrialClass, text: str) -> None:
        if _TRACEBACK in text:
            where = _where(text)
            if where.startswith(_EARLY):
                outcome.early_traceback = where
            else:
                outcome.traceback = where
                outcome.detail = text[text.index(_TRACEBACK) :][:3000]
        if tc.signal == "SIGINT" and outcome.phase != "teardown" and not outcome.early_traceback:
            outcome.interrupt_summary = _SUMMARY.search(text) is not None
        if tc.signal in ("SIGINT", "SIGTERM") and outcome.phase in ("start", "tests"):
            # The run went on after the signal: its tests all ran and it ended as if nothing had happened.
            outcome.swallowed = outcome.exit_code in (0, 1) and all(d in self._marks(tc) for d in _DONE)
        if (outcome.swallowed or outcome.interrupt_summary is False) and not outcome.detail:
            outcome.detail = text[-3000:]


# --- counting -------------------------------------------------------------------------------------------------

COLUMNS = (
    "trials",
    "next run passed",
    "leftovers",
    "tracebacks",
    "hangs",
    "no interrupt summary",
    "swallowed",
    "tb in pytest's start",
)


def counts(outcomes: Sequence[Outcome]) -> dict[str, int]:
    return {
        "trials": len([o for o in outcomes if o.exit_code is not None or o.hang]),
        "next run passed": sum(o.next_passed for o in outcomes),
        "leftovers": sum(bool(o.leftovers) for o in outcomes),
        "tracebacks": sum(bool(o.traceback) for o in outcomes),
        "hangs": sum(o.hang for o in outcomes),
        "no interrupt summary": sum(o.interrupt_summary is False for o in outcomes),
        "swallowed": sum(o.swallowed for o in outcomes),
        "tb in pytest's start": sum(bool(o.early_traceback) for o in outcomes),
    }


def table(outcomes: Sequence[Outcome]) -> str:
    """Counts per class, then per phase the signal really landed in, with the longest end after a signal."""
    groups: dict[str, list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault(o.trial_class, []).append(o)
    width = max([len(k) for k in groups] + [5]) + 2
    head = "class".ljust(width) + " | ".join(COLUMNS) + " | longest end (s)"
    lines = [head, "-" * len(head)]

    def row(name: str, group: Sequence[Outcome]) -> str:
        c = counts(group)
        cells = [str(c[k]).rjust(len(k)) for k in COLUMNS]
        longest = max((o.ended_s for o in group), default=0.0)
        return name.ljust(width) + " | ".join(cells) + f" | {longest:.1f}"

    for name, group in groups.items():
        lines.append(row(name, group))
    lines.append(row("all", outcomes))
    lines.append("")
    lines.append("by backend / where the signal landed (phase) / workers / target:")
    keys: dict[str, list[Outcome]] = {}
    for o in outcomes:
        for key in (f"phase {o.phase}", f"-n {o.workers}", f"target {o.target}", f"backend {o.backend}"):
            keys.setdefault(key, []).append(o)
    for key in sorted(keys):
        lines.append(row(key, keys[key]))
    return "\n".join(lines)


def problems(outcomes: Sequence[Outcome]) -> list[str]:
    """One paragraph per trial that was not clean, with its seed (to replay it) and what it showed."""
    out = []
    for o in outcomes:
        if o.clean:
            continue
        what: list[Any] = [
            f"{o.trial_class} ({o.backend}) seed={o.seed} -n {o.workers} target={o.target} moment={o.moment} "
            f"phase={o.phase}",
            f"delay={o.delay}s exit={o.exit_code} ended={o.ended_s}s hang={o.hang} traceback={o.traceback!r} "
            f"early_traceback={o.early_traceback!r}",
            f"summary={o.interrupt_summary} swallowed={o.swallowed} next_passed={o.next_passed}",
            f"leftovers={o.leftovers} dev_data_changed={o.dev_data_changed}",
        ]
        if o.detail:
            what.append(o.detail.strip()[-1500:])
        out.append("\n  ".join(str(w) for w in what))
    return out


def cleanup(trials: Trials) -> None:
    """What the trials' projects keep on purpose (their templates on the shared server), dropped at the end."""
    for todo in trials._projects.values():
        drop_stamped(trials.servers.postgres_url, todo.database)
