"""Backend selection. Each backend lives in its own module, imported only when chosen."""

from __future__ import annotations

from pytest_dashtam.backends.base import Backend, BackendName, BackendOptions, Stack, StackStatus

__all__ = ["Backend", "BackendName", "BackendOptions", "Stack", "StackStatus", "get_backend"]


def get_backend(name: BackendName, options: BackendOptions) -> Backend:
    """The backend called `name`, configured by `options` (`auto` is resolved by the caller)."""
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
