"""What an xdist controller whose stack did not open tells its workers, through their environment.

The workers are spawned after the controller's stack failed to open (a server that answered the probe and
then went silent, a start that ran out of time). Without a handoff a worker would be a run of its own: it
would start a local stack of its own, or wait on the same silent server once more, each worker in turn.
With this variable it errors every test with the controller's line at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

FAILED_ENV = "DASHTAM_XDIST_FAILED"


def controller_failed(error: str) -> str:
    """The value of FAILED_ENV for this process's workers."""
    return json.dumps({"controller_pid": os.getpid(), "error": error})


def controller_failure(environ: Mapping[str, str]) -> str | None:
    """The error of the controller this process is an xdist worker of, if its stack did not open (only a
    direct child of the controller that wrote it is its worker, as for the handoff)."""
    raw = environ.get(FAILED_ENV)
    if not raw or not environ.get("PYTEST_XDIST_WORKER"):
        return None
    try:
        data = json.loads(raw)
        pid, error = int(data["controller_pid"]), str(data["error"])
    except (ValueError, KeyError, TypeError):
        return None
    return error if pid == os.getppid() else None
