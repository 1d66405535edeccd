"""The compose backend's command lines, parsing and error messages, without a Docker engine.

A recording fake `docker` on PATH answers from a scenario and logs every call (argv and the
variables compose would interpolate), so these tests pin exactly what the backend runs. The real
engine is tested in tests/integration/test_compose_backend.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pytest_dashtam.backends import compose
from pytest_dashtam.backends._compose_cli import (
    ComposeProject,
    down_by_name,
    engine_answers,
    parse_compose_version,
    parse_port_output,
    read_env_file,
)
from pytest_dashtam.backends._compose_containers import Container, assess, parse_inspect
from pytest_dashtam.backends._compose_failures import classify_up_failure, log_tail, service_of
from pytest_dashtam.backends._compose_owner import Owner, owner_alive, owner_start, owner_state
from pytest_dashtam.backends.base import BackendOptions
from pytest_dashtam.backends.compose import ComposeBackend, docker_available
from pytest_dashtam.errors import BackendError

REPO = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------- a recording fake docker

FAKE_DOCKER = textwrap.dedent(
    """\
    #!{python}
    import json, os, sys
    argv = sys.argv[1:]
    keep = ("DASHTAM_", "POSTGRES_", "COMPOSE_")
    with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
        env = {{k: v for k, v in os.environ.items() if k.startswith(keep)}}
        log.write(json.dumps({{"argv": argv, "env": env}}) + "\\n")
    joined = " ".join(argv)
    with open(os.environ["FAKE_DOCKER_SCENARIO"]) as fh:
        scenario = json.load(fh)
    for needle, answer in scenario:
        if needle in joined:
            sys.stdout.write(answer.get("stdout", ""))
            sys.stderr.write(answer.get("stderr", ""))
            sys.exit(answer.get("rc", 0))
    sys.exit(0)
    """
)

HEALTHY_ENGINE: list[tuple[str, dict[str, Any]]] = [
    ("version --format", {"stdout": "20.10.24\n"}),
    ("compose version --short", {"stdout": "2.40.3\n"}),
]


class FakeDocker:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.log = folder / "calls.jsonl"
        self.scenario_file = folder / "scenario.json"
        script = folder / "bin" / "docker"
        script.parent.mkdir()
        script.write_text(FAKE_DOCKER.format(python=sys.executable))
        script.chmod(0o755)
        self.bin = script.parent
        self.scenario([])

    def scenario(self, answers: list[tuple[str, dict[str, Any]]]) -> None:
        self.scenario_file.write_text(json.dumps(answers))

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def argvs(self) -> list[list[str]]:
        return [call["argv"] for call in self.calls()]


@pytest.fixture
def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeDocker:
    fake = FakeDocker(tmp_path)
    monkeypatch.setenv("PATH", f"{fake.bin}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(fake.log))
    monkeypatch.setenv("FAKE_DOCKER_SCENARIO", str(fake.scenario_file))
    # The fake stands for the engine's CLI; its socket ping is taken as answered (tested on its own below).
    monkeypatch.setattr(compose, "engine_answers", lambda timeout=1.0: True)
    return fake


def backend(tmp_path: Path, **overrides: Any) -> ComposeBackend:
    options: dict[str, Any] = {"env": "test", "project_root": REPO, "timeout": 7.0, "state_dir": tmp_path / "state"}
    options.update(overrides)
    return ComposeBackend(BackendOptions(**options))


# --------------------------------------------------------------------------- command construction


def test_project_commands_are_argument_lists_with_absolute_files() -> None:
    project = ComposeProject(
        "dashtam-test", (Path("/r/docker/a.yml"), Path("/r/docker/b.yml")), Path("/r/env/.env.test")
    )
    base = [
        "docker",
        "compose",
        "--project-name",
        "dashtam-test",
        "--file",
        "/r/docker/a.yml",
        "--file",
        "/r/docker/b.yml",
        "--env-file",
        "/r/env/.env.test",
    ]
    assert project.up(29.2) == [*base, "up", "--detach", "--wait", "--wait-timeout", "30", "--quiet-pull"]
    assert project.up(0.1)[-2] == "1"
    assert project.down(volumes=True) == [*base, "down", "--remove-orphans", "--timeout", "1", "--volumes"]
    assert project.down(volumes=False) == [*base, "down", "--remove-orphans", "--timeout", "10"]
    assert project.port("postgres", 5432) == [*base, "port", "postgres", "5432"]
    assert project.logs(20, "redis") == [*base, "logs", "--no-color", "--no-log-prefix", "--tail", "20", "redis"]
    assert project.logs(200) == [*base, "logs", "--no-color", "--tail", "200"]
    assert down_by_name("old-run", volumes=True) == [
        "docker",
        "compose",
        "--project-name",
        "old-run",
        "down",
        "--remove-orphans",
        "--timeout",
        "1",
        "--volumes",
    ]


def test_defaults_follow_the_environment_table(tmp_path: Path) -> None:
    test = backend(tmp_path)
    assert test.project_name == "dashtam-test"
    assert test.compose_files == (REPO / "docker" / "docker-compose.test.yml",)
    assert test.env_file == REPO / "env" / ".env.test"
    dev = backend(tmp_path, env="dev")
    assert dev.project_name == "dashtam-dev"
    assert dev.compose_files == (REPO / "docker" / "docker-compose.dev.yml",)
    assert dev.env_file == REPO / "env" / ".env.dev"
    named = backend(tmp_path, project_name="mine", compose_files=("docker/docker-compose.test.yml", "x.yml"))
    assert named.project_name == "mine"
    assert named.compose_files[1] == REPO / "x.yml"


def test_up_runs_with_owner_labels_and_env_file_winning_over_the_shell(
    fake_docker: FakeDocker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stray shell variable that the env file also sets must not reach compose.
    monkeypatch.setenv("POSTGRES_PASSWORD", "from-the-shell")
    monkeypatch.setenv("DASHTAM_POSTGRES_IMAGE", "dashtam-ci/postgres:15")
    fake_docker.scenario(
        [
            *HEALTHY_ENGINE,
            (
                " up --detach",
                {"rc": 1, "stderr": "Error response from daemon: something unexpected broke\n"},
            ),
        ]
    )
    b = backend(tmp_path, project_name="unit-up", keep=True)
    with pytest.raises(BackendError, match=r"compose project unit-up: `docker compose up` failed: .*unexpected broke"):
        b.start()
    calls = fake_docker.calls()
    up = next(c for c in calls if "up" in c["argv"])
    # The run's own owner labels in a file of their own, after the project's (a file without labels gets them).
    override = up["argv"][6]
    assert Path(override).name.startswith("dashtam-unit-up-owner-")
    assert override.endswith(".yml")
    assert not Path(override).exists()  # read by `up` alone, removed after it
    assert up["argv"] == [
        "compose",
        "--project-name",
        "unit-up",
        "--file",
        str(REPO / "docker" / "docker-compose.test.yml"),
        "--file",
        override,
        "--env-file",
        str(REPO / "env" / ".env.test"),
        "up",
        "--detach",
        "--wait",
        "--wait-timeout",
        up["argv"][-2],
        "--quiet-pull",
    ]
    assert 1 <= int(up["argv"][-2]) <= 7
    env = up["env"]
    assert "POSTGRES_PASSWORD" not in env
    assert env["DASHTAM_POSTGRES_IMAGE"] == "dashtam-ci/postgres:15"
    assert env["DASHTAM_STACK_OWNER_PID"] == str(os.getpid())
    assert env["DASHTAM_STACK_OWNER_START"] == owner_start(os.getpid())
    assert env["DASHTAM_STACK_KEEP"] == "1"
    assert len(env["DASHTAM_STACK_RUN_ID"]) == 12
    assert env["DASHTAM_ENV_FILE"] == str(REPO / "env" / ".env.test")
    # What the failed `up` created is taken down again, volumes included (a test stack).
    assert calls[-1]["argv"][-5:] == ["down", "--remove-orphans", "--timeout", "1", "--volumes"]
    assert "--project-name" in calls[-1]["argv"]
    assert "unit-up" in calls[-1]["argv"]


def test_port_taken_names_the_port_and_the_variable(fake_docker: FakeDocker, tmp_path: Path) -> None:
    fake_docker.scenario(
        [
            *HEALTHY_ENGINE,
            (
                " up --detach",
                {
                    "rc": 1,
                    "stderr": (
                        " Container unit-port-postgres-1  Starting\n"
                        "Error response from daemon: driver failed programming external connectivity on endpoint "
                        "unit-port-postgres-1 (a5de4e): Error starting userland proxy: listen tcp4 127.0.0.1:5433: "
                        "bind: address already in use\n"
                    ),
                },
            ),
        ]
    )
    with pytest.raises(BackendError) as caught:
        backend(tmp_path, project_name="unit-port").start()
    message = str(caught.value)
    assert "\n" not in message
    assert "port 5433 on 127.0.0.1 is already taken" in message
    assert "DASHTAM_TEST_POSTGRES_PORT" in message


def test_missing_image_names_the_image_and_the_variable(fake_docker: FakeDocker, tmp_path: Path) -> None:
    config = {"services": {"redis": {"image": "redis:7-alpine"}, "postgres": {"image": "postgres:17.6-alpine"}}}
    fake_docker.scenario(
        [
            *HEALTHY_ENGINE,
            ("config --format json", {"stdout": json.dumps(config)}),
            (
                " up --detach",
                {
                    "rc": 1,
                    "stderr": (
                        ' redis Pulling \n redis Error Get "https://registry-1.docker.io/v2/": dial tcp: lookup '
                        "registry-1.docker.io: no such host\n"
                    ),
                },
            ),
        ]
    )
    with pytest.raises(BackendError) as caught:
        backend(tmp_path, project_name="unit-image").start()
    message = str(caught.value)
    assert "image redis:7-alpine for service redis is missing" in message
    assert "DASHTAM_REDIS_IMAGE" in message


def test_unhealthy_service_carries_its_log_tail(fake_docker: FakeDocker, tmp_path: Path) -> None:
    fake_docker.scenario(
        [
            *HEALTHY_ENGINE,
            ("logs --no-color", {"stdout": 'LOG:  starting\nFATAL:  invalid value for parameter "fsync": "maybe"\n'}),
            (" up --detach", {"rc": 1, "stderr": "container unit-sick-postgres-1 exited (1)\n"}),
        ]
    )
    with pytest.raises(BackendError) as caught:
        backend(tmp_path, project_name="unit-sick").start()
    message = str(caught.value)
    assert "\n" not in message
    assert "compose project unit-sick: postgres exited (1)" in message
    assert 'postgres log: LOG:  starting | FATAL:  invalid value for parameter "fsync"' in message
    logs = [a for a in fake_docker.argvs() if "logs" in a]
    assert logs
    assert logs[0][-1] == "postgres"


def test_no_engine_says_what_auto_falls_back_to(fake_docker: FakeDocker, tmp_path: Path) -> None:
    fake_docker.scenario(
        [
            (
                "version --format",
                {"rc": 1, "stderr": "Cannot connect to the Docker daemon at unix:///var/run/docker.sock\n"},
            )
        ]
    )
    with pytest.raises(BackendError) as caught:
        backend(tmp_path).start()
    message = str(caught.value)
    assert message.startswith("no Docker engine answers (Cannot connect to the Docker daemon")
    assert "--dashtam-backend=local" in message
    assert "auto" in message
    assert not docker_available()
    # Nothing was attempted past the engine check.
    assert not [a for a in fake_docker.argvs() if "up" in a]


def test_no_compose_plugin(fake_docker: FakeDocker, tmp_path: Path) -> None:
    fake_docker.scenario(
        [
            ("version --format", {"stdout": "20.10.24\n"}),
            ("compose version", {"rc": 1, "stderr": "docker: 'compose' is not a docker command.\n"}),
        ]
    )
    with pytest.raises(BackendError, match=r"Docker Compose v2 plugin is missing .*'compose' is not a docker command"):
        backend(tmp_path).start()
    assert not docker_available()


def test_old_compose_is_refused(fake_docker: FakeDocker, tmp_path: Path) -> None:
    fake_docker.scenario([("version --format", {"stdout": "20.10.24\n"}), ("compose version", {"stdout": "2.10.2\n"})])
    with pytest.raises(BackendError, match=r"Docker Compose 2\.10\.2 is too old: .* 2\.17\+"):
        backend(tmp_path).start()


def test_no_docker_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BackendError, match=r"needs the `docker` CLI, which is not on PATH; .*--dashtam-backend=local"):
        backend(tmp_path).start()
    assert not docker_available()


def test_docker_available_with_a_healthy_fake(fake_docker: FakeDocker) -> None:
    fake_docker.scenario(HEALTHY_ENGINE)
    assert docker_available()
    assert fake_docker.argvs() == [["version", "--format", "{{.Server.Version}}"], ["compose", "version", "--short"]]


def test_no_engine_socket_means_no_docker_process_at_all(
    fake_docker: FakeDocker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`auto` asks on every run: without an engine answering its socket, no `docker` process is started."""
    monkeypatch.setattr(compose, "engine_answers", lambda timeout=1.0: False)
    fake_docker.scenario(HEALTHY_ENGINE)
    assert not docker_available()
    assert not ComposeBackend(BackendOptions(project_root=REPO)).available()
    assert fake_docker.argvs() == []


