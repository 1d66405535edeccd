"""The Redis-index lease: a named connection SELECTed on the index, and the owner stamp in the index.

The lease connection is named `pytest-dashtam-lease-<owner>` (CLIENT SETNAME) and stays SELECTed on the
index it leases, so CLIENT LIST shows `name=pytest-dashtam-lease-<owner> db=<index>`; the index also carries
the key `pytest-dashtam:owner` = <owner>, which says whose data is in it after the owner is gone. The
per-test flush (`flush_owned_index`) checks that stamp in the same step as the FLUSHDB.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Protocol

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from pytest_dashtam.errors import BackendError, ConfigError, SafetyError
from pytest_dashtam.leases.owner import _OWNER, LEASE_NAME_PREFIX, _one_line, lease_name
from pytest_dashtam.urls import mask_url

if TYPE_CHECKING:
    import redis.asyncio

REDIS_STAMP_KEY = "pytest-dashtam:owner"

# Without a known `databases` setting, how far past `first` a Redis claim walks.
_REDIS_WALK = 64

# 1: the index is ours now (it was already, or empty), 2: a dead owner's leftover flushed and restamped,
# 0: a live owner's, -1: someone else's data (no stamp, not empty). Atomic, so two runs reclaiming the same
# dead owner's index cannot both win: the second sees the first one's stamp.
_CLAIM_SCRIPT = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then return 1 end
if not cur then
  if redis.call('DBSIZE') == 0 then
    redis.call('SET', KEYS[1], ARGV[1])
    return 1
  end
  return -1
end
if ARGV[2] ~= '' and cur == ARGV[2] then
  redis.call('FLUSHDB')
  redis.call('SET', KEYS[1], ARGV[1])
  return 2
end
return 0
"""

# The per-test flush: 1 when flushed; otherwise the stamp that made it refuse, for the message. With
# ARGV[2] = 'release' (the run's last flush) the stamp goes too: a finished run leaves the index empty.
_FLUSH_SCRIPT = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return cur end
redis.call('FLUSHDB')
if ARGV[2] ~= 'release' then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""


