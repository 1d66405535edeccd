"""Leases against the machine's real PostgreSQL and Redis, including holders that are SIGKILLed.

Both servers are shared (other engineers' runs, someone's data in `test`, `root`, `postgres`, other runs in
other Redis indexes): every test uses database names with its own random prefix and removes them after,
checks the foreign databases are untouched, and uses only Redis indexes 11-15 that it found empty, cleaning
only what it stamped or planted itself.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import redis.asyncio
from selftest import MACHINE_DATABASES, Servers

from pytest_dashtam.errors import BackendError, ConfigError, SafetyError
from pytest_dashtam.leases import (
    LEASE_NAME_PREFIX,
    REDIS_STAMP_KEY,
    Leases,
    database_lease_key,
    flush_owned_index,
)
from pytest_dashtam.safety import OWNERSHIP_COMMENT_PREFIX, ownership_comment

REPO = Path(__file__).resolve().parents[2]
FOREIGN = MACHINE_DATABASES
TEST_INDEXES = range(11, 16)
WAIT = 15.0
# Serialises the Redis tests of concurrent runs of this file (released when the connection closes).
AREA_LOCK = database_lease_key("pytest-dashtam:test_leases.py:redis-area")

# A run that claims a database name and/or a Redis index, writes into the index, then waits to be killed.
HOLDER = r"""
import sys, time
import redis
from pytest_dashtam.leases import Leases

admin_url, redis_url, owner, base, first, key = sys.argv[1:7]
leases = Leases(admin_url, redis_url or None, owner)
leases.open()
name = leases.claim_database(base) if base else ""
index = ""
if first:
    index = str(leases.claim_redis_index(int(first), databases=int(first) + 1))
    redis.Redis.from_url(f"{redis_url}/{index}").set(key, "the holder's data")
print(f"ready|{name}|{index}", flush=True)
time.sleep(600)
"""


# --- the servers ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lab:
    """The session's PostgreSQL and Redis (tests/conftest.py's `servers`), as this file looks at them."""

    postgres_url: str
    redis_url: str

    # --- PostgreSQL ---
    def pg(self, dbname: str = "") -> psycopg.Connection[Any]:
        url = self.postgres_url if not dbname else self.postgres_url.rsplit("/", 1)[0] + "/" + dbname
        return psycopg.connect(url, autocommit=True)

    def databases(self, prefix: str) -> dict[str, tuple[int, str | None]]:
        with self.pg() as conn:
            rows = conn.execute(
                "SELECT datname, oid, shobj_description(oid, 'pg_database') FROM pg_database "
                "WHERE left(datname, length(%s)) = %s",
                (prefix, prefix),
            ).fetchall()
        return {name: (int(oid), comment) for name, oid, comment in rows}

    def foreign(self, prefix: str) -> dict[str, tuple[int, str | None]]:
        """Every database that is not this test's and carries no plugin stamp: (oid, comment)."""
        with self.pg() as conn:
            rows = conn.execute(
                "SELECT datname, oid, shobj_description(oid, 'pg_database') FROM pg_database"
            ).fetchall()
        return {
            name: (int(oid), comment)
            for name, oid, comment in rows
            if not name.startswith(prefix) and not (comment or "").startswith(OWNERSHIP_COMMENT_PREFIX)
        }

    def create(self, name: str, comment: str | None = None, *, row: str | None = None) -> None:
        with self.pg() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
            if comment is not None:
                conn.execute(f"COMMENT ON DATABASE \"{name}\" IS '{comment}'")
        if row is not None:
            with self.pg(name) as conn:
                conn.execute("CREATE TABLE precious (v text)")
                conn.execute("INSERT INTO precious VALUES (%s)", (row,))

    def rows(self, name: str) -> list[str]:
        with self.pg(name) as conn:
            return [r[0] for r in conn.execute("SELECT v FROM precious").fetchall()]

    # --- Redis ---
    def r(self, index: int) -> redis.Redis:
        return redis.Redis.from_url(f"{self.redis_url}/{index}", decode_responses=True)

    def dbsize(self, index: int) -> int:
        with self.r(index) as client:
            return int(client.dbsize())

    def lease_clients(self) -> dict[str, int]:
        with self.r(0) as client:
            return {c["name"]: int(c["db"]) for c in client.client_list() if c["name"].startswith(LEASE_NAME_PREFIX)}

    def snapshot(self, index: int, keys: Collection[str]) -> tuple[int, dict[str, str | None]]:
        with self.r(index) as client:
            return client.dbsize(), {k: client.get(k) for k in keys}


