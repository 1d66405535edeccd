"""The compose backend against a real Docker engine: start, attach, reap, stop, side by side with dev.

Each test uses its own project name and lets Docker choose the host ports (`..._PORT=0`), so the
tests never touch a developer's `dashtam-test` / `dashtam-dev` stacks, and every project a test
creates is taken down afterwards (`down -v`) whatever happened.

Images: DASHTAM_POSTGRES_IMAGE / DASHTAM_REDIS_IMAGE if set; else the offline stand-ins
dashtam-ci/postgres:15 and dashtam-ci/redis:7 when the engine has them; else the compose files'
defaults (the real images, pulled on first use).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis
from selftest import compose_images, needs_docker

from pytest_dashtam.backends.base import BackendOptions, Stack
from pytest_dashtam.backends.compose import ComposeBackend
from pytest_dashtam.errors import BackendError

REPO = Path(__file__).resolve().parents[2]

pytestmark = needs_docker()


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=120)


@pytest.fixture(scope="module")
def compose_env() -> Iterator[dict[str, str]]:
    """Images that this engine has, and Docker-chosen host ports for every published service."""
    values = {
        "DASHTAM_TEST_POSTGRES_PORT": "0",
        "DASHTAM_TEST_REDIS_PORT": "0",
        "DASHTAM_DEV_POSTGRES_PORT": "0",
        "DASHTAM_DEV_REDIS_PORT": "0",
    }
    values.update(compose_images())
    with pytest.MonkeyPatch.context() as patch:
        for key, value in values.items():
            patch.setenv(key, value)
        yield values


@pytest.fixture
def projects(compose_env: dict[str, str]) -> Iterator[list[str]]:
    """Names of the projects a test creates; each is taken down (volumes too) afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        subprocess.run(
            ["docker", "compose", "--project-name", name, "down", "--volumes", "--remove-orphans", "--timeout", "1"],
            capture_output=True,
            timeout=120,
            cwd="/",
        )


def new_project(projects: list[str], tag: str) -> str:
    name = f"dashtam-it-{tag}-{uuid.uuid4().hex[:6]}"
    projects.append(name)
    return name


def make_backend(project: str, **overrides: Any) -> ComposeBackend:
    options: dict[str, Any] = {"env": "test", "project_root": REPO, "project_name": project, "timeout": 90.0}
    options.update(overrides)
    return ComposeBackend(BackendOptions(**options))


def container_ids(project: str, *, running_only: bool = False) -> set[str]:
    args = ["ps", "--quiet", "--no-trunc", "--filter", f"label=com.docker.compose.project={project}"]
    if not running_only:
        args.insert(1, "--all")
    return set(docker(*args).stdout.split())


def labels_of(project: str) -> dict[str, str]:
    ids = sorted(container_ids(project))
    data = json.loads(docker("inspect", ids[0]).stdout)
    labels: dict[str, str] = data[0]["Config"]["Labels"]
    return labels


def show(url: str, *names: str) -> dict[str, str]:
    async def go() -> dict[str, str]:
        conn = await asyncpg.connect(url)
        try:
            return {name: str(await conn.fetchval(f"SHOW {name}")) for name in names}
        finally:
            await conn.close()

    return asyncio.run(go())


OWNER_SCRIPT = textwrap.dedent(
    """\
    import sys, time
    from pathlib import Path
    from pytest_dashtam.backends.base import BackendOptions
    from pytest_dashtam.backends.compose import ComposeBackend

    options = BackendOptions(
        env="test", project_root=Path(sys.argv[1]), project_name=sys.argv[2], keep=sys.argv[3] == "keep", timeout=90
    )
    stack = ComposeBackend(options).start()
    print("READY", stack.to_json(), flush=True)
    time.sleep(600)
    """
)


class OwnerProcess:
    """Another pytest run, as far as the backend can tell: a process that started a stack and lives on."""

    def __init__(self, tmp_path: Path, project: str, *, keep: bool = False) -> None:
        script = tmp_path / f"owner-{project}.py"
        script.write_text(OWNER_SCRIPT)
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(REPO), project, "keep" if keep else "no"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.proc.kill()
            _, err = self.proc.communicate(timeout=30)
            raise AssertionError(f"owner process failed to start its stack: {line!r} {err[-2000:]}")
        self.stack = Stack.from_json(line[len("READY ") :])

    def sigkill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=30)


# --------------------------------------------------------------------------- start and stop


