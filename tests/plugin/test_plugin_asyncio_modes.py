"""The fixtures in async tests under pytest-asyncio's strict and auto modes, function and session loops."""

from __future__ import annotations

import pytest
from inner_project import Inner


@pytest.mark.parametrize("mode", ["strict", "auto"])
@pytest.mark.parametrize("loop_scope", ["function", "session"])
def test_no_loop_errors(inner: Inner, mode: str, loop_scope: str) -> None:
    inner.copy()
    result = inner.run(
        "test_modes.py",
        "-v",
        "-W",
        "error::pytest.PytestUnraisableExceptionWarning",
        "-o",
        f"asyncio_mode={mode}",
        "-o",
        f"asyncio_default_test_loop_scope={loop_scope}",
        "-o",
        f"asyncio_default_fixture_loop_scope={loop_scope}",
    )
    result.assert_outcomes(passed=4)
    assert "attached to a different loop" not in result.stdout.str()
