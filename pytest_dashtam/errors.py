"""Errors meant for users: each message says what was wrong and what to do, in one line."""

from __future__ import annotations


class DashtamError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(DashtamError):
    """The plugin's or the CLI's configuration is wrong (a pytest.UsageError / exit 2)."""


class SafetyError(DashtamError):
    """A safety check refused to let a destructive statement run."""


class BackendError(DashtamError):
    """A backend could not start, attach to, reach or stop its servers."""


class BinaryNotFoundError(BackendError):
    """No server binary was found where the local backend looks."""


class SchemaError(DashtamError):
    """The test schema could not be built: a failing migration, several Alembic heads, a clone that failed."""
