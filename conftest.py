"""The repository's root conftest: only what this repository's own test run needs.

pytest-dashtam itself is loaded by its entry point (pip install -e .): nothing to do for it here. Which backend
the run uses is the environment's choice (DASHTAM_BACKEND, DASHTAM_POSTGRES_URL, ... set by CI or by you),
never written into this repository.
"""

# tests/plugin drives inner pytest runs; `pytest_plugins` is only allowed in the top-level conftest.
pytest_plugins = ["pytester"]
