"""Databases kept for debugging (`--dashtam-keep-failed`): made from the template, stamped, listed, dropped.

A kept database is stamped `pytest-dashtam:kept:<when> <test id>`: the plugin's stamp, so its own checks
let it drop one, with a role no stale cleanup takes (reclaiming takes `test` and `adopted`, template
cleanup `template` and `template-building`), so it stays until `dashtam-env kept --remove` drops it; and
`drop_kept_database` drops nothing that is not stamped so.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from pytest_dashtam.errors import SafetyError
from pytest_dashtam.safety import check_test_name, database_comment, ownership_comment, raise_for
from pytest_dashtam.schema.ddl import _connect, _create_database, _drop_database
from pytest_dashtam.schema.names import ROLE_KEPT

KEPT_STAMP_PREFIX = ownership_comment(ROLE_KEPT, "")


@dataclass(frozen=True)
class KeptDatabase:
    """A kept database as its stamp describes it: when it was kept and for which test."""

    name: str
    when: str
    test: str


def kept_stamp(test: str, when: float | None = None) -> str:
    """`pytest-dashtam:kept:<local time> <test id>`."""
    return ownership_comment(ROLE_KEPT, f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(when))} {test}")


def parse_kept_stamp(name: str, comment: str | None) -> KeptDatabase | None:
    """The kept database a stamp describes, or None when it is not the kept stamp."""
    if comment is None or not comment.startswith(KEPT_STAMP_PREFIX):
        return None
    when, _, test = comment[len(KEPT_STAMP_PREFIX) :].partition(" ")
    return KeptDatabase(name, when, test)


def is_kept_name_of(name: str, base: str) -> bool:
    """Whether `name` is a kept database of a run on test database `base`: `base`, the suffixes runs add to it
    (`_2`, `_gw0`, ...), then `_kept_<8 hex>` (isolation.keep.kept_database_name). Not another project's
    whose test database merely starts with the same letters (`base2_kept_...`, `base_other_kept_...`)."""
    return re.fullmatch(rf"{re.escape(base)}(?:_(?:\d+|gw\d+))*_kept_[0-9a-f]{{8}}", name) is not None


def _check_name(name: str, dev_database: str | None) -> None:
    raise_for([v for v in (check_test_name(name, dev_database or ""),) if v is not None])


async def create_kept_database(
    admin_url: str, name: str, *, template: str, test: str, dev_database: str | None = None
) -> None:
    """`name`, a copy of `template` (nothing connects to a template: CREATE DATABASE can copy it), stamped kept."""
    _check_name(name, dev_database)
    conn = await _connect(admin_url)
    try:
        await _create_database(conn, name, template=template, stamp=kept_stamp(test))
    finally:
        await conn.close()


async def list_kept_databases(admin_url: str, base: str) -> list[KeptDatabase]:
    """The kept databases of the runs on test database `base` (a project's), by name."""
    conn = await _connect(admin_url)
    try:
        rows = await conn.fetch(
            "SELECT datname, shobj_description(oid, 'pg_database') AS comment FROM pg_database "
            "WHERE left(datname, length($1)) = $1 ORDER BY datname",
            base,
        )
    finally:
        await conn.close()
    found = (parse_kept_stamp(r["datname"], r["comment"]) for r in rows if is_kept_name_of(r["datname"], base))
    return [k for k in found if k is not None]


async def drop_kept_database(admin_url: str, name: str, *, dev_database: str | None = None) -> bool:
    """Drop `name` if it exists and carries the kept stamp (False: it does not exist); refuse anything else."""
    _check_name(name, dev_database)
    conn = await _connect(admin_url)
    try:
        exists, comment = await database_comment(conn, name)
        if not exists:
            return False
        if parse_kept_stamp(name, comment) is None:
            raise SafetyError(
                f"refusing to remove database {name!r}: it is not one pytest-dashtam kept for a failed test "
                f"(no {KEPT_STAMP_PREFIX!r} stamp on it); `dashtam-env kept` lists those"
            )
        return await _drop_database(conn, name, dev_database=dev_database, force=True)
    finally:
        await conn.close()
