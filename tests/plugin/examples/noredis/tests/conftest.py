"""The project's conftest imports the app at import time, as many do."""

import notes.main  # noqa: F401