@pytest.fixture(scope="session")
def lab(servers: Servers) -> Lab:
    return Lab(servers.postgres_url, servers.redis_url)


# --- PostgreSQL helpers --------------------------------------------------------------------------------------


def _stamp(role: str = "test") -> str:
    return ownership_comment(role, "leases-test")


@pytest.fixture
def prefix(lab: Lab) -> Iterator[str]:
    """This test's database-name prefix; every database with it is dropped after, foreign ones checked."""
    prefix = f"lease_{secrets.token_hex(4)}"
    before = lab.foreign(prefix)
    yield prefix
    with lab.pg() as conn:
        for name in lab.databases(prefix):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    after = lab.foreign(prefix)
    for name in FOREIGN:
        assert after.get(name) == before.get(name), f"the foreign database {name!r} changed"
    # Other runs may drop their own databases meanwhile; what is still there must be unchanged.
    assert {n: v for n, v in after.items() if n in before} == {n: v for n, v in before.items() if n in after}


@pytest.fixture
def make_leases(lab: Lab) -> Iterator[Callable[..., Leases]]:
    """Open Leases with fresh owner ids, all closed after the test."""
    made: list[Leases] = []

    def make(*, redis: bool = True, timeout: float = 10.0) -> Leases:
        redis_url = lab.redis_url if redis else None
        leases = Leases(lab.postgres_url, redis_url, f"t{secrets.token_hex(4)}_{len(made)}", timeout=timeout)
        leases.open()
        made.append(leases)
        return leases

    yield make
    for leases in made:
        leases.close()


def _wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def spawn(lab: Lab) -> Iterator[Callable[..., tuple[subprocess.Popen[str], list[str]]]]:
    """Start holder processes; each is killed (by its own handle) after the test whatever happened."""
    procs: list[subprocess.Popen[str]] = []

    def start(owner: str, *, base: str = "", first: int | None = None, key: str = "") -> tuple[Any, list[str]]:
        args = [lab.postgres_url, lab.redis_url, owner, base, "" if first is None else str(first), key]
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("ready|"):
            proc.kill()
            _, err = proc.communicate(timeout=WAIT)
            pytest.fail(f"the holder did not start: {err.strip().splitlines()[-1:]}")
        return proc, line.strip().split("|")[1:]

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=WAIT)


def _sigkill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=WAIT)


# --- Redis helpers -----------------------------------------------------------------------------------------


# Flush only an index whose stamp is one of this test's owners: never one someone else stamped.
_CLEANUP = """
local cur = redis.call('GET', KEYS[1])
for _, owner in ipairs(ARGV) do
  if cur == owner then redis.call('FLUSHDB') return 1 end
end
return 0
"""


class RedisArea:
    """The Redis indexes 11-15 this test found empty, and what it planted or stamped in them."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.free = [i for i in TEST_INDEXES if lab.dbsize(i) == 0]
        self.owners: list[str] = []
        self.planted: dict[int, list[str]] = {}
        self.tag = secrets.token_hex(4)

    def take(self, n: int) -> list[int]:
        if len(self.free) < n:
            pytest.skip(f"needs {n} empty Redis indexes in 11-15, found {self.free}: other runs are using them")
        return self.free[:n]

    def only(self, *allowed: int) -> set[int]:
        """The `skip` that restricts a claim's walk to `allowed`."""
        return set(range(16)) - set(allowed)

    def plant(self, index: int, values: dict[str, str]) -> dict[str, str]:
        keys = {f"leases-test:{self.tag}:{k}": v for k, v in values.items()}
        with self.lab.r(index) as client:
            client.mset(keys)
        self.planted.setdefault(index, []).extend(keys)
        return keys

    def owned(self, leases: Leases) -> Leases:
        self.owners.append(leases.owner)
        return leases

    def cleanup(self) -> None:
        for index in TEST_INDEXES:
            with self.lab.r(index) as client:
                if index in self.planted:
                    client.delete(*self.planted[index])
                if self.owners:
                    client.eval(_CLEANUP, 1, REDIS_STAMP_KEY, *self.owners)