def test_start_gives_a_tuned_stack_on_loopback_and_stop_removes_everything(projects: list[str]) -> None:
    project = new_project(projects, "startstop")
    backend = make_backend(project)
    stack = backend.start()
    try:
        assert stack.started is True
        assert backend.start() is stack  # a second call neither starts nor "attaches"
        assert stack.owns_servers is True
        assert stack.backend == "compose"
        assert stack.env == "test"
        assert stack.postgres_url.startswith("postgresql://dashtam_test_user:test_password@127.0.0.1:")
        assert stack.postgres_url.endswith("/postgres")
        assert stack.redis_url.startswith("redis://127.0.0.1:")
        assert "test_password" not in repr(stack)
        assert stack.compose is not None
        assert stack.compose.project == project
        assert stack.compose.services == ("postgres", "redis")
        assert stack.data_on_tmpfs is True
        assert stack.compose.owner_pid == os.getpid()
        assert stack.compose.kept is False
        assert Stack.from_json(stack.to_json()) == stack
        assert stack.postgres_version.split(".")[0].isdigit()
        assert stack.redis_version.split(".")[0].isdigit()
        assert stack.redis_databases is not None
        assert stack.redis_databases >= 16

        # The tuning, read back by the test itself through the published port.
        # No test database made by the image: the plugin creates (and stamps) its own.
        async def databases() -> set[str]:
            conn = await asyncpg.connect(stack.postgres_url)
            try:
                return {r[0] for r in await conn.fetch("SELECT datname FROM pg_database WHERE NOT datistemplate")}
            finally:
                await conn.close()

        assert asyncio.run(databases()) == {"postgres"}

        shown = show(stack.postgres_url, "fsync", "full_page_writes", "synchronous_commit")
        assert shown == {"fsync": "off", "full_page_writes": "off", "synchronous_commit": "off"}
        assert dict(stack.tuning) == shown

        # Published on loopback only.
        for cid in container_ids(project):
            ports = json.loads(docker("inspect", cid).stdout)[0]["NetworkSettings"]["Ports"]
            hosts = {binding["HostIp"] for bindings in ports.values() if bindings for binding in bindings}
            assert hosts == {"127.0.0.1"}

        client = redis.Redis.from_url(stack.redis_url + "/1")
        assert client.ping()
        client.close()

        # The owner is recorded on every container.
        labels = labels_of(project)
        assert labels["io.dashtam.env"] == "test"
        assert labels["io.dashtam.owner-pid"] == str(os.getpid())
        assert labels["io.dashtam.run-id"] == backend.run_id

        status = backend.status()
        assert status.running
        assert status.stack is not None
        assert status.stack.postgres_url == stack.postgres_url
        assert status.since is not None
        assert time.time() - 300 < status.since <= time.time() + 5
    finally:
        backend.stop()
    assert container_ids(project) == set()
    assert docker("network", "ls", "--quiet", "--filter", f"label=com.docker.compose.project={project}").stdout == ""
    assert docker("volume", "ls", "--quiet", "--filter", f"label=com.docker.compose.project={project}").stdout == ""
    assert not backend.status().running


# --------------------------------------------------------------------------- attach


def test_attaches_to_a_stack_brought_up_by_hand_and_leaves_it_running(
    projects: list[str], compose_env: dict[str, str]
) -> None:
    project = new_project(projects, "byhand")
    # What `make test-up` / `docker compose up` does: no owner labels.
    docker(
        "compose",
        "--project-name",
        project,
        "--file",
        str(REPO / "docker" / "docker-compose.test.yml"),
        "--env-file",
        str(REPO / "env" / ".env.test"),
        "up",
        "--detach",
        "--wait",
    )
    before = container_ids(project, running_only=True)
    assert len(before) == 2

    backend = make_backend(project)
    stack = backend.start()
    assert stack.started is False
    assert stack.compose is not None
    assert stack.compose.kept is True
    assert show(stack.postgres_url, "fsync") == {"fsync": "off"}
    backend.stop()
    assert container_ids(project, running_only=True) == before


def test_a_second_backend_attaches_to_a_live_owners_stack(projects: list[str]) -> None:
    project = new_project(projects, "attach")
    first = make_backend(project)
    stack = first.start()
    try:
        second = make_backend(project)
        attached = second.start()
        assert attached.started is False
        assert attached.postgres_url == stack.postgres_url
        assert attached.redis_url == stack.redis_url
        second.stop()
        assert len(container_ids(project, running_only=True)) == 2
    finally:
        first.stop()
    assert container_ids(project) == set()


