"""SIGINT, SIGTERM and SIGKILL of pytest and of its process group, at random moments of the start, the tests and
the teardown, on the local and external backends, under -n 0 and -n 2: the run ends (after SIGINT with
pytest's interrupt summary, no traceback), the next run passes, nothing is left that it does not reclaim, and
the dev data is untouched. tests/support/fault_trials.py says what each trial checks.

Each class runs DASHTAM_FAULT_TRIALS trials (1 by default, in every `make test`: a few seconds each); the
full count runs with `bench/trials_faults.py --trials 20`, which prints the same table for every class. The
seed of each trial is printed: `bench/trials_faults.py --seed ... --classes ...` replays one.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import tally
from dev_data import dev_data
from fault_trials import Outcome, TrialClass, Trials, cleanup, problems, table
from foreign import changed_bytes
from selftest import Servers, suspended_guard

TRIALS = int(os.environ.get("DASHTAM_FAULT_TRIALS", "1"))
# In every `make test`: one signal per backend, the others drawn by the full loop. With more trials, all six.
CLASSES = (
    [TrialClass(b, s) for b in ("local", "external") for s in ("SIGINT", "SIGTERM", "SIGKILL")]
    if TRIALS > 1
    else [TrialClass("local", "SIGINT"), TrialClass("external", "SIGKILL")]
)
_SEED = random.randrange(100000)
_OUTCOMES: list[Outcome] = []


@pytest.fixture(scope="module")
def trials(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trials]:
    with suspended_guard(), dev_data(servers.postgres_url, servers.redis_url) as data:
        engine = Trials(Path(tmp_path_factory.mktemp("kills")), servers, data, calibration_runs=1)
        try:
            yield engine
        finally:
            cleanup(engine)
            if _OUTCOMES:
                print("\n" + table(_OUTCOMES))


@pytest.mark.parametrize("trial", range(TRIALS))
@pytest.mark.parametrize("trial_class", CLASSES, ids=[c.name.replace(" ", "-") for c in CLASSES])
def test_a_killed_run_is_survived(
    trials: Trials, trial_class: TrialClass, trial: int, record_property: Callable[[str, object], None]
) -> None:
    """The engine judges the dev data by a bool; the checksums taken here, around the whole trial (its
    calibration runs too), are what the tally counts the changed bytes of."""
    seed = _SEED * 1000 + trial * len(CLASSES) + CLASSES.index(trial_class)
    tally.record(record_property, faults=1)
    before = trials.data.checksum()
    outcome = trials.run_one(trial_class, seed)
    after = trials.data.checksum()
    tally.record(record_property, checksums_compared=1, dev_bytes_changed=changed_bytes(before, after))
    _OUTCOMES.append(outcome)
    print(table([outcome]).splitlines()[2])
    assert outcome.clean, "\n".join(problems([outcome]))
    assert after == before
