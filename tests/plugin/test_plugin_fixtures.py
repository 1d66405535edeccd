"""Each fixture and the marker, in an inner project on the real servers."""

from __future__ import annotations

import pytest
from inner_project import INNER_INDEX, Inner, taken


def test_fixtures_isolate_and_clean_up(inner: Inner) -> None:
    inner.copy()
    result = inner.run("test_basic.py", "-v")
    result.assert_outcomes(passed=6)
    (took,) = taken(result)
    result.stdout.fnmatch_lines(
        [
            "dashtam: backend=external (from DASHTAM_BACKEND): PostgreSQL * at postgresql://postgres@*, Redis * at redis://*",
            f"dashtam: database {inner.database} from template {inner.database}_tpl_* (*), "
            f"redis index {took.redis_index}, tuning *",
        ]
    )
    assert took.redis_index >= INNER_INDEX  # the env file's index, or the next free one if another run holds it
    # Everything gone afterwards: the test database (the template stays, it is the cache).
    assert inner.databases() == {took.template}
    assert inner.redis(took.redis_index).dbsize() == 0


def test_env_file_is_exported_before_conftests_import_the_app(inner: Inner) -> None:
    inner.copy()
    inner.monkeypatch.setenv("ENVIRONMENT", "development")  # the shell's value loses to the test env file
    inner.run("test_env.py").assert_outcomes(passed=1)


def test_transaction_marker_empties_what_was_written(inner: Inner) -> None:
    inner.copy()
    result = inner.run("test_transaction.py", "-v")
    result.assert_outcomes(passed=6)


def test_marker_arguments_are_validated(inner: Inner) -> None:
    inner.copy()
    result = inner.run("test_bad_marker.py")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*@pytest.mark.dashtam_db: transaction must be True or False, got 'yes'; "
            "use @pytest.mark.dashtam_db(transaction=True)"
        ]
    )


def test_marker_is_registered_with_its_signature(inner: Inner) -> None:
    inner.copy()
    result = inner.run("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.dashtam_db(transaction=False): *"])


def test_public_fixtures_have_docstrings(inner: Inner) -> None:
    inner.copy()
    result = inner.run("--fixtures", "test_basic.py")
    for name in ("dashtam_stack", "dashtam_settings", "db_engine", "db_session", "redis_client", "client"):
        result.stdout.fnmatch_lines([f"{name}*", "    ?*"])


def test_a_start_failure_errors_each_test_that_needs_the_stack(inner: Inner) -> None:
    inner.copy()
    result = inner.run(
        "test_basic.py",
        "--dashtam-postgres-url=postgresql://postgres@127.0.0.1:1/postgres",
        "--dashtam-redis-url=redis://127.0.0.1:1",
        "--dashtam-timeout=1",
        "--dashtam-timings",
    )
    # The four stack tests error; the override check and the plain test still pass.
    result.assert_outcomes(errors=4, passed=2)
    # --dashtam-timings says how long the start took and that the stack never came, not "template built".
    result.stdout.fnmatch_lines(["dashtam timings: start * ms, then not started (above)"])
    expected = "PostgreSQL at postgresql://postgres@127.0.0.1:1/postgres did not answer within 1.0s: "
    errors = [line for line in result.stdout.lines if line.startswith(expected)]
    assert len(errors) == 4, result.stdout.str()
    assert len(set(errors)) == 1  # the same one line each time
    assert "Traceback" not in result.stdout.str()
    assert "During handling" not in result.stdout.str()


def test_client_with_an_app_factory(inner: Inner) -> None:
    inner.copy()
    result = inner.run("test_basic.py", "-k", "client", "-o", "dashtam_app=exampleapp:create_app")
    result.assert_outcomes(passed=2)


def test_client_with_an_app_that_does_not_import(inner: Inner) -> None:
    inner.copy()
    result = inner.run("test_basic.py", "-k", "client_uses", "-o", "dashtam_app=exampleapp:nope")
    # Checked once collection shows a test uses `client`, before anything is built: exit 4, one line.
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    result.stderr.fnmatch_lines(
        ["ERROR: pytest-dashtam: dashtam_app='exampleapp:nope': 'exampleapp' has no attribute 'nope'; check the name"]
    )


def test_ctrl_c_still_drops_the_test_database(inner: Inner) -> None:
    inner.copy()
    result = inner.run("test_interrupt.py")
    assert result.ret == 2  # interrupted
    result.stdout.fnmatch_lines(["*KeyboardInterrupt*"])
    assert inner.database not in inner.databases()
    assert inner.templates()  # the run got as far as its database