def test_keep_leaves_the_stack_up_and_a_dead_keepers_stack_is_attached_not_reaped(
    projects: list[str], tmp_path: Path
) -> None:
    project = new_project(projects, "keep")
    owner = OwnerProcess(tmp_path, project, keep=True)
    owner.sigkill()
    before = container_ids(project, running_only=True)
    assert len(before) == 2

    backend = make_backend(project)
    stack = backend.start()
    assert stack.started is False
    assert stack.postgres_url == owner.stack.postgres_url
    backend.stop()
    assert container_ids(project, running_only=True) == before

    # `dashtam-env down test` takes a kept stack down, volumes and network included.
    make_backend(project).down()
    assert container_ids(project) == set()
    assert docker("network", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}").stdout == ""


# --------------------------------------------------------------------------- owners


def test_a_sigkilled_owners_stack_is_reaped_by_the_next_start(projects: list[str], tmp_path: Path) -> None:
    crashed = new_project(projects, "crashed")
    owner = OwnerProcess(tmp_path, crashed)
    old_ids = container_ids(crashed)
    assert len(old_ids) == 2
    owner.sigkill()
    # The stack outlives its killed owner: nothing else would ever clean it up.
    assert container_ids(crashed, running_only=True) == old_ids

    # The next run, on another project, reaps it...
    other = make_backend(new_project(projects, "next"))
    other.start()
    try:
        assert container_ids(crashed) == set()
        assert docker("network", "ls", "-q", "--filter", f"label=com.docker.compose.project={crashed}").stdout == ""
    finally:
        other.stop()

    # ...and a run on the same project gets a fresh stack of its own.
    owner = OwnerProcess(tmp_path, crashed)
    killed_ids = container_ids(crashed)
    owner.sigkill()
    backend = make_backend(crashed)
    stack = backend.start()
    try:
        assert stack.started is True
        assert stack.compose is not None
        assert stack.compose.owner_pid == os.getpid()
        assert container_ids(crashed).isdisjoint(killed_ids)
    finally:
        backend.stop()


def test_a_live_owners_stack_is_never_touched(projects: list[str], tmp_path: Path) -> None:
    theirs = new_project(projects, "theirs")
    owner = OwnerProcess(tmp_path, theirs)
    try:
        ids = container_ids(theirs, running_only=True)
        mine = make_backend(new_project(projects, "mine"))
        mine.start()
        mine.stop()
        assert container_ids(theirs, running_only=True) == ids
        assert labels_of(theirs)["io.dashtam.owner-pid"] == str(owner.proc.pid)
        # Its stack still answers.
        assert show(owner.stack.postgres_url, "fsync") == {"fsync": "off"}
        # `dashtam-env down` refuses to pull it from under the live run.
        with pytest.raises(BackendError, match=rf"compose project {theirs} belongs to a run that is still going"):
            make_backend(theirs).down()
        assert container_ids(theirs, running_only=True) == ids
        # Its servers' logs, prefixed by service (`dashtam-env logs`).
        logs = make_backend(theirs).logs(50)
        assert "database system is ready to accept connections" in logs
        assert "Ready to accept connections" in logs  # redis
        assert all(" | " in line for line in logs.splitlines())
    finally:
        owner.close()


