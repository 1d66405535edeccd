"""The project's conftest imports the app at import time, as many do."""

import shapes.main  # noqa: F401
