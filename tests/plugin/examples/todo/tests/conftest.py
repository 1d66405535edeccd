"""The project's conftest imports the app at import time, as many do."""

import todo.main  # noqa: F401
