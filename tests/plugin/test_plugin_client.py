"""`client` as FastAPI users expect it (issue 12), on the `shapes` inner project (examples/shapes).

The app's lifespan runs as a server runs it (startup before the first request, shutdown at the end, once per
event loop scope), and a session dependency that gives a session, a sessionmaker or an engine is stood in for
by the test's equivalent on its transaction: what a test writes through the API is rolled back, and someone
else's database and Redis index on the same servers are left exactly as they were.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from foreign import Foreign
from inner_project import Inner


@pytest.fixture
def shapes(inner: Inner) -> Inner:
    inner.copy("shapes")
    return inner



@pytest.fixture
def lifespan_log(shapes: Inner) -> Path:
    """The file the inner app's lifespan writes `startup N` / `shutdown N` to."""
    path = shapes.pytester.path / "lifespan.log"
    shapes.monkeypatch.setenv("SHAPES_LIFESPAN_LOG", str(path))
    return path


def _log(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize(
    ("shape", "dependency"),
    [("session", "get_session"), ("sessionmaker", "get_sessionmaker"), ("engine", "get_engine")],
)
def test_each_dependency_shape_gets_the_test_s_transaction(
    shapes: Inner, planted: Foreign, shape: str, dependency: str
) -> None:
    before = planted.checksum()
    result = shapes.run(f"tests/test_{shape}.py", "-v", "-o", f"dashtam_session_dependency=shapes.db:{dependency}")
    result.assert_outcomes(passed=3 if shape == "session" else 4)
    result.stdout.fnmatch_lines(["*test_a_write_through_the_api PASSED*", "*test_the_next_test_sees_none PASSED*"])
    assert planted.checksum() == before


def test_the_lifespan_runs_once_per_loop_scope(shapes: Inner, lifespan_log: Path) -> None:
    result = shapes.run("tests/test_lifespan.py", "-v")
    result.assert_outcomes(passed=4)
    # The session loop's lifespan from the first request to the end; the function-loop test's inside it.
    assert _log(lifespan_log) == ["startup 1", "startup 2", "shutdown 2", "shutdown 1"]


def test_in_function_loops_each_test_gets_its_lifespan(shapes: Inner, lifespan_log: Path) -> None:
    result = shapes.run(
        "tests/test_session.py",
        "-o",
        "asyncio_default_test_loop_scope=function",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
    )
    result.assert_outcomes(passed=3)
    # Two tests use client; the third (db_session alone) starts no lifespan.
    assert _log(lifespan_log) == ["startup 1", "shutdown 1", "startup 2", "shutdown 2"]


def test_a_lifespan_that_fails_at_startup_is_one_line_naming_the_app(shapes: Inner) -> None:
    shapes.monkeypatch.setenv("SHAPES_LIFESPAN_FAIL", "the mailer has no API key")
    result = shapes.run("tests/test_session.py")
    result.assert_outcomes(errors=2, passed=1)  # the test without client still runs
    line = "the lifespan of shapes.main:app failed at startup: RuntimeError: the mailer has no API key"
    assert [text for text in result.stdout.lines if text == line] == [line, line], result.stdout.str()
    assert "Traceback" not in result.stdout.str()


def test_a_lifespan_that_fails_at_shutdown_is_a_teardown_warning(shapes: Inner) -> None:
    shapes.monkeypatch.setenv("SHAPES_SHUTDOWN_FAIL", "the mailer did not close")
    result = shapes.run("tests/test_session.py", "-W", "default")
    result.assert_outcomes(passed=3, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*DashtamTeardownWarning: pytest-dashtam teardown: the lifespan of shapes.main:app failed at shutdown: "
            "RuntimeError: the mailer did not close"
        ]
    )


def test_an_app_without_lifespan_support_still_works(shapes: Inner, lifespan_log: Path) -> None:
    shapes.monkeypatch.setenv("SHAPES_NO_LIFESPAN", "1")
    result = shapes.run("tests/test_session.py")
    result.assert_outcomes(passed=3)
    assert _log(lifespan_log) == []


def test_the_lifespan_can_be_turned_off(shapes: Inner, lifespan_log: Path) -> None:
    shapes.pytester.makepyfile(
        **{
            "tests/test_off": """
            import pytest

            from shapes.main import app


            @pytest.fixture
            def dashtam_lifespan():
                return False


            async def test_no_lifespan(client):
                assert (await client.get("/session/notes")).json() == []
                assert not hasattr(app.state, "engine")
            """
        }
    )
    result = shapes.run("tests/test_off.py")
    result.assert_outcomes(passed=1)
    assert _log(lifespan_log) == []


def test_an_unknown_dependency_shape_is_one_line(shapes: Inner) -> None:
    result = shapes.run("tests/test_session.py", "-o", "dashtam_session_dependency=shapes.db:get_connection")
    result.assert_outcomes(errors=2, passed=1)
    line = (
        "dashtam_session_dependency='shapes.db:get_connection' is declared to give AsyncIterator[AsyncConnection]; "
        "`client` stands in for a dependency that gives an AsyncSession, an async_sessionmaker or an AsyncEngine "
        "(or an AsyncIterator of one): annotate it so, or override it yourself in dashtam_dependency_overrides"
    )
    assert [text for text in result.stdout.lines if text == line] == [line, line], result.stdout.str()
    assert "Traceback" not in result.stdout.str()