class _FakeEngine(threading.Thread):
    """A Unix socket that answers one HTTP request with `status`."""

    def __init__(self, path: Path, status: bytes) -> None:
        super().__init__(daemon=True)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen()
        self.status = status
        self.request = b""

    def run(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            self.request = conn.recv(1024)
            conn.sendall(b"HTTP/1.0 " + self.status + b"\r\nContent-Length: 2\r\n\r\nOK")
        self.server.close()


@pytest.mark.parametrize(("status", "answers"), [(b"200 OK", True), (b"500 Internal Server Error", False)])
def test_engine_ping_on_the_socket(
    status: bytes, answers: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = Path(tempfile.mkdtemp(prefix="dashtam-sock-")) / "docker.sock"  # short: sun_path has 108 bytes
    engine = _FakeEngine(path, status)
    engine.start()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    assert engine_answers() is answers
    engine.join(5)
    assert engine.request.startswith(b"GET /_ping ")
    path.unlink()
    assert engine_answers() is False  # nothing listens
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.1:2375")
    assert engine_answers() is True  # a TCP engine named on purpose: the CLI calls decide


def test_missing_env_file_points_at_the_example(tmp_path: Path) -> None:
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "docker-compose.dev.yml").write_text("services: {}\n")
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / ".env.dev.example").write_text("POSTGRES_USER=u\n")
    with pytest.raises(BackendError, match=r"env file .*\.env\.dev not found; copy \.env\.dev\.example to \.env\.dev"):
        backend(tmp_path, env="dev", project_root=tmp_path).start()


