"""Leases: how a run marks, on the servers themselves, every database name and Redis index it is using.

A lock file or a registry table would outlive a run that is SIGKILLed, and every other run would then have
to guess whether its owner is still alive. A lease here is a property of a live connection instead, so the
server drops it the moment the run's process dies and nothing is left to guess:

* PostgreSQL: a session-level advisory lock on `database_lease_key(name)`, held on one admin connection
  whose application_name is `pytest-dashtam-lease-<owner>` (visible in pg_locks and pg_stat_activity).
* Redis: the lease connection is named `pytest-dashtam-lease-<owner>` (CLIENT SETNAME) and stays SELECTed
  on the index it leases, so CLIENT LIST shows `name=pytest-dashtam-lease-<owner> db=<index>`; the index also
  carries the key `pytest-dashtam:owner` = <owner>, which says whose data is in it after the owner is gone.

A name or index no live lease holds is either free, a dead run's leftover (it carries the plugin's stamp:
reclaimed), or someone else's (no stamp: never touched). The asyncpg connection lives on a private thread
with its own event loop, so the leases outlive every pytest-asyncio loop the tests open and close.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import Collection, Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import asyncpg
import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from pytest_dashtam.errors import BackendError, ConfigError, SafetyError
from pytest_dashtam.safety import (
    check_test_name,
    database_comment,
    is_owned_comment,
    ownership_comment,
    raise_for,
)
from pytest_dashtam.schema import ROLE_TEST, _drop_database, _ident, _libpq_url, _literal, _lock_key
from pytest_dashtam.urls import mask_url

if TYPE_CHECKING:
    import redis.asyncio

REDIS_STAMP_KEY = "pytest-dashtam:owner"
LEASE_NAME_PREFIX = "pytest-dashtam-lease-"
ROLE_ADOPTED = "adopted"

# PostgreSQL silently truncates identifiers and application_name to 63 bytes: a truncated name would be
# another name, and a truncated lease name would no longer say whose lease it is.
_MAX_IDENTIFIER = 63
_MAX_OWNER = _MAX_IDENTIFIER - len(LEASE_NAME_PREFIX)
_OWNER = re.compile(r"[A-Za-z0-9_-]+")
# Without a known `databases` setting, how far past `first` a Redis claim walks.
_REDIS_WALK = 64
# The roles whose databases a dead run leaves behind and a later run may drop (templates are schema.py's).
_RECLAIMABLE_STAMPS = (ownership_comment(ROLE_TEST, ""), ownership_comment(ROLE_ADOPTED, ""))
_FAMILY_SUFFIX = re.compile(r"_(?:\d|gw)")

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

_T = TypeVar("_T")


class _RedisConnection(Protocol):
    """The part of redis-py's (untyped) Connection the lease uses: one socket, no pool, no retries."""

    def send_command(self, *args: object) -> None: ...
    def read_response(self) -> Any: ...
    def disconnect(self) -> None: ...


def database_lease_key(name: str) -> int:
    """The advisory lock key that leases database `name`: signed 64-bit, the same in every process.

    `schema._lock_key("db:" + name)`; schema.py's own locks hash `pytest-dashtam:<scope>`, so the two
    never meet. In pg_locks the key shows as classid = its high 32 bits, objid = its low 32 bits, objsubid 1.
    """
    return _lock_key("db:" + name)


def lease_name(owner: str) -> str:
    """The application_name / Redis client name a run's lease connections carry."""
    return LEASE_NAME_PREFIX + owner


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _is_family(name: str, base: str) -> bool:
    """base, or base_<digit>... / base_gw...: the names runs derive from `base` (never its templates)."""
    if "_tpl_" in name or not name.startswith(base):
        return False
    rest = name[len(base) :]
    return rest == "" or bool(_FAMILY_SUFFIX.match(rest))


