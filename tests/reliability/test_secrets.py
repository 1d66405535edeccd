"""No password in any output or file of a run: a failing test that shows the settings, every report format.

The admin URL and the env file's URL carry a password (the servers use trust auth, so it is never
checked but always carried); the run's stdout, stderr, JUnit XML and every file it leaves in its temp dir
must not contain it, under -n 0 and -n 2, with -vv and --showlocals.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import tally
from passwords import SECRET, with_password
from selftest import Servers
from todo_project import Todo

SHOWS_SETTINGS = """
def test_shows_the_settings(dashtam_settings):
    settings = dashtam_settings
    assert settings is None


def test_shows_the_stack(dashtam_stack):
    stack = dashtam_stack
    assert stack is None
"""


@pytest.mark.parametrize("workers", ["0", "2"])
def test_no_password_in_any_output_or_file(
    tmp_path: Path, servers: Servers, workers: str, record_property: Callable[[str, object], None]
) -> None:
    todo = Todo.make(tmp_path / "todo", with_password(servers.postgres_url), servers.redis_url, 1)
    (todo.path / "tests" / "test_shows.py").write_text(SHOWS_SETTINGS)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    junit = tmp_path / "report.xml"
    result = todo.run(
        "tests/test_shows.py", "-vv", "--showlocals", f"--junitxml={junit}", "-n", workers, TMPDIR=str(scratch)
    )
    output = result.stdout.str() + result.stderr.str()
    report = junit.read_text() if junit.exists() else None
    files = {
        path: path.read_text(errors="replace")
        for path in [*scratch.rglob("*"), *todo.path.rglob("*")]
        if path.is_file() and path.name != ".env.test" and path.suffix not in (".pyc",)
    }
    found = sum(text.count(SECRET) for text in [output, report or "", *files.values()])
    # stdout and stderr, the JUnit XML, the files.
    tally.record(record_property, passwords_found=found, outputs_checked=2 + (report is not None) + len(files))
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.assert_outcomes(failed=2)
    assert "database_url=" in output  # the settings were shown, as pytest shows any failing assert's locals
    assert "***" in output
    assert SECRET not in output
    assert report is not None, f"no JUnit XML at {junit}"
    assert SECRET not in report
    for path, text in files.items():
        assert SECRET not in text, path