# --------------------------------------------------------------------------- reaping decisions


def inspect_doc(project: str, service: str, labels: dict[str, str], status: str = "running") -> dict[str, Any]:
    return {
        "Id": f"{project}-{service}-id",
        "Name": f"/{project}-{service}-1",
        "Config": {
            "Labels": {
                "com.docker.compose.project": project,
                "com.docker.compose.service": service,
                "io.dashtam.env": "test",
                **labels,
            },
            "Env": ["POSTGRES_USER=u", "POSTGRES_PASSWORD=p=w"],
        },
        "State": {"Status": status, "StartedAt": "2026-11-25T15:51:34.863586963Z", "Health": {"Status": "healthy"}},
        "NetworkSettings": {"Ports": {"5432/tcp": [{"HostIp": "127.0.0.1", "HostPort": "32769"}]}},
        "HostConfig": {"Tmpfs": {"/var/lib/postgresql/data": ""}},
    }


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_reaping_takes_down_only_dead_owners_test_stacks(fake_docker: FakeDocker, tmp_path: Path) -> None:
    import socket

    host = socket.gethostname()
    dead = {"io.dashtam.owner-pid": str(dead_pid()), "io.dashtam.owner-host": host}
    live = {
        "io.dashtam.owner-pid": str(os.getppid()),
        "io.dashtam.owner-start": owner_start(os.getppid()),
        "io.dashtam.owner-host": host,
    }
    kept = {**dead, "io.dashtam.keep": "1"}
    docs = [
        inspect_doc("crashed", "postgres", dead),
        inspect_doc("crashed", "redis", dead),
        inspect_doc("running", "postgres", live),
        inspect_doc("kept", "postgres", kept),
        inspect_doc("byhand", "postgres", {}),
        inspect_doc("elsewhere", "postgres", {**dead, "io.dashtam.owner-host": "another-machine"}),
    ]
    fake_docker.scenario(
        [
            *HEALTHY_ENGINE,
            ("label=io.dashtam.env=test", {"stdout": "\n".join(d["Id"] for d in docs) + "\n"}),
            ("inspect --type container", {"stdout": json.dumps(docs)}),
            # This project itself has nothing yet; its `up` fails so the test ends there.
            ("label=com.docker.compose.project=", {"stdout": ""}),
            (" up --detach", {"rc": 1, "stderr": "stop here\n"}),
        ]
    )
    with pytest.raises(BackendError, match="stop here"):
        backend(tmp_path, project_name="unit-reaper").start()
    downs = [a for a in fake_docker.argvs() if "down" in a and "--file" not in a]
    assert downs == [
        ["compose", "--project-name", "crashed", "down", "--remove-orphans", "--timeout", "1", "--volumes"]
    ]


