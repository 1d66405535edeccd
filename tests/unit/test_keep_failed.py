"""isolation/keep.py's plain parts (--dashtam-keep-failed): the kept database's name, the copy order the
foreign keys allow, the report lines; and the kept stamp (schema/kept.py) and the run's summary line."""

from __future__ import annotations

import pytest

from pytest_dashtam.errors import ConfigError
from pytest_dashtam.isolation import Keeper, copy_order, kept_database_name
from pytest_dashtam.isolation.keep import REDIS_KEYS_SHOWN, psql_line, redis_keys_line, rows_summary
from pytest_dashtam.report import kept_summary
from pytest_dashtam.safety import check_test_name, is_owned_comment
from pytest_dashtam.schema import parse_kept_stamp
from pytest_dashtam.schema.kept import is_kept_name_of, kept_stamp

TEST = "tests/test_todo.py::test_create[a-b]"

# --- the kept database's name ---------------------------------------------------------------------------------


def test_the_name_is_the_worker_s_database_then_kept_and_a_digest() -> None:
    name = kept_database_name("dashtam_test_gw1", "dashtam_test", TEST, "rab12_gw1:1")
    assert name.startswith("dashtam_test_gw1_kept_")
    assert len(name.rsplit("_", 1)[1]) == 8
    assert int(name.rsplit("_", 1)[1], 16) >= 0
    assert check_test_name(name, "dashtam") is None  # a name the safety gate accepts
    assert name == kept_database_name("dashtam_test_gw1", "dashtam_test", TEST, "rab12_gw1:1")  # derived, not random


def test_each_failure_gets_a_name_of_its_own() -> None:
    names = {
        kept_database_name("dashtam_test", "dashtam_test", test, salt)
        for test in (TEST, "tests/test_todo.py::test_other")
        for salt in ("r1:1", "r1:2", "r2:1")
    }
    assert len(names) == 6


def test_a_name_postgresql_would_truncate_falls_back_to_the_base_name() -> None:
    base = "b" * 30 + "_test"
    database = base + "_" + "x" * 20
    name = kept_database_name(database, base, TEST, "r:1")
    assert name.startswith(f"{base}_kept_")
    assert len(name.encode()) <= 63
    assert kept_database_name(base + "_gw0", base, TEST, "r:1").startswith(f"{base}_gw0_kept_")
    with pytest.raises(ConfigError, match="longer than PostgreSQL's 63 bytes; shorten the test database name"):
        kept_database_name("t" * 60, "t" * 55, TEST, "r:1")


# --- the order the foreign keys allow -------------------------------------------------------------------------


def _before(order: list[str], parent: str, child: str) -> bool:
    return order.index(parent) < order.index(child)


def test_every_table_comes_after_the_tables_it_references() -> None:
    tables = ["a_tags", "b_items", "c_users", "d_comments", "e_alone"]
    parents = {
        "a_tags": {"b_items"},
        "b_items": {"c_users"},
        "d_comments": {"b_items", "c_users", "d_comments"},  # a diamond, and a reply to a comment
    }
    order = copy_order(tables, parents)
    assert sorted(order) == sorted(tables)
    assert _before(order, "c_users", "b_items")
    assert _before(order, "b_items", "a_tags")
    assert _before(order, "b_items", "d_comments")
    assert order == ["c_users", "b_items", "a_tags", "d_comments", "e_alone"]


def test_unrelated_tables_keep_their_order_and_unknown_references_are_ignored() -> None:
    assert copy_order(["x", "y", "z"], {"y": {"elsewhere"}}) == ["x", "y", "z"]
    assert copy_order([3, 1, 2], {3: [2]}) == [2, 3, 1]


def test_a_cycle_is_broken_once_and_every_table_is_copied_once() -> None:
    order = copy_order(["a", "b", "c"], {"a": {"b"}, "b": {"a"}, "c": {"a"}})
    assert sorted(order) == ["a", "b", "c"]
    assert _before(order, "a", "c")


# --- the report's lines ---------------------------------------------------------------------------------------


def test_rows_summary_names_the_tables_that_hold_rows() -> None:
    assert rows_summary({"items": 2, "tags": 1, "empty": 0}) == "items 2 rows, tags 1 row"
    assert rows_summary({"items": 0}) == "no rows"
    many = rows_summary({f"t{i:02}": 1 for i in range(12)})
    assert many.endswith("t09 1 row and 2 more tables")