class _RedisConnection(Protocol):
    """The part of redis-py's (untyped) Connection the lease uses: one socket, no pool, no retries."""

    def send_command(self, *args: object) -> None: ...
    def read_response(self) -> Any: ...
    def disconnect(self) -> None: ...


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class RedisIndexLease:
    """One process's lease on one index of one Redis server, held on one named connection."""

    def __init__(self, url: str, owner: str, *, timeout: float) -> None:
        self._url = url
        self.owner = owner
        self._timeout = timeout
        self._lock = threading.RLock()
        self._conn: _RedisConnection | None = None
        self._pool: redis.ConnectionPool | None = None
        self._index: int | None = None

    # --- the connection --------------------------------------------------------------------------------

    def open(self) -> None:
        """Connect the lease connection; it is the lease, so it stays open until `close`."""
        with self._lock:
            if self._conn is not None:
                return
            masked = mask_url(self._url)
            try:
                # No retries and no reconnects behind our back: a reconnected connection would be on another
                # index with its lease silently lost; a broken lease connection is an error instead.
                pool = redis.ConnectionPool.from_url(
                    self._url,
                    client_name=lease_name(self.owner),
                    socket_timeout=self._timeout,
                    socket_connect_timeout=self._timeout,
                    retry=Retry(NoBackoff(), 0),
                    max_connections=1,
                )
                self._pool = pool
                self._conn = pool.get_connection()
            except (RedisError, OSError, ValueError) as exc:
                self.close()
                raise BackendError(
                    f"cannot open the lease connection to Redis at {masked}: {_one_line(exc)}; "
                    "check that the server runs and the URL is right"
                ) from exc

    def close(self) -> None:
        """Close the connection, which is what releases the lease; safe to call any number of times."""
        with self._lock:
            conn, self._conn = self._conn, None
            pool, self._pool = self._pool, None
            self._index = None
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.disconnect()
            if pool is not None:
                with contextlib.suppress(Exception):
                    pool.disconnect()

    def _call(self, *args: object, tolerate: str = "") -> Any:
        """One command on the lease connection; a reply error containing `tolerate` is left to the caller."""
        conn = self._conn
        if conn is None:
            raise BackendError("the pytest-dashtam leases are not open; call Leases.open() first")
        masked = mask_url(self._url)
        try:
            conn.send_command(*args)
            return conn.read_response()
        except ResponseError as exc:
            if tolerate and tolerate in str(exc):
                raise
            raise BackendError(
                f"Redis at {masked} refused {args[0]} on the lease connection: {_one_line(exc)}; "
                "the Redis user needs SELECT, GET, EVAL, FLUSHDB and CLIENT LIST on the test indexes"
            ) from exc
        except (RedisError, OSError) as exc:
            # The connection is the lease: once it broke, whatever it held is gone.
            self._index = None
            raise BackendError(
                f"the lease connection to Redis at {masked} failed: {_one_line(exc)}; check that the server runs"
            ) from exc

    # --- the lease -------------------------------------------------------------------------------------

    @property
    def index(self) -> int | None:
        """The Redis index this object leases, or None."""
        return self._index

    def _live_leases(self) -> set[tuple[str, int]]:
        """(client name, db) of every connection: a stamp's owner is live on index i iff (its name, i) is here."""
        found: set[tuple[str, int]] = set()
        for line in (_text(self._call("CLIENT", "LIST")) or "").splitlines():
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            name = fields.get("name", "")
            if name.startswith(LEASE_NAME_PREFIX) and fields.get("db", "").isdigit():
                found.add((name, int(fields["db"])))
        return found

    def claim(self, first: int, *, databases: int | None, skip: Collection[int] = ()) -> int:
        """Lease the first index from `first` that is ours, empty and unstamped, or a dead owner's leftover.

        A dead owner's index is flushed and restamped; a live owner's, or a non-empty one without the stamp
        (someone else's data), is passed over. The lease connection stays SELECTed on the index: that is
        the lease others see. Claiming again gives up the index held so far.
        """
        if databases is not None and first >= databases:
            # Not a crowded server: an index that cannot exist there, which only the configuration can fix.
            raise ConfigError(
                f"the Redis index {first} does not exist on {mask_url(self._url)}: the server has {databases} "
                f"databases (0-{databases - 1}); use a lower --dashtam-redis-index (or index in REDIS_URL), "
                "fewer xdist workers, or raise the server's `databases` setting"
            )
        with self._lock:
            self._index = None
            end = databases if databases is not None else first + _REDIS_WALK
            held: list[int] = []
            foreign: list[int] = []
            for index in range(max(first, 0), end):
                if index in skip:
                    continue
                try:
                    self._call("SELECT", index, tolerate="out of range")
                except ResponseError as exc:
                    if databases is None:
                        end = index
                        break  # past the server's last index
                    raise BackendError(
                        f"Redis at {mask_url(self._url)} has no index {index}: {_one_line(exc)}; "
                        "pass the server's `databases` setting, or use a lower base index"
                    ) from exc
                result = self._claim_index(index)
                if result > 0:
                    self._index = index
                    return index
                (held if result == 0 else foreign).append(index)
            walked = f"in {first}-{end - 1}" if end > first else f"from {first} (the server has {end})"
            raise BackendError(
                f"no free Redis index {walked} on {mask_url(self._url)} "
                f"(skipped {sorted(set(skip))}): held by live runs: {held}, foreign non-empty: {foreign}; "
                "stop the other test runs, empty the foreign indexes or point the tests at another base index, "
                "or raise the server's `databases` setting"
            )

    def _claim_index(self, index: int) -> int:
        me = self.owner
        try:
            cur = _text(self._call("GET", REDIS_STAMP_KEY, tolerate="WRONGTYPE"))
        except ResponseError:
            return -1  # the stamp key holds something that is not a string: someone else's
        if cur is not None and not _OWNER.fullmatch(cur):
            return -1  # no run wrote that: someone else's key, someone else's data
        dead = ""
        if cur is not None and cur != me and (lease_name(cur), index) not in self._live_leases():
            dead = cur
        try:
            return int(self._call("EVAL", _CLAIM_SCRIPT, 1, REDIS_STAMP_KEY, me, dead, tolerate="WRONGTYPE"))
        except ResponseError:
            return -1  # the stamp key turned into something else in between


async def flush_owned_index(client: redis.asyncio.Redis, index: int, owner: str, *, release: bool = False) -> None:
    """The per-test FLUSHDB, only on an index stamped by `owner` (or unstamped), restamping it after
    (`release`: the run's last one, which leaves the index empty, stamp included).

    The stamp check and the flush are one script in the same MULTI as the SELECT, so a run that lost its
    lease cannot flush the index another run took over in between. Never FLUSHALL.
    """
    own_db = int(client.connection_pool.connection_kwargs.get("db", 0) or 0)
    async with client.pipeline(transaction=True) as pipe:
        pipe.execute_command("SELECT", index)
        pipe.eval(_FLUSH_SCRIPT, 1, REDIS_STAMP_KEY, owner, "release" if release else "")
        if own_db != index:
            # The connection goes back to the pool: leave it on the index the pool believes it is on.
            pipe.execute_command("SELECT", own_db)
        results = await pipe.execute()
    result = results[1]
    if result != 1:
        raise SafetyError(
            f"refusing FLUSHDB on Redis index {index}: it is stamped by another run ({REDIS_STAMP_KEY} = "
            f"{_text(result)!r}, this run is {owner!r}); that run took the index over, so this run lost its lease "
            "on it: stop this run and check for two runs sharing one owner id or one index"
        )
