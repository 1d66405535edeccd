"""Freezing the heap the tests start with, so the garbage collector stops walking it (moved out of plugin.py,
which calls these from `pytest_runtestloop` and a config cleanup).

After collection and the stack's preparation the heap holds about 10^5 long-lived objects (pytest's items,
SQLAlchemy, pydantic, asyncpg, the app). Every full collection walks them all again: pytest's own
`gc.collect()` passes at the end (its unraisable-exception check, in `pytest_unconfigure` and in a cleanup:
about 45 ms each here) and the interpreter's at exit. `gc.freeze()` moves them to the permanent generation,
as CPython's docs suggest for a long-lived heap; garbage the tests make is still collected, and still
reported by pytest's unraisable-exception check. Measured on the suite benchmark (200 tests): 2.29 s ->
about 2.0 s a run.

Also in the xdist controller, whose heap grows with every worker's reports (-n 2 on 2,000 tests: about
0.1 s). Only when nothing froze before (`gc.get_freeze_count() == 0`): an in-process pytester run inside a
frozen session, or a program that manages freezing itself, is left alone.
"""

from __future__ import annotations

import atexit
import gc


def freeze() -> bool:
    """Freeze the heap as it is, unless something froze before; whether this call froze it."""
    if gc.get_freeze_count() != 0:
        return False
    gc.freeze()
    return True


def unfreeze() -> None:
    """Undo `freeze()` once pytest's last collection has run.

    Unfrozen so that `pytest.main()` in a process that goes on (pytester's in-process runs, an IDE) does not
    keep the session's objects out of the collector's reach. What usually follows is interpreter exit, whose
    own full collection would walk the whole heap again for objects freed with the process anyway (about
    0.1 s here): an exit handler freezes again just before it. pytest's unraisable-exception check has
    already run by then.
    """
    gc.unfreeze()
    atexit.unregister(gc.freeze)  # one handler however many sessions ran in this process
    atexit.register(gc.freeze)