@pytest.fixture
def area(lab: Lab) -> Iterator[RedisArea]:
    """The Redis indexes for one test; concurrent runs of this file take turns, as they share 11-15."""
    with lab.pg() as conn:
        deadline = time.monotonic() + 120
        while not conn.execute("SELECT pg_try_advisory_lock(%s)", (AREA_LOCK,)).fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < deadline, "another run of test_leases.py holds the Redis test indexes"
            time.sleep(0.1)
        area = RedisArea(lab)
        try:
            yield area
        finally:
            area.cleanup()


# --- PostgreSQL: claims ------------------------------------------------------------------------------------


def test_a_second_run_cannot_claim_a_held_name_and_the_lease_is_visible(
    lab: Lab, prefix: str, make_leases: Callable[..., Leases]
) -> None:
    base = f"{prefix}_test"
    first, second = make_leases(redis=False), make_leases(redis=False)
    assert first.claim_database(base) == base
    assert second.claim_database(base) == f"{base}_2"
    assert second.database_leased_by_someone(base)
    assert not first.database_leased_by_someone(base)  # its own lease is not someone else's
    assert first.database_leased_by_someone(f"{base}_2")
    assert not first.database_leased_by_someone(f"{base}_3")

    key = database_lease_key(base)
    with lab.pg() as conn:
        row = conn.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.classid::bigint = %s AND l.objid::bigint = %s",
            ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
        ).fetchone()
    assert row == (LEASE_NAME_PREFIX + first.owner,)

    with pytest.raises(BackendError, match=rf"no free test database name from '{base}'") as info:
        second.claim_database(base, max_tries=1)
    assert "\n" not in str(info.value)

    first.release_database(base)
    assert not second.database_leased_by_someone(base)
    assert second.claim_database(base) == base
    assert lab.databases(prefix) == {}  # a lease creates nothing


def test_close_releases_the_database_leases(prefix: str, make_leases: Callable[..., Leases]) -> None:
    base = f"{prefix}_test"
    first, second = make_leases(redis=False), make_leases(redis=False)
    assert first.claim_database(base) == base
    first.close()
    first.close()  # idempotent
    assert not second.database_leased_by_someone(base)
    assert second.claim_database(base) == base


def test_a_foreign_unstamped_database_is_skipped_and_untouched(
    lab: Lab, prefix: str, make_leases: Callable[..., Leases]
) -> None:
    base = f"{prefix}_test"
    lab.create(base, row="someone's data")
    before = lab.databases(prefix)
    leases = make_leases(redis=False)
    assert leases.claim_database(base) == f"{base}_2"
    assert not leases.database_leased_by_someone(base)  # skipped, so not kept locked either
    assert leases.reclaim_databases(base) == []
    assert lab.databases(prefix) == before
    assert before[base][1] is None
    assert lab.rows(base) == ["someone's data"]


def test_adopt_unstamped_stamps_the_database_and_keeps_it(
    lab: Lab, prefix: str, make_leases: Callable[..., Leases]
) -> None:
    base = f"{prefix}_test"
    lab.create(base, row="made by the image")
    oid = lab.databases(prefix)[base][0]
    leases = make_leases(redis=False)
    assert leases.claim_database(base, adopt_unstamped=True) == base
    assert lab.databases(prefix)[base] == (oid, ownership_comment("adopted", leases.owner))
    assert lab.rows(base) == ["made by the image"]


def test_a_stamped_leftover_is_claimed(lab: Lab, prefix: str, make_leases: Callable[..., Leases]) -> None:
    base = f"{prefix}_test"
    lab.create(base, _stamp())
    assert make_leases(redis=False).claim_database(base) == base


def test_names_are_checked(lab: Lab, prefix: str, make_leases: Callable[..., Leases]) -> None:
    base = f"{prefix}_test"
    leases, other = make_leases(redis=False), make_leases(redis=False)
    with pytest.raises(SafetyError, match="does not contain 'test'"):
        leases.claim_database(f"{prefix}_data")
    with pytest.raises(SafetyError, match="is the dev database"):
        leases.claim_database(base, dev_database=base)
    assert other.claim_database(base) == base
    assert leases.claim_database(base, dev_database=f"{base}_2") == f"{base}_3"  # the dev name is never a candidate
    with pytest.raises(ConfigError, match="longer than PostgreSQL's 63 bytes"):
        leases.claim_database(f"{prefix}_test_" + "x" * 60)
    with pytest.raises(ConfigError, match="owner id"):
        Leases(lab.postgres_url, None, "bad owner!")


