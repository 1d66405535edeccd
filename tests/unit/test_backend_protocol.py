"""The backend protocol without servers: selection (auto included), availability, typed stack facts."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pytest_dashtam.backends import (
    AUTO_ORDER,
    Backend,
    BackendName,
    BackendOptions,
    ComposeFacts,
    LocalFacts,
    Stack,
    StackStatus,
    UnsupportedError,
    get_backend,
    select_backend,
)
from pytest_dashtam.backends import compose as compose_module
from pytest_dashtam.backends._local_cluster import SEED_REQUEST
from pytest_dashtam.backends.compose import ComposeBackend
from pytest_dashtam.backends.external import ExternalBackend
from pytest_dashtam.backends.local import LocalBackend
from pytest_dashtam.errors import ConfigError
from pytest_dashtam.stack import compose_stem

POSTGRES_URL, REDIS_URL = "postgresql://p@127.0.0.1/postgres", "redis://127.0.0.1"
WITH_URLS = BackendOptions(postgres_url=POSTGRES_URL, redis_url=REDIS_URL)


@dataclass
class FakeBackend:
    """A backend that only says whether it is available, and records that it was asked."""

    name: BackendName
    answer: bool
    asked: list[BackendName] = field(default_factory=list)

    def available(self) -> bool:
        self.asked.append(self.name)
        return self.answer

    def start(self) -> Stack:
        raise NotImplementedError

    def stop(self) -> None: ...

    def status(self) -> StackStatus:
        return StackStatus(running=False)

    def template_built(self, stack: Stack) -> None: ...

    def down(self) -> None: ...

    def logs(self, lines: int = 200) -> str:
        return ""


def factory(available: set[BackendName], asked: list[BackendName]) -> Callable[[BackendName, BackendOptions], Backend]:
    def make(name: BackendName, options: BackendOptions) -> Backend:
        return FakeBackend(name, name in available, asked)

    return make


def _stack(**kw: object) -> Stack:
    values: dict[str, object] = {
        "backend": "local",
        "env": "test",
        "postgres_url": "postgresql://postgres:secret@127.0.0.1:5/postgres",
        "redis_url": "redis://127.0.0.1:6",
        "postgres_version": "15.20",
        "redis_version": "7.0.15",
    }
    values.update(kw)
    return Stack(**values)  # type: ignore[arg-type]


def _local_facts(run_dir: Path) -> LocalFacts:
    return LocalFacts(
        run_id="1-abc",
        run_dir=str(run_dir),
        data_dir=str(run_dir / "pg"),
        socket_dir=str(run_dir / "s"),
        state_file="/state/stack-1-abc.json",
        postgres_port=5,
        redis_port=6,
        postgres_pid=10,
        redis_pid=11,
        postgres_log="pg.log",
        redis_log="redis.log",
        postgres_bin="/usr/lib/postgresql/15/bin/postgres",
        postgres_source="system",
        redis_bin="/usr/bin/redis-server",
        redis_source="PATH",
        redis_server="redis",
    )


# --- selection -------------------------------------------------------------------------------------


def test_auto_prefers_given_urls_then_docker_then_local() -> None:
    asked: list[BackendName] = []
    everything = factory({"external", "compose", "local"}, asked)
    backend, reason = select_backend("auto", WITH_URLS, make=everything)
    assert (backend.name, reason) == ("external", "auto: server URLs given")
    assert asked == ["external"]  # nothing else probed

    backend, reason = select_backend("auto", BackendOptions(), make=factory({"compose", "local"}, []))
    assert (backend.name, reason) == ("compose", "auto: a Docker engine with compose answers")

    backend, reason = select_backend("auto", BackendOptions(), make=factory(set(), []))
    assert (backend.name, reason) == ("local", "auto: no server URLs, no Docker engine with compose")


def test_an_explicit_choice_is_taken_as_it_is_and_says_where_it_came_from() -> None:
    asked: list[BackendName] = []
    backend, reason = select_backend(
        "local", WITH_URLS, chosen_by="--dashtam-backend", make=factory({"external"}, asked)
    )
    assert (backend.name, reason) == ("local", "from --dashtam-backend")
    assert asked == []  # no availability asked for an explicit choice
    assert select_backend("compose", BackendOptions(), make=factory(set(), []))[1] == "from the configuration"


def test_auto_order_is_external_then_compose() -> None:
    assert [name for name, _reason in AUTO_ORDER] == ["external", "compose"]


def test_the_real_factory_builds_each_backend() -> None:
    options = WITH_URLS
    assert isinstance(get_backend("local", options), LocalBackend)
    assert isinstance(get_backend("compose", options), ComposeBackend)
    assert isinstance(get_backend("external", options), ExternalBackend)
    with pytest.raises(ValueError, match="unknown backend"):
        get_backend("kubernetes", options)  # type: ignore[arg-type]


def test_auto_with_the_real_backends_and_no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """No engine answers its socket: auto is local, and no `docker` process was needed to say so."""
    monkeypatch.setattr(compose_module, "engine_answers", lambda timeout=1.0: False)
    monkeypatch.setenv("PATH", "/nonexistent")  # a `docker` call would find nothing anyway
    backend, reason = select_backend("auto", BackendOptions())
    assert backend.name == "local"
    assert reason == "auto: no server URLs, no Docker engine with compose"


def test_auto_is_local_for_a_project_without_a_compose_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine answers, but the project has no compose file: auto does not pick compose (which would fail
    every test on the missing file), and says why; no `docker` process is needed to say so."""
    asked: list[bool] = []

    def engine() -> bool:
        asked.append(True)
        return True

    monkeypatch.setattr(compose_module, "docker_available", engine)
    backend, reason = select_backend("auto", BackendOptions(project_root=tmp_path))
    assert backend.name == "local"
    assert reason == "auto: no server URLs, no compose file (docker/docker-compose.test.yml)"
    assert asked == []
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "docker-compose.test.yml").write_text("services: {}\n")
    backend, reason = select_backend("auto", BackendOptions(project_root=tmp_path))
    assert (backend.name, reason) == ("compose", "auto: a Docker engine with compose answers")
    assert asked == [True]


