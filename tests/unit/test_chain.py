"""schema/chain.py without a server: which changes to an Alembic project let its new template extend the old.

The chain is read from a real generated project (tests/support/chain_project.py); extending is decided by
comparing the old template's record (`<n>.<digest>`) with the new chain's digest over its first n revisions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from chain_project import ChainProject

from pytest_dashtam.errors import SchemaError
from pytest_dashtam.report import describe_report
from pytest_dashtam.schema import TemplateResult, template_hash
from pytest_dashtam.schema.chain import load_chain, parse_ready_stamp, ready_stamp


@pytest.fixture
def project(tmp_path: Path) -> ChainProject:
    project = ChainProject(tmp_path / "project", hooks=False)
    project.append(3)
    return project


def test_the_chain_is_alembics_order_from_base_to_head(project: ChainProject) -> None:
    chain = load_chain(project.ini)
    assert [revision for revision, _ in chain.revisions] == ["r0001", "r0002", "r0003"]
    assert chain.head == "r0003"
    assert chain.record().startswith("3.")
    assert load_chain(project.copy(project.root.parent / "moved").ini) == chain  # nothing names the folder


def test_appended_revisions_extend_the_old_chain(project: ChainProject) -> None:
    old = load_chain(project.ini)
    project.append(2)
    new = load_chain(project.ini)
    assert new.extends(old.record()) == 3
    assert old.extends(new.record()) is None  # a shorter chain extends nothing
    assert new.extends(new.record()) is None  # nor does the same one: that is a cache hit, by hash


def _edit_middle(p: ChainProject) -> None:
    p.edit(2)


def _remove_head(p: ChainProject) -> None:
    p.remove(3)
    p.write(4, down="r0002")
    p.write(5, down="r0004")


def _remove_middle(p: ChainProject) -> None:
    p.remove(2)
    p.write(3, down="r0001")  # the next one re-parented: its file changes


def _swap(p: ChainProject) -> None:
    p.write(2, down="r0003")
    p.write(3, down="r0001")
    assert p.revisions() == ["r0001", "r0003", "r0002"]


def _env(p: ChainProject) -> None:
    p.touch_env()


def _ini_option(p: ChainProject) -> None:
    ini = Path(p.ini)
    ini.write_text(ini.read_text().replace("[alembic]\n", "[alembic]\nversion_table = schema_versions\n"))


def _helper_module(p: ChainProject) -> None:
    (p.root / "migrations" / "helpers.py").write_text("SIZE = 50\n")  # one the revisions could import


@pytest.mark.parametrize(
    "change",
    [_edit_middle, _remove_head, _remove_middle, _swap, _env, _ini_option, _helper_module],
    ids=["edited middle", "removed head", "removed middle", "reordered", "env.py", "[alembic] option", "helper file"],
)
def test_any_other_change_does_not_extend(project: ChainProject, change: Callable[[ChainProject], None]) -> None:
    old = load_chain(project.ini)
    old_hash = template_hash(project.ini, None)
    change(project)
    project.append(2)  # longer either way: only the change can stop it from extending
    new = load_chain(project.ini)
    assert new.extends(old.record()) is None
    assert template_hash(project.ini, None) != old_hash


def test_logging_the_url_in_the_ini_and_file_names_do_not_count(project: ChainProject) -> None:
    old_hash, old = template_hash(project.ini, None), load_chain(project.ini)
    ini = Path(project.ini)
    ini.write_text(ini.read_text().replace("level = WARNING", "level = INFO"))
    ini.write_text(ini.read_text().replace("[alembic]\n", "[alembic]\nsqlalchemy.url = postgresql://me@dev/app\n"))
    assert (template_hash(project.ini, None), load_chain(project.ini)) == (old_hash, old)
    (project.versions / "r0003.py").rename(project.versions / "r0003_renamed.py")
    project.append()
    assert load_chain(project.ini).extends(old.record()) == 3  # a revision is its id and its bytes


def test_several_heads_are_refused(project: ChainProject) -> None:
    project.write(4, down="r0002")
    with pytest.raises(SchemaError, match=r"2 heads \(r0003, r0004\).*alembic merge heads"):
        load_chain(project.ini)


@pytest.mark.filterwarnings("ignore:Revision r9999 referenced")
def test_a_broken_revision_graph_is_one_line(project: ChainProject) -> None:
    project.write(4, down="r9999")
    with pytest.raises(SchemaError, match=r"cannot read the Alembic revisions") as info:
        load_chain(project.ini)
    assert "\n" not in str(info.value)


def test_stamps_round_trip_and_nothing_else_parses(project: ChainProject) -> None:
    chain = load_chain(project.ini)
    stamp = ready_stamp("ab12cd34ef56", chain)
    assert stamp == f"pytest-dashtam:template:ab12cd34ef56 chain={chain.record()}"
    assert parse_ready_stamp(stamp) == ("ab12cd34ef56", chain.record())
    assert parse_ready_stamp(ready_stamp("ab12cd34ef56", None)) == ("ab12cd34ef56", None)  # metadata.create_all
    for other in (
        None,
        "",
        "pytest-dashtam:template-building:ab12cd34ef56",
        "pytest-dashtam:test:dashtam_test_tpl_ab12cd34ef56",
        "someone's database",
        stamp + " ",
        stamp.replace(" chain=", " chain=x"),
    ):
        assert parse_ready_stamp(other) is None
    assert chain.extends("3.junk") is None
    assert chain.extends("nonsense") is None


def test_the_report_says_how_the_template_was_made() -> None:
    def result(**kw: object) -> TemplateResult:
        fields: dict[str, object] = {"name": "t_test_tpl_b", "hash": "b", "cache_hit": False, "stale_dropped": ()}
        return TemplateResult(**{**fields, **kw})  # type: ignore[arg-type]

    assert result(cache_hit=True).describe() == "cache hit"
    assert result(revisions_run=4).describe() == "cache miss: built"
    assert result(extended_from="t_test_tpl_a", revisions_run=1).describe() == (
        "cache miss: built from t_test_tpl_a + 1 revision"
    )
    assert result(extended_from="t_test_tpl_a", revisions_run=2).describe().endswith("+ 2 revisions")
    report = {
        "backend": "external",
        "backend_reason": "URLs given",
        "postgres": "PostgreSQL 15",
        "redis": "Redis 7",
        "database": "t_test",
        "template": "t_test_tpl_b",
        "cache_hit": False,
        "template_build": "cache miss: built from t_test_tpl_a + 1 revision",
        "redis_index": 1,
        "tuning": {},
    }
    assert describe_report(report)[1] == (
        "dashtam: database t_test from template t_test_tpl_b (cache miss: built from t_test_tpl_a + 1 revision), "
        "redis index 1, tuning none"
    )
