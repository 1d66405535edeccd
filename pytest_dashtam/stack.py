"""Which backend runs the session's stack, told what: the plugin's configuration as the backends see it.

The plugin's runs and `dashtam-env` (which adjusts the options for its environments) share these options,
so a stack either of them starts is the one the other finds.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pytest_dashtam.backends.base import Backend, BackendName, BackendOptions, Stack
from pytest_dashtam.config import PluginConfig

MakeBackend = Callable[[BackendName, BackendOptions], Backend]


def backend_options(config: PluginConfig) -> BackendOptions:
    """The backends' view of the plugin's configuration."""
    kwargs: dict[str, Any] = {}
    if config.timeout is not None:
        kwargs["timeout"] = config.timeout
    return BackendOptions(
        env="test",
        project_root=config.root,
        keep=config.keep,
        redis=config.redis,
        postgres_url=config.postgres_url,
        redis_url=config.redis_url,
        compose_files=config.compose_files,
        project_name=config.compose_project,
        project_stem=compose_stem(config.test_database),
        last_one_out=True,
        env_file=str(config.env_file),
        postgres_bin=config.postgres_bin,
        redis_bin=config.redis_bin,
        **kwargs,
    )


def choose_backend(config: PluginConfig, make: MakeBackend | None = None) -> tuple[Backend, str]:
    """(backend, why): the configured backend, `auto` resolved by the backends' own selection."""
    from pytest_dashtam import backends

    return backends.select_backend(
        config.backend,
        backend_options(config),
        chosen_by=config.source("backend"),
        make=make or backends.get_backend,
    )


def backend_of(config: PluginConfig, stack: Stack, make: MakeBackend | None = None) -> Backend:
    """A backend of the stack's kind, for a process that did not start it (an xdist worker)."""
    from pytest_dashtam import backends

    return (make or backends.get_backend)(stack.backend, backend_options(config))


def compose_stem(test_database: str) -> str:
    """The default compose project's stem: the test database's name without its `test` part (dashtam_test ->
    dashtam, so Dashtam's stacks are dashtam-test and dashtam-dev), hyphens for underscores. Two checkouts of
    one project share the stack (the leases keep their runs apart); two projects never share one."""
    stem = re.sub(r"[_-]?tests?$", "", test_database) or test_database
    return stem.replace("_", "-").strip("-") or "dashtam"
