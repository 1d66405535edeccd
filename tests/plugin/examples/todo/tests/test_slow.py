"""A run that is killed while its tests run (the outer test SIGKILLs it)."""

import time

import pytest


@pytest.mark.parametrize("n", range(2))
def test_waits_to_be_killed(dashtam_stack, n: int) -> None:
    time.sleep(120)
