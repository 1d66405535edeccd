"""Who holds a lease, as the servers show it: the owner id and the name its lease connections carry."""

from __future__ import annotations

import re

LEASE_NAME_PREFIX = "pytest-dashtam-lease-"

# PostgreSQL silently truncates identifiers and application_name to 63 bytes: a truncated name would be
# another name, and a truncated lease name would no longer say whose lease it is.
_MAX_IDENTIFIER = 63
_MAX_OWNER = _MAX_IDENTIFIER - len(LEASE_NAME_PREFIX)
_OWNER = re.compile(r"[A-Za-z0-9_-]+")


def lease_name(owner: str) -> str:
    """The application_name / Redis client name a run's lease connections carry."""
    return LEASE_NAME_PREFIX + owner


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
