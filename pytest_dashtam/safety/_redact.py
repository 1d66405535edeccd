"""URLs and parser errors as the gate's messages show them: never with a password in them."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from pytest_dashtam.urls import MASK, mask_url

_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """`mask_url` where it can be trusted, a blunter mask where it cannot.

    The gate sees the URLs `mask_url` gets wrong: multi-host netlocs (urlsplit reads `h1:5432,h2` as the
    host) and passwords with an unencoded '/', '?' or '@' (urlsplit ends the netloc early and reports no
    password at all). Those get everything between the user name and the last '@' masked: over-masking
    only costs a message some context, under-masking prints a password.
    """
    scheme, sep, rest = url.partition("://")
    try:
        parts = urlsplit(url)
        clean = sep and "," not in parts.netloc and rest.count("@") == parts.netloc.count("@") <= 1
        masked = mask_url(url) if clean else ""
    except ValueError:
        masked = ""
    if not masked or masked == "<unparsable URL>":
        at = rest.rfind("@")
        user, colon, _ = rest[: max(at, 0)].partition(":")
        masked = f"{scheme}{sep}{user}:{MASK}@{rest[at + 1 :]}" if at >= 0 and colon else url
    return _QUERY_PASSWORD.sub(rf"\g<1>{MASK}", masked)


def scrub(text: str, url: str) -> str:
    """An error text from a URL parser, with anything it quoted from the URL's password masked.

    A parser that split the URL in the wrong place quotes a fragment, not the whole password
    (`redis://:pa/ss@h` fails with "Port could not be cast ... 'pa'"), so quoted fragments are checked too.
    """
    rest = url.partition("://")[2]
    at = rest.rfind("@")
    password = rest[:at].partition(":")[2] if at >= 0 else ""
    if not password:
        return text
    secrets = (password, unquote(password))
    text = re.sub(r"'([^']*)'", lambda m: f"'{MASK}'" if any(m[1] in s for s in secrets) else m[0], text)
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text