def test_ctrl_c_during_up_leaves_nothing_behind(projects: list[str], tmp_path: Path) -> None:
    project = new_project(projects, "ctrlc")
    script = tmp_path / "interrupted.py"
    script.write_text(OWNER_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(REPO), project, "no"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Interrupt as soon as compose has created the containers, while `up --wait` still waits.
        deadline = time.monotonic() + 60
        while not container_ids(project) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert container_ids(project), "compose never created the containers"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "READY" not in out, "the stack was already healthy when the interrupt arrived; nothing was tested"
    assert "KeyboardInterrupt" in err
    assert container_ids(project) == set()
    assert docker("network", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}").stdout == ""


# --------------------------------------------------------------------------- dev beside test


async def _dev_snapshot(url: str) -> bytes:
    conn = await asyncpg.connect(url)
    try:
        sink = bytearray()

        async def collect(chunk: bytes) -> None:
            sink.extend(chunk)

        await conn.copy_from_query("SELECT * FROM accounts ORDER BY id", output=collect, format="binary")
        return bytes(sink)
    finally:
        await conn.close()


def _redis_snapshot(url: str) -> dict[bytes, tuple[bytes | None, bool]]:
    client = redis.Redis.from_url(url + "/0")
    try:
        return {key: (client.dump(key), client.ttl(key) > 0) for key in sorted(client.scan_iter())}
    finally:
        client.close()


def test_dev_and_test_stacks_run_side_by_side_and_dev_data_is_untouched(projects: list[str]) -> None:
    dev_project = new_project(projects, "dev")
    dev = make_backend(dev_project, env="dev", env_file="env/.env.dev.example")
    dev_stack = dev.start()
    try:
        assert dev_stack.started is True
        # Dev keeps PostgreSQL's durability defaults and its data in a named volume.
        assert show(dev_stack.postgres_url, "fsync") == {"fsync": "on"}
        assert dict(dev_stack.tuning) == {}
        assert dev_stack.postgres_url.startswith("postgresql://dashtam_user:")
        dev_db = dev_stack.postgres_url.rsplit("/", 1)[0] + "/dashtam"

        async def seed() -> None:
            conn = await asyncpg.connect(dev_db)
            try:
                await conn.execute(
                    "CREATE TABLE accounts (id int PRIMARY KEY, name text, balance numeric, at timestamptz)"
                )
                await conn.execute(
                    "INSERT INTO accounts SELECT g, 'account ' || g, g * 1.5, now() - g * interval '1 day' "
                    "FROM generate_series(1, 200) AS g"
                )
            finally:
                await conn.close()

        asyncio.run(seed())
        dev_redis = redis.Redis.from_url(dev_stack.redis_url + "/0")
        dev_redis.set("session:1", "alice")
        dev_redis.hset("oauth:state:abc", mapping={"user": "1", "provider": "sandbox"})
        dev_redis.set("cache:ttl", "x", ex=3600)
        dev_redis.rpush("queue", "a", "b", "c")
        dev_redis.close()
        dev_ids = container_ids(dev_project, running_only=True)
        rows_before = asyncio.run(_dev_snapshot(dev_db))
        keys_before = _redis_snapshot(dev_stack.redis_url)
        assert len(keys_before) == 4

        # The test stack, up at the same time, on its own ports, worked hard and then taken down.
        test = make_backend(new_project(projects, "test"))
        test_stack = test.start()
        try:
            assert test_stack.started is True
            assert test_stack.postgres_url.split("@")[1] != dev_stack.postgres_url.split("@")[1]
            assert test_stack.redis_url != dev_stack.redis_url

            async def work() -> None:
                conn = await asyncpg.connect(test_stack.postgres_url)
                try:
                    await conn.execute("CREATE DATABASE dashtam_test")
                finally:
                    await conn.close()
                conn = await asyncpg.connect(test_stack.postgres_url.rsplit("/", 1)[0] + "/dashtam_test")
                try:
                    await conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, name text)")
                    await conn.execute("INSERT INTO accounts SELECT g, 'x' FROM generate_series(1, 500) g")
                    await conn.execute("DELETE FROM accounts")
                finally:
                    await conn.close()

            asyncio.run(work())
            for index in (0, 1, 2):
                client = redis.Redis.from_url(f"{test_stack.redis_url}/{index}")
                client.set("session:1", "mallory")
                client.flushdb()
                client.close()
        finally:
            test.stop()

        assert container_ids(dev_project, running_only=True) == dev_ids
        assert asyncio.run(_dev_snapshot(dev_db)) == rows_before
        assert _redis_snapshot(dev_stack.redis_url) == keys_before
    finally:
        dev.stop()
    # Stopping dev keeps its data volumes (only `down -v` by hand removes them).
    assert container_ids(dev_project) == set()
    volumes = docker("volume", "ls", "--quiet", "--filter", f"label=com.docker.compose.project={dev_project}").stdout
    assert len(volumes.split()) == 2