def test_redis_keys_line_is_capped() -> None:
    assert redis_keys_line(3, [], 0) == "dashtam: it left no Redis keys in index 3"
    assert redis_keys_line(3, ["b", "a"], 2) == "dashtam: it left 2 Redis keys in index 3 (flushed since): a, b"
    names = [f"k{i:03}" for i in range(25)]
    line = redis_keys_line(4, names, 1500)  # more keys than were read: the count is the server's
    shown = line.split(": ", 2)[2]
    assert shown.startswith("k000, k001, ")
    assert shown.endswith(f"k{REDIS_KEYS_SHOWN - 1:03}, ... and {1500 - REDIS_KEYS_SHOWN} more")
    assert redis_keys_line(1, ["one\nline"], 1).endswith(": 'one\\nline'")


def test_psql_line_masks_the_password() -> None:
    line = psql_line("postgresql://postgres:s3cret@127.0.0.1:5432/postgres", "x_test_kept_0011aabb")
    assert line == "psql postgresql://postgres:***@127.0.0.1:5432/x_test_kept_0011aabb"
    socket = psql_line("postgresql://postgres@/postgres?host=/tmp/s&port=5433", "x_test_kept_0011aabb")
    assert socket == "psql 'postgresql://postgres@/x_test_kept_0011aabb?host=/tmp/s&port=5433'"


def _keeper() -> Keeper:
    return Keeper("postgresql://u@h/postgres", "x_test", "x_test", "x_test_tpl_1", "r1", "x")


def test_report_lines_end_with_the_psql_line_and_come_once() -> None:
    keeper = _keeper()
    keeper._lines(TEST, "redis").append("redis")
    keeper._lines(TEST, "psql").append("psql")
    keeper._lines(TEST, "database").append("database")
    assert keeper.report_lines(TEST) == ["database", "redis", "psql"]
    assert keeper.report_lines(TEST) == []


def test_lines_a_report_cannot_show_go_to_the_summary() -> None:
    keeper = _keeper()
    keeper.kept.append({"name": "x_test_kept_1", "test": TEST, "psql": "psql ...", "note": ""})
    keeper._lines(TEST, "database").append("dashtam: kept ...")
    keeper._lines(TEST, "psql").append("dashtam: psql ...")
    keeper.report_lines(TEST, shown=False)
    assert kept_summary(keeper.kept) == [
        "dashtam: kept 1 database of failed tests: x_test_kept_1 "
        "(`dashtam-env kept` lists them, `dashtam-env kept --remove-all` removes them)",
        f"dashtam: {TEST} errored in its setup; what it left:",
        "dashtam: kept ...",
        "dashtam: psql ...",
    ]


def test_the_summary_is_one_line_with_the_stack_s_note_once() -> None:
    assert kept_summary([]) == []
    note = "the local stack this run started is stopped at its end, ..."
    kept = [{"name": n, "test": TEST, "psql": "", "note": note} for n in ("a_test_kept_1", "a_test_kept_2")]
    assert kept_summary(kept) == [
        "dashtam: kept 2 databases of failed tests: a_test_kept_1, a_test_kept_2 "
        "(`dashtam-env kept` lists them, `dashtam-env kept --remove-all` removes them)",
        f"dashtam: {note}",
    ]


# --- the kept stamp -------------------------------------------------------------------------------------------


def test_the_kept_stamp_is_the_plugin_s_and_says_which_test() -> None:
    stamp = kept_stamp(TEST, 0)
    assert is_owned_comment(stamp)
    assert stamp.startswith("pytest-dashtam:kept:")
    kept = parse_kept_stamp("x_test_kept_1", stamp)
    assert kept is not None
    assert kept.test == TEST
    assert kept.when.count("T") == 1
    assert parse_kept_stamp("x_test", "pytest-dashtam:test:x_test_tpl_1") is None
    assert parse_kept_stamp("x_test", None) is None


def test_a_project_s_kept_databases_are_told_by_name() -> None:
    for worker, base in (("app_test", "app_test"), ("app_test_gw3", "app_test"), ("app_test_2_gw0_2", "app_test")):
        assert is_kept_name_of(kept_database_name(worker, base, TEST, "r:1"), base)
    for other in ("app_test2_kept_0011aabb", "app_test_other_kept_0011aabb", "app_test_kept_0011aab", "app_test"):
        assert not is_kept_name_of(other, "app_test")