# --- availability ---------------------------------------------------------------------------------


def test_external_is_available_with_both_urls() -> None:
    assert ExternalBackend(WITH_URLS).available()
    assert not ExternalBackend(BackendOptions(postgres_url=POSTGRES_URL)).available()
    assert not ExternalBackend(BackendOptions()).available()


def test_local_is_available_when_binaries_are_found(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("postgres", "initdb", "redis-server"):
        (bindir / name).write_text("#!/bin/sh\n")
        (bindir / name).chmod(0o755)
    options = BackendOptions(postgres_bin=str(bindir), redis_bin=str(bindir / "redis-server"))
    assert LocalBackend(options).available()
    # A bin option naming nothing is refused, not read as "no local backend here" (auto would pick another).
    with pytest.raises(ConfigError, match="postgres_bin="):
        LocalBackend(BackendOptions(postgres_bin=str(tmp_path / "nothing"))).available()


def test_compose_needs_the_engine_and_the_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = ComposeBackend(BackendOptions())
    monkeypatch.setattr(compose_module, "docker_available", lambda timeout=1.5: False)
    assert not backend.available()
    monkeypatch.setattr(compose_module, "docker_available", lambda timeout=1.5: True)
    assert backend.available()


# --- what a backend cannot do -----------------------------------------------------------------------


def test_external_refuses_down_and_logs_in_one_line() -> None:
    backend = ExternalBackend(WITH_URLS)
    with pytest.raises(UnsupportedError, match=r"^the external backend does not stop servers it does not own"):
        backend.down()
    with pytest.raises(UnsupportedError, match=r"^the external backend keeps no logs of its own"):
        backend.logs()
    assert issubclass(UnsupportedError, ConfigError)  # the CLI's exit 2: choose another backend


# --- what a finished template means ------------------------------------------------------------------


def test_a_local_test_stack_asks_to_be_kept_as_the_next_seed(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    LocalBackend(BackendOptions()).template_built(_stack(local=_local_facts(run_dir)))
    assert (run_dir / SEED_REQUEST).exists()


def test_seeds_are_only_for_local_test_stacks(tmp_path: Path) -> None:
    """A template built on anything but a local test stack asks for nothing, and is not an error."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    facts = _local_facts(run_dir)
    for stack in (
        _stack(backend="external", owns_servers=False, local=facts),
        _stack(backend="compose", local=facts),
        _stack(env="dev", local=facts),
        _stack(local=None),
    ):
        LocalBackend(BackendOptions()).template_built(stack)
        ComposeBackend(BackendOptions()).template_built(stack)
        ExternalBackend(WITH_URLS).template_built(stack)
    assert list(run_dir.iterdir()) == []


# --- the stack ------------------------------------------------------------------------------------------


def test_stack_json_round_trips_with_its_facts(tmp_path: Path) -> None:
    local = _stack(tuning={"fsync": "off"}, redis_databases=16, data_on_tmpfs=True, local=_local_facts(tmp_path))
    assert Stack.from_json(local.to_json()) == local
    composed = _stack(
        backend="compose",
        compose=ComposeFacts(
            project="dashtam-test",
            services=("postgres", "redis"),
            compose_files=("/p/docker/docker-compose.test.yml",),
            env_file="/p/env/.env.test",
            postgres_port=5433,
            redis_port=6380,
            containers={"postgres": "dashtam-test-postgres-1"},
            owner_pid=os.getpid(),
            run_id="r1",
        ),
    )
    again = Stack.from_json(composed.to_json())
    assert again == composed
    assert again.compose is not None
    assert again.compose.services == ("postgres", "redis")  # a tuple again, not JSON's list
    external = _stack(backend="external", owns_servers=False, started=False, can_create_databases=True)
    assert Stack.from_json(external.to_json()) == external


def test_what_an_older_version_wrote_still_loads() -> None:
    old = json.loads(_stack().to_json())
    for facts in ("local", "compose", "data_on_tmpfs", "can_create_databases"):
        del old[facts]
    old["details"] = {"run_dir": "/dev/shm/x", "postgres_pid": 1}
    stack = Stack.from_json(json.dumps(old))
    assert stack == _stack()


def test_repr_masks_the_password() -> None:
    shown = repr(_stack(local=_local_facts(Path("/x"))))
    assert "secret" not in shown
    assert "postgresql://postgres:***@127.0.0.1:5/postgres" in shown
    assert str(_stack()) == repr(_stack())


def test_every_backend_implements_the_whole_protocol() -> None:
    """Checked by mypy (the assignments) and at run time (every method is there)."""
    backends: list[Backend] = [
        LocalBackend(BackendOptions()),
        ComposeBackend(BackendOptions()),
        ExternalBackend(WITH_URLS),
    ]
    methods = ("available", "start", "stop", "status", "template_built", "down", "logs")
    for backend in backends:
        assert all(callable(getattr(backend, method)) for method in methods), backend.name
    assert [b.name for b in backends] == ["local", "compose", "external"]


@pytest.mark.parametrize(
    ("test_database", "project"),
    [
        ("dashtam_test", "dashtam-test"),
        ("bookmarks_test", "bookmarks-test"),
        ("todo_tests", "todo-test"),
        ("my_app_test", "my-app-test"),
        ("test", "test-test"),
        ("test_myapp", "test-myapp-test"),
    ],
)
def test_the_default_compose_project_comes_from_the_test_database(test_database: str, project: str) -> None:
    """Two projects on one engine never attach to each other's stack; Dashtam's keeps its documented name."""
    options = BackendOptions(project_stem=compose_stem(test_database))
    assert ComposeBackend(options).project_name == project
    dev = ComposeBackend(BackendOptions(env="dev", project_stem=compose_stem(test_database)))
    assert dev.project_name == project.removesuffix("-test") + "-dev"
