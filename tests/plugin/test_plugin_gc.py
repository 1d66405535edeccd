"""The garbage collector is frozen for the test loop and released after it (plugin.py, pytest_runtestloop)."""

from __future__ import annotations

import gc

from inner_project import Inner

PROBE = """\
import gc


def test_frozen_while_tests_run():
    assert gc.get_freeze_count() > 0
"""


def test_gc_is_frozen_during_the_run_and_released_after_an_in_process_run(inner: Inner) -> None:
    inner.copy()
    inner.pytester.makepyfile(test_gc_probe=PROBE)
    # This outer session may have frozen the heap itself; an inner run then leaves it alone. Unfreeze for the
    # length of the inner run, so the inner run is the one that freezes (and must unfreeze).
    frozen_by_outer = gc.get_freeze_count() > 0
    gc.unfreeze()
    try:
        result = inner.pytester.runpytest_inprocess("-p", "no:cacheprovider", "test_gc_probe.py")
        result.assert_outcomes(passed=1)
        assert gc.get_freeze_count() == 0  # an in-process run leaves nothing frozen behind
    finally:
        if frozen_by_outer:
            gc.freeze()


def test_an_in_process_run_leaves_an_outer_freeze_alone(inner: Inner) -> None:
    inner.copy()
    inner.pytester.makepyfile(test_gc_probe=PROBE)
    already = gc.get_freeze_count()
    gc.freeze()
    try:
        result = inner.pytester.runpytest_inprocess("-p", "no:cacheprovider", "test_gc_probe.py")
        result.assert_outcomes(passed=1)
        # Not unfrozen by the inner run (the count only drops by the frozen objects freed since).
        assert gc.get_freeze_count() > 0
    finally:
        if not already:
            gc.unfreeze()
