"""The template database: built once per schema hash, reused (cache hit), rebuilt on --dashtam-rebuild."""

from __future__ import annotations

import pytest
from inner_project import Inner


def test_second_run_reuses_the_template_and_rebuild_forces_a_build(inner: Inner) -> None:
    inner.copy()
    db = inner.database
    built = inner.run("test_basic.py", "-k", "settings", "--dashtam-timings")
    built.assert_outcomes(passed=1)
    built.stdout.fnmatch_lines([f"dashtam: database {db} from template {db}_tpl_* (cache miss: built)*"])
    built.stdout.fnmatch_lines(
        ["dashtam timings: start * ms, safety * ms, template * ms, clone * ms, teardown * ms (template built)"]
    )
    again = inner.run("test_basic.py", "-k", "settings", "--dashtam-timings")
    again.assert_outcomes(passed=1)
    again.stdout.fnmatch_lines([f"dashtam: database {db} from template {db}_tpl_* (cache hit)*"])
    again.stdout.fnmatch_lines(["dashtam timings: * (template cache hit)"])
    (template,) = inner.templates()
    rebuilt = inner.run("test_basic.py", "-k", "settings", "--dashtam-rebuild")
    rebuilt.assert_outcomes(passed=1)
    rebuilt.stdout.fnmatch_lines([f"dashtam: database {db} from template {template} (cache miss: built)*"])
    assert inner.templates() == {template}  # one per hash; stale ones are dropped


def test_a_schema_change_builds_a_new_template_and_drops_the_stale_one(inner: Inner) -> None:
    inner.copy()
    inner.run("test_basic.py", "-k", "settings").assert_outcomes(passed=1)
    (old,) = inner.templates()
    app = inner.pytester.path / "exampleapp.py"
    app.write_text(app.read_text().replace("String(100)", "String(120)"))
    changed = inner.run("test_basic.py", "-k", "settings")
    changed.assert_outcomes(passed=1)
    changed.stdout.fnmatch_lines(["*(cache miss: built)*"])
    templates = inner.templates()
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