def test_a_socket_admin_url_with_a_driver_suffix(servers: Servers, prefix: str) -> None:
    if servers.postgres_socket_url is None:
        pytest.skip("the servers' Unix socket is not known (DASHTAM_POSTGRES_URL names a server that has none here)")
    socket_url = servers.postgres_socket_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    leases = Leases(socket_url, None, f"t_socket{secrets.token_hex(4)}")
    try:
        leases.open()
        assert leases.claim_database(f"{prefix}_test") == f"{prefix}_test"
    finally:
        leases.close()


def test_a_lost_lease_connection_is_an_error_and_close_still_succeeds(
    lab: Lab, prefix: str, area: RedisArea, make_leases: Callable[..., Leases]
) -> None:
    (index,) = area.take(1)
    leases = area.owned(make_leases())
    assert leases.claim_redis_index(index, databases=16, skip=area.only(index)) == index
    with lab.pg() as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (LEASE_NAME_PREFIX + leases.owner,),
        )
    with lab.r(0) as client:
        for c in client.client_list():
            if c["name"] == LEASE_NAME_PREFIX + leases.owner:
                client.client_kill_filter(_id=c["id"])
    with pytest.raises(BackendError) as info:
        leases.claim_database(f"{prefix}_test")
    assert "\n" not in str(info.value)
    with pytest.raises(BackendError, match="lease connection to Redis"):
        leases.claim_redis_index(index, databases=16, skip=area.only(index))
    assert leases.redis_index is None
    leases.close()
    leases.close()


def test_connection_errors_are_one_line_and_masked(lab: Lab) -> None:
    leases = Leases("postgresql+asyncpg://u:s3cret@127.0.0.1:1/postgres", None, "t_unreachable", timeout=2)
    with pytest.raises(BackendError) as info:
        leases.open()
    message = str(info.value)
    assert "s3cret" not in message
    assert "\n" not in message
    assert "postgresql://u:***@127.0.0.1:1/postgres" in message
    leases.close()

    leases = Leases(lab.postgres_url, "redis://:s3cret@127.0.0.1:1", "t_unreachable", timeout=2)
    with pytest.raises(BackendError) as info:
        leases.open()
    assert "s3cret" not in str(info.value)
    assert "\n" not in str(info.value)
    assert "redis://:***@127.0.0.1:1" in str(info.value)
    leases.close()


# --- PostgreSQL: dead runs ----------------------------------------------------------------------------------


def test_a_sigkilled_holder_loses_its_lease_and_its_leftover_is_reclaimed(
    lab: Lab, prefix: str, make_leases: Callable[..., Leases], spawn: Callable[..., Any]
) -> None:
    base = f"{prefix}_test"
    lab.create(base, _stamp())
    holder, (name, _) = spawn(f"h{secrets.token_hex(4)}", base=base)
    assert name == base
    leases = make_leases(redis=False)
    assert leases.database_leased_by_someone(base)
    assert leases.claim_database(base) == f"{base}_2"
    assert leases.reclaim_databases(base) == []  # a live holder's database is never reclaimed
    assert base in lab.databases(prefix)

    _sigkill(holder)
    _wait_until(lambda: not leases.database_leased_by_someone(base), "the server to release the dead holder's lease")
    assert leases.claim_database(base) == base  # claimable again
    assert leases.reclaim_databases(base) == []  # held by this object now: not dropped
    assert base in lab.databases(prefix)
    leases.release_database(base)
    assert leases.reclaim_databases(base) == [base]
    assert base not in lab.databases(prefix)


def test_reclaim_drops_only_the_familys_unleased_stamped_test_databases(
    lab: Lab, prefix: str, make_leases: Callable[..., Leases]
) -> None:
    base = f"{prefix}_test"
    dropped = {f"{base}_gw0": _stamp(), f"{base}_2_gw1": _stamp("adopted"), f"{base}_7": _stamp()}
    kept = {
        f"{base}_3": _stamp(),  # leased by a live run below
        f"{base}_tpl_ab12cd34ef56": _stamp("template"),
        f"{base}_4": _stamp("template-building"),
        f"{base}x": _stamp(),
        f"{base}_x": _stamp(),
        f"{base}_5": None,  # someone else's
    }
    for name, comment in {**dropped, **kept}.items():
        lab.create(name, comment)
    live = make_leases(redis=False)
    assert live.claim_database(f"{base}_3") == f"{base}_3"
    leases = make_leases(redis=False)
    assert sorted(leases.reclaim_databases(base)) == sorted(dropped)
    left = lab.databases(prefix)
    assert set(left) == set(kept)
    assert left[f"{base}_5"][1] is None


