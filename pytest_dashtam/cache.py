"""The user's cache folder for pytest-dashtam: what outlives a run on this machine and only saves time.

The local backend keeps its initdb'd cluster and seed there, schema/hashing its note of where a project's
Alembic scripts are. Nothing in it is needed for correctness: a missing or damaged entry is made again.
"""

from __future__ import annotations

import os
from pathlib import Path

from pytest_dashtam.errors import ConfigError


def cache_root() -> Path:
    """The user's cache folder for pytest-dashtam (DASHTAM_CACHE_DIR, XDG_CACHE_HOME, ~/.cache)."""
    explicit = os.environ.get("DASHTAM_CACHE_DIR")
    if explicit:
        # The default cache is best effort; a folder the user named and the plugin cannot use is a mistake.
        path = Path(explicit).expanduser()
        try:
            path.mkdir(parents=True, exist_ok=True)
            usable = os.access(path, os.W_OK | os.X_OK)
        except OSError as exc:
            raise ConfigError(
                f"DASHTAM_CACHE_DIR={explicit!r} cannot be made a folder ({exc.strerror or exc}); "
                "point it at a folder this user can write, or unset it"
            ) from None
        if not usable:
            raise ConfigError(
                f"DASHTAM_CACHE_DIR={explicit!r} is not writable; point it at a folder this user can write"
            )
        return path
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "pytest-dashtam"
