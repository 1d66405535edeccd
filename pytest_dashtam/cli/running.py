"""Which backend runs an environment: the plugin's own choice, or the one `dashtam-env up` remembered."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import cast

from pytest_dashtam.backends import (
    Backend,
    BackendName,
    BackendOptions,
    StackStatus,
    get_backend,
    select_backend,
)
from pytest_dashtam.cli.envs import DEV_COMPOSE_FILE, Env
from pytest_dashtam.stack import backend_options as plugin_backend_options

# Where the CLI remembers which backend runs an environment, so `down` and `status` find it.
CLI_STATE = "cli.json"


def backend_options(env: Env) -> BackendOptions:
    """The plugin's backend options for this project, for `env`; what `up` starts outlives the command."""
    options = dataclasses.replace(plugin_backend_options(env.config), env=env.name, keep=True)
    if env.name == "dev":
        options = dataclasses.replace(
            options,
            compose_files=(DEV_COMPOSE_FILE,),
            env_file=str(env.env_file),
            # A second checkout (or a test) runs its own dev project beside the usual dashtam-dev.
            project_name=os.environ.get("DASHTAM_DEV_COMPOSE_PROJECT") or None,
        )
    return options


def _state_dir(env: Env) -> Path:
    # The backends' own default, so a pytest run finds the stacks this CLI leaves running.
    return BackendOptions(env=env.name, project_root=env.root).resolved_state_dir()


def _remembered_backend(env: Env) -> BackendName | None:
    try:
        data = json.loads((_state_dir(env) / CLI_STATE).read_text())
    except (OSError, ValueError):
        return None
    name = data.get("backend")
    return cast(BackendName, name) if name in ("compose", "local", "external") else None


def remember_backend(env: Env, name: BackendName | None) -> None:
    path = _state_dir(env) / CLI_STATE
    if name is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"backend": name, "since": time.time()}))


def choose_backend(env: Env) -> tuple[Backend, str]:
    """(backend, why): the configured choice (--backend > DASHTAM_BACKEND > ini dashtam_backend > auto);
    `auto` is what already runs this environment (what `up` remembered), else the plugin's own selection."""
    config = env.config
    options = backend_options(env)
    if config.backend == "auto":
        remembered = _remembered_backend(env)
        if remembered is not None:
            return get_backend(remembered, options), "auto: the backend dashtam-env up used"
    source = config.source("backend")
    return select_backend(config.backend, options, chosen_by="--backend" if source.startswith("--") else source)


def find_running(env: Env) -> tuple[Backend, StackStatus]:
    """The backend whose stack runs this environment, with its status, for `down`, `status` and `logs`.

    With `auto`, a local stack that the selection would not pick (a Docker engine answers now, the stack is
    a pytest run's `--dashtam-keep`) is still found: auto reuses what already runs.
    """
    backend, _reason = choose_backend(env)
    status = backend.status()
    if status.running or env.config.backend != "auto" or backend.name == "local":
        return backend, status
    local = get_backend("local", backend_options(env))
    local_status = local.status()
    return (local, local_status) if local_status.running else (backend, status)