# --- Redis ------------------------------------------------------------------------------------------------


def test_a_non_empty_unstamped_index_is_skipped_and_keeps_its_keys(
    lab: Lab, area: RedisArea, make_leases: Callable[..., Leases]
) -> None:
    foreign, free = area.take(2)
    keys = area.plant(foreign, {"a": "1", "b": "2"})
    before = lab.snapshot(foreign, keys)
    leases = area.owned(make_leases())
    assert leases.claim_redis_index(foreign, databases=16, skip=area.only(foreign, free)) == free
    assert leases.redis_index == free
    assert lab.lease_clients()[LEASE_NAME_PREFIX + leases.owner] == free  # the lease, visible on the server
    with lab.r(free) as client:
        assert client.get(REDIS_STAMP_KEY) == leases.owner
        assert client.dbsize() == 1
    with pytest.raises(BackendError, match=rf"held by live runs: \[\], foreign non-empty: \[{foreign}\]") as info:
        leases.claim_redis_index(foreign, databases=16, skip=area.only(foreign))
    assert "\n" not in str(info.value)
    assert leases.redis_index is None
    assert lab.snapshot(foreign, keys) == before


def test_a_stamp_that_is_not_an_owner_is_someone_elses(
    lab: Lab, area: RedisArea, make_leases: Callable[..., Leases]
) -> None:
    wrong_type, garbage = area.take(2)
    with lab.r(wrong_type) as client:
        client.hset(REDIS_STAMP_KEY, "not", "a string")
    area.planted[wrong_type] = [REDIS_STAMP_KEY]
    with lab.r(garbage) as client:
        client.set(REDIS_STAMP_KEY, "not an owner id!")
    area.planted[garbage] = [REDIS_STAMP_KEY]
    leases = area.owned(make_leases())
    with pytest.raises(BackendError, match=rf"foreign non-empty: \[{wrong_type}\]"):
        leases.claim_redis_index(wrong_type, databases=16, skip=area.only(wrong_type))
    with pytest.raises(BackendError, match=rf"held by live runs: \[\], foreign non-empty: \[{garbage}\]"):
        leases.claim_redis_index(garbage, databases=16, skip=area.only(garbage))
    with lab.r(wrong_type) as client:
        assert client.hgetall(REDIS_STAMP_KEY) == {"not": "a string"}
    with lab.r(garbage) as client:
        assert client.get(REDIS_STAMP_KEY) == "not an owner id!"


def test_an_index_of_a_live_owner_is_skipped_until_it_closes(
    lab: Lab, area: RedisArea, make_leases: Callable[..., Leases]
) -> None:
    a, b = area.take(2)
    first, second = area.owned(make_leases()), area.owned(make_leases())
    assert first.claim_redis_index(a, databases=16, skip=area.only(a, b)) == a
    with lab.r(a) as client:
        client.set(f"leases-test:{area.tag}:first", "first's data")
    assert second.claim_redis_index(a, databases=16, skip=area.only(a, b)) == b
    with pytest.raises(BackendError, match=rf"held by live runs: \[{a}\]"):
        second.claim_redis_index(a, databases=16, skip=area.only(a))
    with lab.r(a) as client:
        assert client.get(f"leases-test:{area.tag}:first") == "first's data"

    first.close()
    _wait_until(lambda: LEASE_NAME_PREFIX + first.owner not in lab.lease_clients(), "the server to drop the lease")
    assert second.claim_redis_index(a, databases=16, skip=area.only(a)) == a  # a closed owner's: reclaimed
    with lab.r(a) as client:
        assert client.dbsize() == 1
        assert client.get(REDIS_STAMP_KEY) == second.owner


