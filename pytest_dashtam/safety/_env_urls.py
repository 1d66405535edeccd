"""The env file's own URLs, read before the plugin points them at the stack.

The plugin replaces the host, port, database and index of the env file's DATABASE_URL and REDIS_URL with
the stack's, so a wrong value there would often go unnoticed; but the rest of the URL is kept (the driver,
the query), and a URL that cannot be read, names a remote machine or a server of another kind says the
file was meant for somewhere else. Refusing it names the mistake instead of running on a guess.
"""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import parse_qs, urlsplit

from pytest_dashtam.safety._hosts import is_local
from pytest_dashtam.safety._redact import redact_url, scrub
from pytest_dashtam.safety._targets import REDIS_SCHEMES, is_postgres_scheme
from pytest_dashtam.safety._violation import Violation

_FIX = "in the test env file ({knob}); write it as {form}"
_KNOB = "dashtam_env_file / --dashtam-env-file"


def _remote(host: str, allowed: Collection[str]) -> bool:
    """A host that can only be another machine: an address or a dotted name, not loopback, not allowed.

    A single-label name (`postgres`, `db`, `redis`) is a compose service or /etc/hosts name the stack
    replaces, as in a compose project's env file; `db.example.com` or 10.0.0.5 is somebody's server.
    """
    bare = host.strip("[]").lower()
    if not bare or is_local(bare) or bare in {a.lower() for a in allowed}:
        return False
    return "." in bare or ":" in bare


def check_env_url(name: str, url: str | None, allowed_hosts: Collection[str] = ()) -> Violation | None:
    """DATABASE_URL (name "DATABASE_URL") or REDIS_URL as the env file spells it: readable, of the right
    kind of server, and not naming a remote host (in the netloc or a `?host=` parameter)."""
    if not url:
        return None
    postgres = name == "DATABASE_URL"
    form = "postgresql+asyncpg://user:password@localhost:5432/myapp_test" if postgres else "redis://localhost:6379/1"
    fix = _FIX.format(knob=_KNOB, form=form)
    masked = redact_url(url)
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    kind_ok = is_postgres_scheme(scheme) if postgres else scheme in REDIS_SCHEMES
    if not kind_ok:
        kind = "PostgreSQL" if postgres else "Redis"
        return Violation("url", f"{name} {masked!r} is not a {kind} URL {fix}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (reading it validates it: ValueError on a non-number or out of range)
    except ValueError as exc:
        return Violation("url", f"{name} {masked} cannot be read ({scrub(str(exc), url)}) {fix}")
    query_hosts = [h for v in parse_qs(parts.query).get("host", []) for h in v.split(",")]
    for host, where in [(parts.hostname or "", "in the URL"), *((h, "in its host= parameter") for h in query_hosts)]:
        if _remote(host, allowed_hosts) or (where != "in the URL" and host and not is_local(host)):
            return Violation(
                "host",
                f"{name} {masked} names the host {host!r} ({where}), another machine; the tests run only "
                f"on the stack the plugin starts or is given: name localhost or a compose service {fix}",
            )
    if not postgres and parts.scheme != "unix":
        path = parts.path.strip("/")
        if path and not path.isdigit():
            return Violation("redis_index", f"{name} {masked}: the path must be an index, got {path!r} {fix}")
    return None