class Leases:
    """One process's leases on one PostgreSQL server and one Redis server."""

    def __init__(self, admin_url: str, redis_url: str | None, owner: str, *, timeout: float = 10.0) -> None:
        if not _OWNER.fullmatch(owner) or len(owner) > _MAX_OWNER:
            raise ConfigError(
                f"the lease owner id {owner!r} must be 1-{_MAX_OWNER} characters of A-Z a-z 0-9 _ -; "
                "derive it from the run id and the xdist worker id"
            )
        self._admin_url = _libpq_url(admin_url)
        self._redis_url = redis_url
        self.owner = owner
        self._timeout = timeout
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pg: asyncpg.Connection | None = None
        self._redis: _RedisConnection | None = None
        self._redis_pool: redis.ConnectionPool | None = None
        self._redis_index: int | None = None
        self._held: set[str] = set()

    # --- connections -----------------------------------------------------------------------------------

    def open(self) -> None:
        """Connect both lease connections; they are the leases, so they stay open until `close`."""
        with self._lock:
            if self._pg is not None:
                return
            try:
                self._start_loop()
                self._pg = self._run(self._connect_pg(), what="connect")
                if self._redis_url is not None:
                    self._connect_redis(self._redis_url)
            except BaseException:
                self.close()
                raise

    @property
    def _masked_pg(self) -> str:
        return mask_url(self._admin_url)

    def _start_loop(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        thread = threading.Thread(target=run, name=f"pytest-dashtam-leases-{self.owner}", daemon=True)
        thread.start()
        if not ready.wait(self._timeout):
            loop.call_soon_threadsafe(loop.stop)
            raise BackendError("the pytest-dashtam lease thread did not start; check the process's thread limits")
        self._loop, self._thread = loop, thread

    async def _connect_pg(self) -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(
            self._admin_url,
            timeout=self._timeout,
            command_timeout=self._timeout,
            server_settings={"application_name": lease_name(self.owner)},
        )
        return conn

    def _connect_redis(self, url: str) -> None:
        masked = mask_url(url)
        try:
            # No retries and no reconnects behind our back: a reconnected connection would be on another
            # index with its lease silently lost; a broken lease connection is an error instead.
            pool = redis.ConnectionPool.from_url(
                url,
                client_name=lease_name(self.owner),
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                retry=Retry(NoBackoff(), 0),
                max_connections=1,
            )
            self._redis_pool = pool
            self._redis = pool.get_connection()
        except (RedisError, OSError, ValueError) as exc:
            raise BackendError(
                f"cannot open the lease connection to Redis at {masked}: {_one_line(exc)}; "
                "check that the server runs and the URL is right"
            ) from exc

    def _run(self, coro: Coroutine[Any, Any, _T], *, what: str) -> _T:
        """Run `coro` on the lease thread, bounded by the timeout; PostgreSQL failures become one-line errors."""
        loop = self._loop
        if loop is None or not loop.is_running():
            coro.close()
            raise BackendError("the pytest-dashtam leases are not open; call Leases.open() first")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(self._timeout + 1.0)
        except TimeoutError as exc:
            future.cancel()
            raise BackendError(
                f"PostgreSQL at {self._masked_pg}: timed out after {self._timeout:g}s trying to {what}; "
                "check that the server answers and nothing blocks it (pg_stat_activity)"
            ) from exc
        except (
            OSError,
            ValueError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.exceptions._base.InternalClientError,  # a connection the server ended mid-protocol
        ) as exc:
            raise BackendError(
                f"PostgreSQL at {self._masked_pg}: cannot {what}: {_one_line(exc)}; "
                "check that the server runs, the admin URL is right and its role has CREATEDB"
            ) from exc

    def _conn(self) -> asyncpg.Connection:
        if self._pg is None:
            raise BackendError("the pytest-dashtam leases are not open; call Leases.open() first")
        return self._pg

    def close(self) -> None:
        """Close both connections, which is what releases every lease; safe to call any number of times."""
        with self._lock:
            pg, self._pg = self._pg, None
            loop, self._loop = self._loop, None
            thread, self._thread = self._thread, None
            conn, self._redis = self._redis, None
            pool, self._redis_pool = self._redis_pool, None
            self._held.clear()
            self._redis_index = None
            if pg is not None and loop is not None:
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(pg.close(timeout=self._timeout), loop).result(self._timeout + 1)
                if not pg.is_closed():
                    with contextlib.suppress(Exception):
                        loop.call_soon_threadsafe(pg.terminate)
            if loop is not None:
                with contextlib.suppress(Exception):
                    loop.call_soon_threadsafe(loop.stop)
            if thread is not None:
                thread.join(self._timeout)
            if loop is not None and not loop.is_running():
                with contextlib.suppress(Exception):
                    loop.close()
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.disconnect()
            if pool is not None:
                with contextlib.suppress(Exception):
                    pool.disconnect()

    def __enter__(self) -> Leases:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- PostgreSQL ------------------------------------------------------------------------------------

    @property
    def databases(self) -> frozenset[str]:
        """The database names this object leases right now."""
        return frozenset(self._held)

    def claim_database(
        self, base: str, *, adopt_unstamped: bool = False, dev_database: str = "", max_tries: int = 50
    ) -> str:
        """Lease the first of base, base_2, base_3, ... that no live run holds and no one else owns.

        A database that exists with the plugin's stamp and no live lease is a dead run's leftover: it is
        claimed as it is (the caller recreates it). One without the stamp is someone else's and is passed
        over, unless `adopt_unstamped`: a server the plugin made from nothing (a compose stack whose image
        created POSTGRES_DB) has no one else's data, and its database is stamped as adopted.
        """
        raise_for([v for v in (check_test_name(base, dev_database),) if v is not None])
        with self._lock:
            conn = self._conn()
            for n in range(1, max(max_tries, 1) + 1):
                name = base if n == 1 else f"{base}_{n}"
                if len(name.encode()) > _MAX_IDENTIFIER:
                    raise ConfigError(
                        f"the test database name {name!r} is longer than PostgreSQL's {_MAX_IDENTIFIER} bytes; "
                        f"shorten the test database name {base!r}"
                    )
                if name in self._held or check_test_name(name, dev_database) is not None:
                    continue
                if self._run(self._try_claim(conn, name, adopt_unstamped), what=f"lease database {name!r}"):
                    self._held.add(name)
                    return name
        raise BackendError(
            f"no free test database name from {base!r} to {base}_{max_tries}: each is leased by a live run or "
            "is someone else's database (no pytest-dashtam stamp); stop the other test runs on this server, "
            "or set another test database name"
        )

    async def _try_claim(self, conn: asyncpg.Connection, name: str, adopt_unstamped: bool) -> bool:
        key = database_lease_key(name)
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
            return False  # a live run holds it
        keep = False
        try:
            exists, comment = await database_comment(conn, name)
            if not exists or is_owned_comment(comment):
                keep = True
            elif adopt_unstamped:
                stamp = ownership_comment(ROLE_ADOPTED, self.owner)
                await conn.execute(f"COMMENT ON DATABASE {_ident(name)} IS {_literal(stamp)}")
                keep = True
        finally:
            if not keep:
                await conn.execute("SELECT pg_advisory_unlock($1)", key)
        return keep

    def release_database(self, name: str) -> None:
        """Give the lease on `name` back (the database itself is left as it is)."""
        with self._lock:
            if name not in self._held:
                return
            self._held.discard(name)
            conn = self._conn()
            self._run(
                conn.execute("SELECT pg_advisory_unlock($1)", database_lease_key(name)),
                what=f"release the lease on {name!r}",
            )

    def database_leased_by_someone(self, name: str) -> bool:
        """Whether a live run other than this object holds the lease on `name` right now."""
        with self._lock:
            if name in self._held:
                return False
            return self._run(self._probe(self._conn(), name), what=f"check the lease on {name!r}")

    @staticmethod
    async def _probe(conn: asyncpg.Connection, name: str) -> bool:
        key = database_lease_key(name)
        if await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
            await conn.execute("SELECT pg_advisory_unlock($1)", key)
            return False
        return True

    def reclaim_databases(self, base: str, *, dev_database: str = "") -> list[str]:
        """Drop what dead runs left of `base`'s family: stamped test/adopted databases no live run leases.

        The lease is taken for the drop, so a run starting at the same moment cannot claim the name while it
        goes; `_drop_database` checks the name and the stamp once more right before the statement.
        """
        with self._lock:
            return self._run(self._reclaim(self._conn(), base, dev_database), what=f"reclaim the leftovers of {base!r}")

    async def _reclaim(self, conn: asyncpg.Connection, base: str, dev_database: str) -> list[str]:
        rows = await conn.fetch(
            "SELECT datname, shobj_description(oid, 'pg_database') AS comment FROM pg_database "
            "WHERE NOT datistemplate AND left(datname, length($1)) = $1 ORDER BY datname",
            base,
        )
        dropped: list[str] = []
        for row in rows:
            name: str = row["datname"]
            comment: str | None = row["comment"]
            if (
                name in self._held
                or not _is_family(name, base)
                or comment is None
                or not comment.startswith(_RECLAIMABLE_STAMPS)
                or check_test_name(name, dev_database) is not None
            ):
                continue
            key = database_lease_key(name)
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
                continue  # a live run's
            try:
                if await _drop_database(conn, name, dev_database=dev_database, force=True):
                    dropped.append(name)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", key)
        return dropped

    # --- Redis -----------------------------------------------------------------------------------------

    @property
    def redis_index(self) -> int | None:
        """The Redis index this object leases, or None."""
        return self._redis_index

    def _redis_call(self, *args: object, tolerate: str = "") -> Any:
        """One command on the lease connection; a reply error containing `tolerate` is left to the caller."""
        conn = self._redis
        if conn is None:
            if self._redis_url is None:
                raise ConfigError("these leases have no Redis URL; pass one to Leases to lease a Redis index")
            raise BackendError("the pytest-dashtam leases are not open; call Leases.open() first")
        masked = mask_url(self._redis_url or "")
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
            self._redis_index = None
            raise BackendError(
                f"the lease connection to Redis at {masked} failed: {_one_line(exc)}; check that the server runs"
            ) from exc

    def _live_leases(self) -> set[tuple[str, int]]:
        """(client name, db) of every connection: a stamp's owner is live on index i iff (its name, i) is here."""
        found: set[tuple[str, int]] = set()
        for line in (_text(self._redis_call("CLIENT", "LIST")) or "").splitlines():
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            name = fields.get("name", "")
            if name.startswith(LEASE_NAME_PREFIX) and fields.get("db", "").isdigit():
                found.add((name, int(fields["db"])))
        return found

    def claim_redis_index(self, first: int, *, databases: int | None, skip: Collection[int] = ()) -> int:
        """Lease the first index from `first` that is ours, empty and unstamped, or a dead owner's leftover.

        A dead owner's index is flushed and restamped; a live owner's, or a non-empty one without the stamp
        (someone else's data), is passed over. The lease connection stays SELECTed on the index: that is
        the lease others see. Claiming again gives up the index held so far.
        """
        with self._lock:
            self._redis_index = None
            end = databases if databases is not None else first + _REDIS_WALK
            held: list[int] = []
            foreign: list[int] = []
            for index in range(max(first, 0), end):
                if index in skip:
                    continue
                try:
                    self._redis_call("SELECT", index, tolerate="out of range")
                except ResponseError as exc:
                    if databases is None:
                        end = index
                        break  # past the server's last index
                    raise BackendError(
                        f"Redis at {mask_url(self._redis_url or '')} has no index {index}: {_one_line(exc)}; "
                        "pass the server's `databases` setting, or use a lower base index"
                    ) from exc
                result = self._claim_index(index)
                if result > 0:
                    self._redis_index = index
                    return index
                (held if result == 0 else foreign).append(index)
            walked = f"in {first}-{end - 1}" if end > first else f"from {first} (the server has {end})"
            raise BackendError(
                f"no free Redis index {walked} on {mask_url(self._redis_url or '')} "
                f"(skipped {sorted(set(skip))}): held by live runs: {held}, foreign non-empty: {foreign}; "
                "stop the other test runs, empty the foreign indexes or point the tests at another base index, "
                "or raise the server's `databases` setting"
            )

    def _claim_index(self, index: int) -> int:
        me = self.owner
        try:
            cur = _text(self._redis_call("GET", REDIS_STAMP_KEY, tolerate="WRONGTYPE"))
        except ResponseError:
            return -1  # the stamp key holds something that is not a string: someone else's
        if cur is not None and not _OWNER.fullmatch(cur):
            return -1  # no run wrote that: someone else's key, someone else's data
        dead = ""
        if cur is not None and cur != me and (lease_name(cur), index) not in self._live_leases():
            dead = cur
        try:
            return int(self._redis_call("EVAL", _CLAIM_SCRIPT, 1, REDIS_STAMP_KEY, me, dead, tolerate="WRONGTYPE"))
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
