"""Leases: how a run marks, on the servers themselves, every database name and Redis index it is using.

A lock file or a registry table would outlive a run that is SIGKILLed, and every other run would then have
to guess whether its owner is still alive. A lease here is a property of a live connection instead, so the
server drops it the moment the run's process dies and nothing is left to guess:

* PostgreSQL (`databases`): a session-level advisory lock on `database_lease_key(name)`, held on one admin
  connection whose application_name is `pytest-dashtam-lease-<owner>` (visible in pg_locks and
  pg_stat_activity).
* Redis (`redis_index`): the lease connection is named `pytest-dashtam-lease-<owner>` (CLIENT SETNAME) and
  stays SELECTed on the index it leases, so CLIENT LIST shows `name=pytest-dashtam-lease-<owner> db=<index>`;
  the index also carries the key `pytest-dashtam:owner` = <owner>, which says whose data is in it after the
  owner is gone.

A name or index no live lease holds is either free, a dead run's leftover (it carries the plugin's stamp:
reclaimed), or someone else's (no stamp: never touched). `Leases` is the one object a run holds: both sides,
opened and closed together, under one owner id (`owner`: who holds a lease, as the servers show it).
"""

from __future__ import annotations

import threading
from collections.abc import Collection

from pytest_dashtam.errors import ConfigError
from pytest_dashtam.leases.databases import ROLE_ADOPTED, DatabaseLeases, database_lease_key
from pytest_dashtam.leases.owner import _MAX_OWNER, _OWNER, LEASE_NAME_PREFIX, lease_name
from pytest_dashtam.leases.redis_index import REDIS_STAMP_KEY, RedisIndexLease, flush_owned_index

__all__ = [
    "LEASE_NAME_PREFIX",
    "REDIS_STAMP_KEY",
    "ROLE_ADOPTED",
    "DatabaseLeases",
    "Leases",
    "RedisIndexLease",
    "database_lease_key",
    "flush_owned_index",
    "lease_name",
]


class Leases:
    """One process's leases on one PostgreSQL server and one Redis server."""

    def __init__(self, admin_url: str, redis_url: str | None, owner: str, *, timeout: float = 10.0) -> None:
        if not _OWNER.fullmatch(owner) or len(owner) > _MAX_OWNER:
            raise ConfigError(
                f"the lease owner id {owner!r} must be 1-{_MAX_OWNER} characters of A-Z a-z 0-9 _ -; "
                "derive it from the run id and the xdist worker id"
            )
        self.owner = owner
        self._lock = threading.RLock()
        self._databases = DatabaseLeases(admin_url, owner, timeout=timeout)
        self._redis = None if redis_url is None else RedisIndexLease(redis_url, owner, timeout=timeout)

    def open(self) -> None:
        """Connect both lease connections; they are the leases, so they stay open until `close`."""
        with self._lock:
            try:
                self._databases.open()
                if self._redis is not None:
                    self._redis.open()
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        """Close both connections, which is what releases every lease; safe to call any number of times."""
        with self._lock:
            self._databases.close()
            if self._redis is not None:
                self._redis.close()

    def __enter__(self) -> Leases:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- PostgreSQL: DatabaseLeases says how ---------------------------------------------------------------

    @property
    def databases(self) -> frozenset[str]:
        """The database names this object leases right now."""
        return self._databases.held

    def claim_database(
        self, base: str, *, adopt_unstamped: bool = False, dev_database: str = "", max_tries: int = 50
    ) -> str:
        """Lease the first of base, base_2, ... that no live run holds and no one else owns (adopting if asked)."""
        return self._databases.claim(
            base, adopt_unstamped=adopt_unstamped, dev_database=dev_database, max_tries=max_tries
        )

    def release_database(self, name: str) -> None:
        """Give the lease on `name` back (the database itself is left as it is)."""
        self._databases.release(name)

    def database_leased_by_someone(self, name: str) -> bool:
        """Whether a live run other than this object holds the lease on `name` right now."""
        return self._databases.leased_by_someone(name)

    def reclaim_databases(self, base: str, *, dev_database: str = "") -> list[str]:
        """Drop what dead runs left of `base`'s family: stamped test/adopted databases no live run leases."""
        return self._databases.reclaim(base, dev_database=dev_database)

    # --- Redis: RedisIndexLease says how ---------------------------------------------------------------------

    @property
    def redis_index(self) -> int | None:
        """The Redis index this object leases, or None."""
        return None if self._redis is None else self._redis.index

    def claim_redis_index(self, first: int, *, databases: int | None, skip: Collection[int] = ()) -> int:
        """Lease the first index from `first` that is ours, empty and unstamped, or a dead owner's leftover."""
        if self._redis is None:
            raise ConfigError("these leases have no Redis URL; pass one to Leases to lease a Redis index")
        return self._redis.claim(first, databases=databases, skip=skip)
