"""run.py and its steps without servers: capacity errors, owners, the xdist handoff, exported URLs, teardown."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pytest_dashtam import provision
from pytest_dashtam.backends.base import Stack
from pytest_dashtam.config import PluginConfig, build_config
from pytest_dashtam.environment import HANDOFF_ENV, Handoff
from pytest_dashtam.errors import ConfigError
from pytest_dashtam.run import DashtamRun, Prepared


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / ".env.test").write_text(
        "ENVIRONMENT=testing\nTESTING=true\nDATABASE_URL=postgresql+asyncpg://u@127.0.0.1/shop_test\n"
        "REDIS_URL=redis://127.0.0.1/1\n"
    )
    return tmp_path


def _config(project: Path, **cli: object) -> PluginConfig:
    return build_config({"env_file": ".env.test", "alembic_ini": "", **cli}, {}, {}, project)


def _stack(databases: int | None = 16, **facts: Any) -> Stack:
    return Stack(
        backend=facts.pop("backend", "external"),
        env="test",
        postgres_url="postgresql://postgres@127.0.0.1:5432/postgres",
        redis_url="redis://127.0.0.1:6379",
        postgres_version="15",
        redis_version="7",
        redis_databases=databases,
        **facts,
    )


def test_postgres_capacity_is_checked_before_starting(monkeypatch: pytest.MonkeyPatch) -> None:
    async def free(url: str) -> int:
        return 20

    monkeypatch.setattr(provision, "free_connections", free)
    with pytest.raises(ConfigError, match=r"4 workers need up to 48 PostgreSQL connections .* has 20 free"):
        provision.check_capacity(_stack(), 4)


def test_worker_owner_names_its_run_and_itself(project: Path) -> None:
    handoff = Handoff(_stack(), "shop_test", "abc123", os.getpid(), "test")
    run = DashtamRun(_config(project), role="worker", worker="gw3", worker_count=4, handoff=handoff)
    assert (run.owner, run.worker_number, run.run_id) == ("rabc123_gw3", 3, "abc123")
    solo = DashtamRun(_config(project))
    assert solo.owner.startswith("r")
    assert solo.owner != DashtamRun(_config(project)).owner


def test_handoff_reaches_only_the_controller_s_own_workers(project: Path) -> None:
    """A pytest started from inside a worker's test inherits the variable but is not a worker of that run."""
    text = Handoff(_stack(), "shop_test_2", "abc123", os.getppid(), "auto: x").to_env()
    env = {HANDOFF_ENV: text, "PYTEST_XDIST_WORKER": "gw0"}
    got = Handoff.from_env(env)
    assert got is not None
    assert (got.base_database, got.stack.postgres_url) == ("shop_test_2", _stack().postgres_url)
    assert Handoff.from_env({HANDOFF_ENV: text}) is None  # not an xdist worker
    other = Handoff(_stack(), "shop_test_2", "abc123", os.getpid(), "auto: x").to_env()
    assert Handoff.from_env({HANDOFF_ENV: other, "PYTEST_XDIST_WORKER": "gw0"}) is None  # not its parent
    assert Handoff.from_env({HANDOFF_ENV: "{not json", "PYTEST_XDIST_WORKER": "gw0"}) is None


def test_app_environment_keeps_the_app_s_driver_and_spelling(project: Path) -> None:
    (project / ".env.test").write_text(
        "environment=testing\ntesting=true\ndatabase_url=postgresql+psycopg://u:pw@shared.example:5432/shop_test\n"
        "redis_url=redis://shared.example:6379/1\n"
    )
    run = DashtamRun(_config(project))
    run.stack, run.database, run.redis_index = _stack(), "shop_test_2", 4
    env = run.app_environment()
    assert env["DATABASE_URL"] == env["database_url"] == "postgresql+psycopg://postgres@127.0.0.1:5432/shop_test_2"
    assert env["REDIS_URL"] == env["redis_url"] == "redis://127.0.0.1:6379/4"


class FakeBackend:
    """Records stop(); fails it when asked to."""

    name = "local"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.stopped = 0

    def stop(self) -> None:
        self.stopped += 1
        if self.fail:
            raise RuntimeError("boom")


def _finished(
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    started: bool,
    owns: bool = True,
    cache_hit: bool = True,
    keep: bool = False,
    backend: FakeBackend | None = None,
) -> tuple[list[str], list[str], FakeBackend]:
    """(databases dropped, problems, backend) after finish() of a run in the given situation."""
    from pytest_dashtam import schema

    dropped: list[str] = []

    async def drop(admin_url: str, name: str, *, dev_database: str | None = None) -> None:
        dropped.append(name)

    monkeypatch.setattr(schema, "drop_test_database", drop)
    run = DashtamRun(_config(project, keep=keep))
    stack = _stack(None, backend="local", owns_servers=owns, started=started)
    run._prepared = Prepared(
        stack=stack,
        settings=None,
        database="shop_test",
        database_url="postgresql+asyncpg://postgres@127.0.0.1:5432/shop_test",
        redis_url="redis://127.0.0.1:6379/1",
        redis_index=1,
        template="shop_test_tpl_x",
        template_hash="x",
        cache_hit=cache_hit,
        tuning={},
        backend_reason="test",
    )
    fake = backend or FakeBackend()
    run._backend = fake  # type: ignore[assignment]
    run._started_here = started
    problems = run.finish()
    return dropped, problems, fake


def test_a_throwaway_stack_this_run_stops_is_not_dropped_first(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dropped, problems, backend = _finished(project, monkeypatch, started=True)
    assert (dropped, problems, backend.stopped) == ([], [], 1)


def test_attached_external_seeding_and_unowned_stacks_still_get_the_drop(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Attached to (or an external server): not ours to stop, so the database is dropped.
    dropped, _, backend = _finished(project, monkeypatch, started=False)
    assert (dropped, backend.stopped) == (["shop_test"], 0)
    # The template was built this run: the local backend keeps the cluster as the next runs' seed.
    dropped, _, backend = _finished(project, monkeypatch, started=True, cache_hit=False)
    assert (dropped, backend.stopped) == (["shop_test"], 1)
    # Servers the backend does not own.
    dropped, _, backend = _finished(project, monkeypatch, started=True, owns=False)
    assert (dropped, backend.stopped) == (["shop_test"], 1)


def test_kept_stack_is_neither_dropped_nor_stopped(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dropped, _, backend = _finished(project, monkeypatch, started=True, keep=True)
    assert (dropped, backend.stopped) == ([], 0)


def test_a_failed_stop_drops_the_database_after_all(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dropped, problems, _ = _finished(project, monkeypatch, started=True, backend=FakeBackend(fail=True))
    assert dropped == ["shop_test"]
    assert problems == ["could not stop the local stack: boom"]
