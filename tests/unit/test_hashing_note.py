"""schema/hashing.py's note of where a project's Alembic scripts are: a cache hit's template phase need not
import Alembic, and any change that could move or add a script makes it ask Alembic again.

Each test has its own project and cache folder; `_script_locations` (Alembic's own resolution) is counted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_dashtam.schema import hashing, template_hash


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DASHTAM_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "proj"
    (root / "alembic" / "versions").mkdir(parents=True)
    (root / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s/alembic\n")
    (root / "alembic" / "env.py").write_text("# env\n")
    (root / "alembic" / "versions" / "0001_a.py").write_text("revision = '0001'\ndown_revision = None\n")
    return root


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every time Alembic itself is asked where the scripts are."""
    calls: list[str] = []
    real = hashing._script_locations

    def counting(alembic_ini: str) -> tuple[Path, list[Path]]:
        calls.append(alembic_ini)
        return real(alembic_ini)

    monkeypatch.setattr(hashing, "_script_locations", counting)
    return calls


def test_the_second_hash_does_not_ask_alembic_and_is_the_same(project: Path, asked: list[str]) -> None:
    ini = str(project / "alembic.ini")
    first = template_hash(ini, None)
    assert len(asked) == 1
    assert template_hash(ini, None) == first
    assert len(asked) == 1  # the note was used
    (project / "alembic" / "versions" / "0001_a.py").write_text("revision = '0001'\ndown_revision = None\n# x\n")
    assert template_hash(ini, None) != first  # contents are hashed every time, note or not
    assert len(asked) == 1  # an edited file moves no script


@pytest.mark.parametrize("where", ["versions", "versions/sub"])
def test_a_new_revision_file_makes_it_ask_again(project: Path, asked: list[str], where: str) -> None:
    ini = str(project / "alembic.ini")
    (project / "alembic" / "versions" / "sub").mkdir()
    first = template_hash(ini, None)
    (project / "alembic" / where / "0002_b.py").write_text("revision = '0002'\ndown_revision = '0001'\n")
    second = template_hash(ini, None)
    assert len(asked) == 2
    assert second != first


def test_an_edited_alembic_ini_makes_it_ask_again(project: Path, asked: list[str]) -> None:
    ini = project / "alembic.ini"
    other = project / "more_versions"
    other.mkdir()
    (other / "0009_z.py").write_text("revision = '0009'\n")
    first = template_hash(str(ini), None)
    ini.write_text(
        ini.read_text() + "path_separator = os\nversion_locations = %(here)s/alembic/versions:%(here)s/more_versions\n"
    )
    second = template_hash(str(ini), None)
    assert len(asked) == 2
    assert second != first  # the file in the new location is hashed


def test_a_damaged_or_unwritable_note_is_not_used(project: Path, asked: list[str], tmp_path: Path) -> None:
    ini = str(project / "alembic.ini")
    first = template_hash(ini, None)
    for note in (tmp_path / "cache").glob("alembic-locations-*.json"):
        note.write_text("{not json")
    assert template_hash(ini, None) == first
    assert len(asked) == 2


def test_notes_of_projects_that_are_gone_are_forgotten(project: Path, tmp_path: Path) -> None:
    """A temporary copy of a project leaves no note behind once it is gone and another note is written."""
    gone = tmp_path / "gone"
    gone.mkdir()
    (gone / "alembic.ini").write_text((project / "alembic.ini").read_text())
    (gone / "alembic").mkdir()
    (gone / "alembic" / "env.py").write_text("# env\n")
    template_hash(str(gone / "alembic.ini"), None)
    notes = tmp_path / "cache"
    assert len(list(notes.glob("alembic-locations-*.json"))) == 1
    (notes / "alembic-locations-0123456789abcdef.json").write_text('{"note": 0}')  # an older form
    (gone / "alembic.ini").unlink()
    template_hash(str(project / "alembic.ini"), None)
    assert len(list(notes.glob("alembic-locations-*.json"))) == 1  # the project's own, the gone one removed
