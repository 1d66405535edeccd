"""Backend construction and selection: the only place that names a backend's module.

Each backend lives in its own module, imported only when it is asked for (the compose module's
availability check imports no database driver), so choosing `auto` costs a socket ping, not imports.
"""

from __future__ import annotations

from collections.abc import Callable

from pytest_dashtam.backends.base import (
    Backend,
    BackendChoice,
    BackendName,
    BackendOptions,
    ComposeFacts,
    EnvName,
    LocalFacts,
    Stack,
    StackStatus,
    UnsupportedError,
)

__all__ = [
    "AUTO_ORDER",
    "Backend",
    "BackendChoice",
    "BackendName",
    "BackendOptions",
    "ComposeFacts",
    "EnvName",
    "LocalFacts",
    "Stack",
    "StackStatus",
    "UnsupportedError",
    "get_backend",
    "select_backend",
]

# What `auto` tries, in order, with the reason it gives for a pick; local is what is left.
AUTO_ORDER: tuple[tuple[BackendName, str], ...] = (
    ("external", "auto: server URLs given"),
    ("compose", "auto: a Docker engine with compose answers"),
)
AUTO_FALLBACK = "auto: no server URLs, no Docker engine with compose"

BackendFactory = Callable[[BackendName, BackendOptions], Backend]


def get_backend(name: BackendName, options: BackendOptions) -> Backend:
    """The backend called `name`, configured by `options`; nothing is started or probed."""
    if name == "local":
        from pytest_dashtam.backends.local import LocalBackend

        return LocalBackend(options)
    if name == "external":
        from pytest_dashtam.backends.external import ExternalBackend

        return ExternalBackend(options)
    if name == "compose":
        from pytest_dashtam.backends.compose import ComposeBackend

        return ComposeBackend(options)
    raise ValueError(f"unknown backend {name!r}")


def select_backend(
    choice: BackendChoice,
    options: BackendOptions,
    *,
    chosen_by: str = "the configuration",
    make: BackendFactory = get_backend,
) -> tuple[Backend, str]:
    """(the backend, why it was chosen) for `choice`; `auto` resolved here and nowhere else.

    `auto` = external when the server URLs are given (`options.postgres_url`, `options.redis_url`), compose
    when the compose files exist and a Docker engine with the compose v2 plugin answers, local otherwise. An
    explicit choice is taken as it is: the reason is "from <chosen_by>" (the caller knows the source:
    "--dashtam-backend", "DASHTAM_BACKEND", "ini dashtam_backend"). `make` builds the candidates (tests pass fakes).
    """
    if choice != "auto":
        return make(choice, options), f"from {chosen_by}"
    fallback = AUTO_FALLBACK
    for name, reason in AUTO_ORDER:
        backend = make(name, options)
        if backend.available():
            return backend, reason
        because = getattr(backend, "unavailable_because", None)  # compose: an engine, but no compose file
        if isinstance(because, str) and because:
            fallback = f"auto: no server URLs, {because}"
    return make("local", options), fallback