def test_a_broken_existing_stack_is_refused_not_recreated(fake_docker: FakeDocker, tmp_path: Path) -> None:
    docs = [
        inspect_doc("unit-broken", "postgres", {}),
        inspect_doc("unit-broken", "redis", {}, status="exited"),
    ]
    fake_docker.scenario(
        [
            *HEALTHY_ENGINE,
            ("label=io.dashtam.env=test", {"stdout": ""}),
            ("label=com.docker.compose.project=unit-broken", {"stdout": "a\nb\n"}),
            ("inspect --type container", {"stdout": json.dumps(docs)}),
            ("logs --no-color", {"stdout": "redis went away\n"}),
        ]
    )
    with pytest.raises(BackendError) as caught:
        backend(tmp_path, project_name="unit-broken").start()
    message = str(caught.value)
    assert "compose project unit-broken exists but is not usable (postgres healthy, redis exited" in message
    assert "redis log: redis went away" in message
    assert "`docker compose -p unit-broken down -v`" in message
    assert not [a for a in fake_docker.argvs() if "up" in a or "down" in a]


# --------------------------------------------------------------------------- parsing


def test_parse_inspect_and_assess() -> None:
    docs = [inspect_doc("p", "postgres", {"io.dashtam.run-id": "r1"}), inspect_doc("p", "redis", {})]
    containers = parse_inspect(json.dumps(docs))
    pg = containers[0]
    assert (pg.name, pg.project, pg.service, pg.status, pg.health) == (
        "p-postgres-1",
        "p",
        "postgres",
        "running",
        "healthy",
    )
    assert pg.env == {"POSTGRES_USER": "u", "POSTGRES_PASSWORD": "p=w"}
    assert pg.ports == {"5432/tcp": (("127.0.0.1", 32769),)}
    assert pg.tmpfs == ("/var/lib/postgresql/data",)
    expected = datetime(2026, 11, 25, 15, 51, 34, 863586, tzinfo=UTC).timestamp()
    assert pg.started_at is not None
    assert abs(pg.started_at - expected) < 1e-6
    assert assess(containers, ("postgres", "redis")).verdict == "ready"
    assert assess([], ("postgres", "redis")).verdict == "absent"
    assert assess(containers[:1], ("postgres", "redis")).describe() == "postgres healthy, redis missing"


