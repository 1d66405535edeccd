"""A password carried in every URL a reliability case writes, which no output or file may show.

The servers the self-tests use accept any password (trust auth), so it is carried but never checked.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit, urlunsplit

SECRET = "Sup3r-s3cret-" + secrets.token_hex(4)


def with_password(url: str, password: str = SECRET) -> str:
    parts = urlsplit(url)
    user = parts.username or "postgres"
    host = parts.hostname or ""
    netloc = f"{user}:{password}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