def test_the_app_suite_on_the_compose_backend_leaves_dev_data_untouched(projects: list[str], tmp_path: Path) -> None:
    """The acceptance run of issue 5: the Dashtam suite on `--dashtam-backend=compose`, dev beside it.

    When this session itself runs on the compose backend (CI), the inner run attaches to that same
    `dashtam-test` stack; its own test database name and Redis index keep the two runs apart.
    """
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    # A name of this test's own: another checkout's run of this test may share the `dashtam-test` stack.
    database = f"dashtam_test_compose_it_{uuid.uuid4().hex[:6]}"
    lines = []
    for line in (REPO / "env" / ".env.test").read_text().splitlines():
        if line.startswith("DATABASE_URL="):
            line = line.rsplit("/", 1)[0] + "/" + database
        elif line.startswith("REDIS_URL="):
            line = line.rsplit("/", 1)[0] + "/7"
        lines.append(line)
    (env_dir / ".env.test").write_text("\n".join(lines) + "\n")
    (env_dir / ".env.dev.example").write_text((REPO / "env" / ".env.dev.example").read_text())
    dev_project = new_project(projects, "dev-suite")
    dev = make_backend(dev_project, env="dev", env_file="env/.env.dev.example")
    dev_stack = dev.start()
    try:
        dev_db = dev_stack.postgres_url.rsplit("/", 1)[0] + "/dashtam"

        async def seed() -> None:
            conn = await asyncpg.connect(dev_db)
            try:
                await conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, name text)")
                await conn.execute("INSERT INTO accounts SELECT g, md5(g::text) FROM generate_series(1, 100) AS g")
            finally:
                await conn.close()

        asyncio.run(seed())
        client = redis.Redis.from_url(dev_stack.redis_url + "/0")
        client.set("oauth:state:dev", "keep me")
        client.hset("provider:1", mapping={"alias": "checking"})
        client.close()
        dev_ids = container_ids(dev_project, running_only=True)
        rows_before = asyncio.run(_dev_snapshot(dev_db))
        keys_before = _redis_snapshot(dev_stack.redis_url)

        # A clean child environment: no pytest/xdist/dashtam state of this run leaks into it.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "DASHTAM_"))}
        env.update(
            {k: v for k, v in os.environ.items() if k.startswith("DASHTAM_") and k.endswith(("_IMAGE", "_PORT"))}
        )
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "tests/app",
                "-q",
                "-p",
                "no:cacheprovider",
                "--dashtam-backend=compose",
                # The session's own stack when it runs on compose (its default project, named after
                # dashtam_test): this run's database name alone would name a project of its own.
                "--dashtam-compose-project=dashtam-test",
                f"--dashtam-env-file={env_dir / '.env.test'}",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=500,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
        assert "dashtam: backend=compose" in run.stdout
        assert f"database {database} " in run.stdout
        assert " passed" in run.stdout

        assert container_ids(dev_project, running_only=True) == dev_ids
        assert asyncio.run(_dev_snapshot(dev_db)) == rows_before
        assert _redis_snapshot(dev_stack.redis_url) == keys_before
    finally:
        dev.stop()


# --------------------------------------------------------------------------- errors


def test_a_taken_port_is_a_one_line_error_and_leaves_nothing(
    projects: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    project = new_project(projects, "porttaken")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        monkeypatch.setenv("DASHTAM_TEST_POSTGRES_PORT", str(port))
        with pytest.raises(BackendError) as caught:
            make_backend(project).start()
    message = str(caught.value)
    assert "\n" not in message
    assert f"port {port} on 127.0.0.1 is already taken" in message
    assert "DASHTAM_TEST_POSTGRES_PORT" in message
    assert container_ids(project) == set()


def test_a_missing_image_is_a_one_line_error(projects: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    project = new_project(projects, "noimage")
    monkeypatch.setenv("DASHTAM_REDIS_IMAGE", "dashtam-ci/no-such-image:0")
    with pytest.raises(BackendError) as caught:
        make_backend(project, timeout=60.0).start()
    message = str(caught.value)
    assert "\n" not in message
    assert "image dashtam-ci/no-such-image:0 for service redis is missing" in message
    assert "DASHTAM_REDIS_IMAGE" in message
    assert container_ids(project) == set()


def test_an_unhealthy_service_error_carries_its_log(projects: list[str], tmp_path: Path) -> None:
    project = new_project(projects, "sick")
    override = tmp_path / "sick.yml"
    override.write_text(
        textwrap.dedent(
            """\
            services:
              redis:
                command: ["sh", "-c", "echo the redis of this test refuses to start >&2; sleep 600"]
                healthcheck:
                  test: ["CMD", "false"]
                  interval: 1s
                  retries: 2
            """
        )
    )
    backend = make_backend(project, compose_files=("docker/docker-compose.test.yml", str(override)), timeout=30.0)
    with pytest.raises(BackendError) as caught:
        backend.start()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"compose project {project}: redis ")
    assert "unhealthy" in message
    assert "redis log: the redis of this test refuses to start" in message
    assert container_ids(project) == set()
