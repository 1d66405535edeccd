"""Users and ports for the local backend: the parts that can hurt someone else's work.

Which processes are ours is pytest_dashtam.process's business (every kill checks the recorded start
time first); this module picks the user PostgreSQL runs as and the ports the servers listen on.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import random
import socket
from dataclasses import dataclass
from pathlib import Path

_PORT_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Registered ports of common services: keep clear of them even though they lie outside the range.
_AVOID_BELOW = 10000


# ---------------------------------------------------------------------------------------- users


@dataclass(frozen=True)
class RunAs:
    """The unprivileged account a root process runs PostgreSQL as (PostgreSQL refuses root)."""

    name: str
    uid: int
    gid: int


def pick_run_as() -> RunAs | None:
    """None when we are not root (the server runs as us); else `postgres` if it exists, else `nobody`."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return RunAs(name=name, uid=entry.pw_uid, gid=entry.pw_gid)
    return None


def _user_gids(user: RunAs) -> set[int]:
    gids = {user.gid}
    with contextlib.suppress(OSError, KeyError):
        gids.update(os.getgrouplist(user.name, user.gid))
    return gids


def _allowed(st: os.stat_result, user: RunAs, gids: set[int], want: int) -> bool:
    """`want` is a mask of 4 (read), 2 (write), 1 (exec/search) for the user's class of access."""
    if st.st_uid == user.uid:
        bits = (st.st_mode >> 6) & 7
    elif st.st_gid in gids:
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    return bits & want == want


def unreachable_part(path: Path, user: RunAs, want: int = 1) -> Path | None:
    """The first folder on the way to `path` that `user` cannot search (or `path` itself if it
    lacks the `want` access: 4 read, 2 write, 1 exec/search); None when the user can reach it.

    Both the path as written (what exec and open walk) and its resolved form are checked, on mode
    bits, because a root process cannot ask access(2) on another user's behalf.
    """
    gids = _user_gids(user)
    for target in (Path(os.path.abspath(path)), Path(os.path.realpath(path))):
        parts = [*reversed(target.parents), target]
        for i, part in enumerate(parts):
            try:
                st = os.stat(part)
            except OSError:
                return part
            need = want if i == len(parts) - 1 else 1
            if not _allowed(st, user, gids, need):
                return part
    return None


def chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


# ---------------------------------------------------------------------------------------- ports


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports: a server port inside it can be
    taken at any moment by a client socket (seen here with a port picked by bind(0))."""
    try:
        low, high = (int(x) for x in _PORT_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return low, high


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers do: connections of a server that just stopped linger in TIME_WAIT, which
        # would fail a plain bind although the server itself can bind again.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def pick_free_ports(count: int, exclude: set[int] | None = None) -> list[int]:
    """`count` distinct ports that are free now and outside the ephemeral range.

    Random (not sequential) so that concurrent runs rarely try the same one; the server may still
    lose a race for it, which callers handle by retrying with fresh ports.
    """
    low, high = ephemeral_range()
    candidates: list[tuple[int, int]] = []
    if low - 1 >= _AVOID_BELOW:
        candidates.append((_AVOID_BELOW, low - 1))
    if high + 1 <= 65535:
        candidates.append((high + 1, 65535))
    if not candidates:  # a kernel configured with a huge range: take what is left below it
        candidates.append((1024, max(1024, low - 1)))
    taken = set(exclude or ())
    chosen: list[int] = []
    rng = random.SystemRandom()
    weights = [b - a + 1 for a, b in candidates]
    for _ in range(2000):
        if len(chosen) == count:
            break
        a, b = rng.choices(candidates, weights=weights)[0]
        port = rng.randint(a, b)
        if port in taken:
            continue
        taken.add(port)
        if port_is_free(port):
            chosen.append(port)
    if len(chosen) < count:
        raise OSError("no free TCP port found outside the ephemeral range")
    return chosen
