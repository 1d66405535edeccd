"""The host checks: every server a URL reaches (`host_targets`) is on this machine or allowed, and an
allowed remote one resolves, looked up with a bound before anything connects."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Collection, Iterable, Mapping, Sequence

from pytest_dashtam.safety._redact import redact_url
from pytest_dashtam.safety._targets import HostTarget, host_targets
from pytest_dashtam.safety._violation import Violation

_ALLOWED_HOSTS_KNOB = "dashtam_allowed_hosts (--dashtam-allowed-hosts)"


def _is_local_host(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback  # ::ffff:127.0.0.1 (Python 3.11 calls it not loopback)
    return address.is_loopback


def _is_socket(host: str) -> bool:
    """libpq reads a host starting with '/' as a socket directory and one starting with '@' as an abstract
    socket; neither can leave the machine."""
    return host.startswith(("/", "@"))


def is_local(host: str) -> bool:
    return _is_socket(host) or _is_local_host(host)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _normal_host(host: str) -> str:
    return host.strip("[]").lower()


def _refusal(masked: str, bad: Sequence[HostTarget], allowed: Collection[str]) -> Violation:
    named = ", ".join(f"{t.host!r} ({t.origin})" for t in bad)
    verb = "is" if len(bad) == 1 else "are"
    accepted = ", ".join(sorted(allowed)) or "none"
    envs = sorted({t.env for t in bad if t.env})
    fix = (
        f"unset {' and '.join(envs)} or point it at this machine, or name a local host in the URL; "
        if envs
        else "run the test servers on this machine; "
    )
    return Violation(
        "host",
        f"refusing {masked}: the host {named} {verb} neither loopback (localhost, 127.0.0.0/8, ::1), "
        f"a Unix socket, nor an allowed host (allowed: {accepted}); {fix}"
        f"add a host to {_ALLOWED_HOSTS_KNOB} only if it is a throw-away test server",
    )


def check_host(
    url: str, allowed_hosts: Collection[str] = (), *, environ: Mapping[str, str] | None = None
) -> Violation | None:
    """Every host the URL's driver will reach must be on this machine (loopback or a socket) or allowed.

    Judged on the resolved host list (`postgres_hosts`, `redis_hosts`), not the netloc: an empty netloc
    is not "the local socket" while PGHOST names another machine.
    """
    targets, violation = host_targets(url, environ)
    if violation is not None:
        return violation
    allowed = {_normal_host(h) for h in allowed_hosts}
    bad = [t for t in targets if not (t.socket or is_local(t.host) or _normal_host(t.host) in allowed)]
    return _refusal(redact_url(url), bad, allowed) if bad else None


def _needs_lookup(host: str) -> bool:
    return bool(host) and not (is_local(host) or _is_ip_literal(host))


def _lookup(hosts: Iterable[str], timeout: float) -> dict[str, str | None]:
    """Each host's getaddrinfo failure (None when it resolved), all looked up at once and bounded.

    getaddrinfo has no timeout of its own and a dead resolver can hang it for far longer than the connect
    timeout; daemon threads let the gate give up on it without holding the interpreter's exit.
    """
    results: dict[str, str | None] = {}

    def resolve(host: str) -> None:
        try:
            socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except Exception as exc:  # gaierror, or UnicodeError for a name IDNA cannot encode
            results[host] = str(exc) or type(exc).__name__
        else:
            results[host] = None

    names = list(dict.fromkeys(hosts))
    threads = [threading.Thread(target=resolve, args=(h,), name=f"dashtam-resolve-{h}", daemon=True) for h in names]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    unanswered = f"no answer within {timeout:g} s"
    return {host: results.get(host, unanswered) for host in names}


def _unresolvable(host: str, detail: str, source: str) -> Violation:
    origin = f" ({source})" if source else ""
    return Violation(
        "host",
        f"the host {host!r}{origin} does not resolve ({detail}), checked before connecting; fix the host name, "
        "or run the tests where it resolves (a compose service name resolves only inside its network)",
    )


def check_resolvable(host: str, *, timeout: float = 2.0, source: str = "") -> Violation | None:
    """An allow-listed remote host must resolve, so a typo is refused at once, not after the connect timeout.

    Loopback names, sockets and IP literals are never looked up: nothing there can fail to resolve.
    """
    if not _needs_lookup(host):
        return None
    detail = _lookup([host], timeout)[host]
    return None if detail is None else _unresolvable(host, detail, source)


def check_servers(
    *,
    postgres_url: str | None,
    redis_url: str | None,
    allowed_hosts: Collection[str],
    environ: Mapping[str, str] | None = None,
    timeout: float = 2.0,
) -> list[Violation]:
    """Everything about the external servers' admin URLs that can be known without connecting to them.

    Hosts first (`check_host`); the allow-listed remote ones that pass are then looked up, all at once,
    so the whole gate costs at most `timeout` seconds.
    """
    found: list[Violation] = []
    to_resolve: dict[str, str] = {}
    for url in (postgres_url, redis_url):
        if not url:  # not an external server (an unset knob arrives as "" as often as None)
            continue
        violation = check_host(url, allowed_hosts, environ=environ)
        if violation is not None:
            found.append(violation)
            continue
        targets, _ = host_targets(url, environ)
        for target in targets:
            if not target.socket and _needs_lookup(target.host):
                to_resolve.setdefault(target.host, f"{target.origin}: {redact_url(url)}")
    if to_resolve:
        answers = _lookup(to_resolve, timeout)
        found += [_unresolvable(h, d, to_resolve[h]) for h, d in answers.items() if d is not None]
    return found
