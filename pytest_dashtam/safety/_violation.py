"""What a refused check is, and how refusals reach the user: one `SafetyError` on one line."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pytest_dashtam.errors import SafetyError

CheckName = Literal["environment", "testing_flag", "database_name", "url", "host", "redis_index", "ownership"]


@dataclass(frozen=True)
class Violation:
    """One refused check: `message` is a single line saying what was wrong, what was checked, what to do."""

    check: CheckName
    message: str

    def __str__(self) -> str:
        return self.message


def raise_for(violations: Sequence[Violation]) -> None:
    """Raise one `SafetyError` carrying every refusal, on one line; do nothing when there are none."""
    if violations:
        raise SafetyError("; ".join(v.message for v in violations))