def _container(service: str, status: str = "running", health: Any = "healthy") -> Container:
    return Container(
        id=service, name=service, project="p", service=service, status=status, health=health, started_at=None
    )


@pytest.mark.parametrize(
    ("states", "verdict"),
    [
        ([("running", "healthy"), ("running", "none")], "ready"),
        ([("running", "healthy"), ("running", "starting")], "starting"),
        ([("running", "unhealthy"), ("running", "starting")], "broken"),
        ([("exited", "none"), ("running", "healthy")], "broken"),
    ],
)
def test_assess_verdicts(states: list[tuple[str, str]], verdict: str) -> None:
    containers = [_container(s, st, h) for s, (st, h) in zip(("postgres", "redis"), states, strict=True)]
    assert assess(containers, ("postgres", "redis")).verdict == verdict


def test_a_running_container_wins_over_a_leftover() -> None:
    containers = [_container("postgres", "exited", "none"), _container("postgres"), _container("redis")]
    assert assess(containers, ("postgres", "redis")).verdict == "ready"


@pytest.mark.parametrize(
    ("output", "kind", "service", "port"),
    [
        (
            "Error response from daemon: driver failed programming external connectivity on endpoint "
            "dashtam-test-redis-1 (x): Bind for 127.0.0.1:6380 failed: port is already allocated",
            "port",
            "redis",
            6380,
        ),
        (" postgres Error pull access denied for nosuch/image, repository does not exist", "image", "postgres", None),
        ("container dashtam-test-postgres-1 is unhealthy", "unhealthy", "postgres", None),
        ("dependency failed to start: container dashtam-test-postgres-1 exited (3)", "unhealthy", "postgres", None),
        ("timeout waiting for containers\ntimeout: compose up was killed", "timeout", None, None),
        ("something else", "other", None, None),
    ],
)
def test_classify_up_failure(output: str, kind: str, service: str | None, port: int | None) -> None:
    failure = classify_up_failure(output, "dashtam-test")
    assert (failure.kind, failure.service, failure.port) == (kind, service, port)


