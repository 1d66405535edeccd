"""pytest-dashtam: owns the PostgreSQL + Redis test environment of a FastAPI application."""

__version__ = "0.1.0"

# `pytest -p pytest_dashtam` registers this package as a plugin; pytest then loads the real one from here.
# (The hooks are not re-exported: with the entry point also loading pytest_dashtam.plugin, every hook
# would run twice. plugin.py blocks the entry point when it is loaded under another name.)
pytest_plugins = ["pytest_dashtam.plugin"]
