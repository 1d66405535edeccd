"""A user's conftest: imports the app at import time, as many do."""

from __future__ import annotations

import os

import exampleapp  # noqa: F401  (the app is imported before any fixture runs)

# What the app's environment looked like while conftests were imported (checked by test_env.py).
ENVIRONMENT_AT_IMPORT = os.environ.get("ENVIRONMENT")
TESTING_AT_IMPORT = os.environ.get("TESTING")
