"""The plugin loads through its entry point, `-p pytest_dashtam` and `-p pytest_dashtam.plugin`, once."""

from __future__ import annotations

import pytest
from inner_project import Inner


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("-p", "pytest_dashtam"),
        ("-p", "pytest_dashtam.plugin"),
        ("-p", "dashtam"),
    ],
    ids=["entry-point", "package", "module", "entry-point-name"],
)
def test_loaded_once(inner: Inner, args: tuple[str, ...]) -> None:
    inner.copy()
    result = inner.run(*args, "test_basic.py", "-k", "settings or client")
    result.assert_outcomes(passed=3)
    assert result.stdout.str().count("dashtam: 0.1.0, backend=") == 1


def test_without_autoload(inner: Inner) -> None:
    inner.copy()
    inner.monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    result = inner.run("-p", "pytest_dashtam", "-p", "asyncio", "test_basic.py", "-k", "settings or client")
    result.assert_outcomes(passed=3)