def test_small_parsers(tmp_path: Path) -> None:
    assert parse_port_output("127.0.0.1:5433\n") == ("127.0.0.1", 5433)
    assert parse_port_output("[::]:6380\n") == ("127.0.0.1", 6380)
    assert parse_port_output("0.0.0.0:6380\n") == ("127.0.0.1", 6380)
    assert parse_port_output("10.1.2.3:6380\n") == ("10.1.2.3", 6380)
    assert parse_port_output("[::1]:6380\n") == ("::1", 6380)
    assert parse_port_output(":0\n") is None
    assert parse_port_output("") is None
    assert parse_compose_version("2.40.3") == (2, 40)
    assert parse_compose_version("v2.17.0-desktop.1") == (2, 17)
    assert parse_compose_version("garbage") is None
    assert service_of("dashtam-test-postgres-1", "dashtam-test") == "postgres"
    assert service_of("/other-redis-2", "dashtam-test") == "other-redis"
    assert log_tail("a\n\nb\nc\n", lines=2) == "b | c"
    assert log_tail("x" * 1000, width=10) == "..." + "x" * 10
    env = tmp_path / ".env"
    env.write_text(
        "# comment\nPOSTGRES_USER=dashtam_test_user\nexport A = b # trailing\nQ=\"with # hash\"\nS='single'\nBAD\nE=\n"
    )
    assert read_env_file(env) == {
        "POSTGRES_USER": "dashtam_test_user",
        "A": "b",
        "Q": "with # hash",
        "S": "single",
        "E": "",
    }
    assert read_env_file(REPO / "env" / ".env.test")["POSTGRES_PASSWORD"] == "test_password"


# --------------------------------------------------------------------------- owners


def test_owner_states() -> None:
    me = Owner.current("r", keep=False)
    assert owner_state(me) == "self"
    assert owner_state(None) == "unowned"
    assert owner_state(Owner(dead_pid(), "", me.host, "r", keep=False)) == "dead"
    assert owner_state(Owner(dead_pid(), "", me.host, "r", keep=True)) == "kept"
    assert owner_state(Owner(dead_pid(), "", "another-machine", "r", keep=False)) == "elsewhere"
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as sleeper:
        try:
            start = owner_start(sleeper.pid)
            assert owner_state(Owner(sleeper.pid, start, me.host, "r", keep=False)) == "alive"
            # Same PID, another start time: the PID was reused, the recorded owner is gone.
            assert owner_state(Owner(sleeper.pid, str(int(start) + 1), me.host, "r", keep=False)) == "dead"
            sleeper.kill()
            # Killed but not yet waited for: a zombie counts as dead.
            import time

            time.sleep(0.2)
            assert not owner_alive(sleeper.pid, start)
        finally:
            sleeper.kill()


def test_owner_labels_round_trip() -> None:
    owner = Owner(123, "456", "host-a", "run-1", keep=True)
    env = owner.compose_env()
    labels = {
        "io.dashtam.owner-pid": env["DASHTAM_STACK_OWNER_PID"],
        "io.dashtam.owner-start": env["DASHTAM_STACK_OWNER_START"],
        "io.dashtam.owner-host": env["DASHTAM_STACK_OWNER_HOST"],
        "io.dashtam.run-id": env["DASHTAM_STACK_RUN_ID"],
        "io.dashtam.keep": env["DASHTAM_STACK_KEEP"],
    }
    assert Owner.from_labels(labels) == owner
    assert Owner.from_labels({"io.dashtam.owner-pid": ""}) is None
    assert Owner.from_labels({}) is None
