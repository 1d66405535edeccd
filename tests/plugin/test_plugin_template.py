"""The template database: built once per schema hash, reused (cache hit), rebuilt on --dashtam-rebuild."""

from __future__ import annotations

import pytest
from inner_project import INNER_DB, Inner


def test_second_run_reuses_the_template_and_rebuild_forces_a_build(inner: Inner) -> None:
    inner.copy()
    built = inner.run("test_basic.py", "-k", "settings", "--dashtam-rebuild", "--dashtam-timings")
    built.assert_outcomes(passed=1)
    built.stdout.fnmatch_lines([f"dashtam: database {INNER_DB} from template {INNER_DB}_tpl_* (cache miss: built)*"])
    built.stdout.fnmatch_lines(
        ["dashtam timings: start * ms, safety * ms, template * ms, clone * ms, teardown * ms (template built)"]
    )
    again = inner.run("test_basic.py", "-k", "settings", "--dashtam-timings")
    again.assert_outcomes(passed=1)
    again.stdout.fnmatch_lines([f"dashtam: database {INNER_DB} from template {INNER_DB}_tpl_* (cache hit)*"])
    again.stdout.fnmatch_lines(["dashtam timings: * (template cache hit)"])
    templates = {d for d in inner.databases() if d.startswith(f"{INNER_DB}_tpl_")}
    assert len(templates) == 1, templates  # one per hash; stale ones are dropped


def test_a_schema_change_builds_a_new_template_and_drops_the_stale_one(inner: Inner) -> None:
    inner.copy()
    inner.run("test_basic.py", "-k", "settings").assert_outcomes(passed=1)
    (old,) = {d for d in inner.databases() if d.startswith(f"{INNER_DB}_tpl_")}
    app = inner.pytester.path / "exampleapp.py"
    app.write_text(app.read_text().replace("String(100)", "String(120)"))
    changed = inner.run("test_basic.py", "-k", "settings")
    changed.assert_outcomes(passed=1)
    changed.stdout.fnmatch_lines(["*(cache miss: built)*"])
    templates = {d for d in inner.databases() if d.startswith(f"{INNER_DB}_tpl_")}
    assert old not in templates
    assert len(templates) == 1


def test_a_fresh_local_cluster_each_run_still_reuses_the_template(
    inner: Inner, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The local backend starts a new cluster every run; the cluster that built a template seeds the next
    ones, so the template is built once per schema hash there too."""
    inner.copy()
    inner.monkeypatch.setenv("DASHTAM_CACHE_DIR", str(tmp_path_factory.mktemp("seed-cache")))
    args = ("test_basic.py", "-k", "settings", "--dashtam-backend=local", "--dashtam-timings")
    first = inner.run(*args)
    first.assert_outcomes(passed=1)
    first.stdout.fnmatch_lines(["dashtam: backend=local*", "*(cache miss: built)*"])
    second = inner.run(*args)
    second.assert_outcomes(passed=1)
    second.stdout.fnmatch_lines(["dashtam: backend=local*", "*(cache hit)*", "dashtam timings: * (template cache hit)"])