def test_moving_to_another_index_gives_the_old_one_up(
    lab: Lab, area: RedisArea, make_leases: Callable[..., Leases]
) -> None:
    a, b = area.take(2)
    first, second = area.owned(make_leases()), area.owned(make_leases())
    assert first.claim_redis_index(a, databases=16, skip=area.only(a)) == a
    assert first.claim_redis_index(b, databases=16, skip=area.only(b)) == b
    assert lab.lease_clients()[LEASE_NAME_PREFIX + first.owner] == b
    assert second.claim_redis_index(a, databases=16, skip=area.only(a)) == a


def test_an_index_of_a_sigkilled_owner_is_flushed_and_restamped(
    lab: Lab, area: RedisArea, make_leases: Callable[..., Leases], spawn: Callable[..., Any]
) -> None:
    (index,) = area.take(1)
    owner = f"h{secrets.token_hex(4)}"
    area.owners.append(owner)
    key = f"leases-test:{area.tag}:holder"
    holder, (_, claimed) = spawn(owner, first=index, key=key)
    assert int(claimed) == index
    assert lab.lease_clients()[LEASE_NAME_PREFIX + owner] == index
    leases = area.owned(make_leases())
    with pytest.raises(BackendError, match=rf"held by live runs: \[{index}\]"):
        leases.claim_redis_index(index, databases=16, skip=area.only(index))

    _sigkill(holder)
    _wait_until(lambda: LEASE_NAME_PREFIX + owner not in lab.lease_clients(), "the server to drop the dead lease")
    assert leases.claim_redis_index(index, databases=16, skip=area.only(index)) == index
    with lab.r(index) as client:
        assert client.get(key) is None
        assert client.dbsize() == 1
        assert client.get(REDIS_STAMP_KEY) == leases.owner


def test_the_walk_stops_at_the_servers_last_index(area: RedisArea, make_leases: Callable[..., Leases]) -> None:
    if 15 not in area.free:
        pytest.skip("Redis index 15 is in use by another run")
    leases = area.owned(make_leases())
    assert leases.claim_redis_index(15, databases=None) == 15
    with pytest.raises(BackendError, match=r"no free Redis index in 15-15 "):
        make_leases().claim_redis_index(15, databases=None)


def test_no_redis_url_means_no_redis_leases(make_leases: Callable[..., Leases]) -> None:
    with pytest.raises(ConfigError, match="no Redis URL"):
        make_leases(redis=False).claim_redis_index(11, databases=16)


@pytest.mark.asyncio
async def test_flush_owned_index_refuses_another_owners_index_and_flushes_its_own(
    lab: Lab, area: RedisArea, make_leases: Callable[..., Leases]
) -> None:
    a, b = area.take(2)
    other = f"other{area.tag}"
    planted = area.plant(a, {"data": "another run's"})
    with lab.r(a) as client:
        client.set(REDIS_STAMP_KEY, other)
    area.planted[a].append(REDIS_STAMP_KEY)
    before = lab.snapshot(a, [*planted, REDIS_STAMP_KEY])
    client = redis.asyncio.Redis.from_url(f"{lab.redis_url}/{a}", decode_responses=True)
    try:
        with pytest.raises(SafetyError, match=rf"refusing FLUSHDB on Redis index {a}: it is stamped by another run"):
            await flush_owned_index(client, a, f"me{area.tag}")
    finally:
        await client.aclose()
    assert lab.snapshot(a, [*planted, REDIS_STAMP_KEY]) == before
    with lab.r(a) as sync:
        sync.delete(*area.planted.pop(a))

    leases = area.owned(make_leases())
    assert leases.claim_redis_index(a, databases=16, skip=area.only(a)) == a
    # A client on another index: the flush still lands on `a`, and the client stays on its own index.
    client = redis.asyncio.Redis.from_url(f"{lab.redis_url}/{b}", decode_responses=True)
    try:
        with lab.r(a) as sync:
            sync.mset({f"leases-test:{area.tag}:x": "1", f"leases-test:{area.tag}:y": "2"})
        await flush_owned_index(client, a, leases.owner)
        with lab.r(a) as sync:
            assert sync.keys("*") == [REDIS_STAMP_KEY]
            assert sync.get(REDIS_STAMP_KEY) == leases.owner
        key = f"leases-test:{area.tag}:after"
        area.planted.setdefault(b, []).append(key)
        await client.set(key, "on b")
        with lab.r(b) as sync:
            assert sync.get(key) == "on b"
    finally:
        await client.aclose()
