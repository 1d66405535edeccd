"""`dashtam-env` end to end on the local backend: real servers in a throw-away project folder."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from pytest_dashtam.backends._local_procs import pick_free_ports
from pytest_dashtam.backends.base import BackendOptions, Stack
from pytest_dashtam.backends.local import LocalBackend

REPO = Path(__file__).resolve().parents[2]


def _run(
    project: Path,
    *args: str,
    check: bool = True,
    backend: str | None = "local",
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASHTAM_")}
    env["DASHTAM_DEV_POSTGRES_PORT"], env["DASHTAM_DEV_REDIS_PORT"] = (str(p) for p in pick_free_ports(2))
    env.update(extra_env or {})
    chosen = ["--backend", backend] if backend is not None else []
    result = subprocess.run(
        [sys.executable, "-m", "pytest_dashtam.cli", "--project-root", str(project), *chosen, *args],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture
def project() -> Iterator[Path]:
    """A copy of the project's environment files and migrations; whatever it starts is stopped after.

    Under /tmp with mode 755 (not pytest's 700 tmp_path): as root, the dev cluster runs as `postgres`,
    which must reach its data folder under the project.
    """
    root = Path(tempfile.mkdtemp(prefix="dashtam-cli-"))
    root.chmod(0o755)
    shutil.copytree(REPO / "env", root / "env", ignore=shutil.ignore_patterns(".env.dev"))
    shutil.copytree(REPO / "alembic", root / "alembic", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "alembic.ini", root / "alembic.ini")
    yield root
    for env in ("dev", "test"):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest_dashtam.cli",
                "--project-root",
                str(root),
                "--backend",
                "local",
                "down",
                env,
            ],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )
    shutil.rmtree(root, ignore_errors=True)


def _stack(project: Path, env: str) -> Stack:
    status = LocalBackend(BackendOptions(env=env, project_root=project, state_dir=project / ".dashtam" / env)).status()  # type: ignore[arg-type]
    assert status.running, status.detail
    assert status.stack is not None
    return status.stack


def _pids(stack: Stack) -> list[int]:
    assert stack.local is not None
    return [stack.local.postgres_pid, stack.local.redis_pid]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


async def _dev_facts(stack: Stack) -> tuple[str | None, str | None, str | None]:
    conn = await asyncpg.connect(stack.postgres_url)
    try:
        owner = await conn.fetchval("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'dashtam'")
    finally:
        await conn.close()
    dev = await asyncpg.connect(stack.postgres_url.rsplit("/", 1)[0] + "/dashtam")
    try:
        version = await dev.fetchval("SELECT version_num FROM alembic_version")
        users = await dev.fetchval("SELECT to_regclass('public.users')::text")
    finally:
        await dev.close()
    return owner, version, users


@pytest.mark.asyncio
async def test_dev_and_test_run_side_by_side_and_go_away(project: Path) -> None:
    up_dev = _run(project, "up", "dev", "--no-app")
    assert "created env/.env.dev" in up_dev.stdout
    assert "dev database migrated to head" in up_dev.stdout
    assert "dashtam_user:***@" in up_dev.stdout  # the password is masked
    assert "dashtam_dev_password" not in up_dev.stdout + up_dev.stderr
    up_test = _run(project, "up", "test")
    assert "fsync=off" in up_test.stdout

    dev, test = _stack(project, "dev"), _stack(project, "test")
    assert dev.postgres_url != test.postgres_url
    assert await _dev_facts(dev) == ("dashtam_user", "0002_connections_tokens", "users")

    status = _run(project, "status").stdout
    assert "dev: running on the local backend since" in status
    assert "test: running on the local backend since" in status
    logs = _run(project, "logs", "dev", "--lines", "5").stdout
    assert "postgres | " in logs

    pids = _pids(dev) + _pids(test)
    assert len(pids) == 4
    assert all(_alive(pid) for pid in pids)
    _run(project, "down", "test")
    _run(project, "down", "dev")
    assert not [pid for pid in pids if _alive(pid)]
    status = _run(project, "status").stdout
    assert "dev: not running" in status
    assert "test: not running" in status


@pytest.mark.asyncio
async def test_reset_test_rebuilds_the_test_database(project: Path) -> None:
    _run(project, "up", "test")
    reset = _run(project, "reset", "test")
    assert "database dashtam_test rebuilt from the migrations" in reset.stdout
    stack = _stack(project, "test")
    # The URL `up test` and `status` print for the test database is one that connects.
    printed = next(w for w in _run(project, "status", "test").stdout.split() if w.startswith("postgresql+asyncpg://"))
    assert printed.endswith("/dashtam_test")
    conn = await asyncpg.connect(printed.replace("+asyncpg", ""))
    await conn.close()
    conn = await asyncpg.connect(stack.postgres_url.rsplit("/", 1)[0] + "/dashtam_test")
    try:
        assert await conn.fetchval("SELECT version_num FROM alembic_version") == "0002_connections_tokens"
        await conn.execute("INSERT INTO users (id, email, name) VALUES (gen_random_uuid(), 'a@b.c', 'a')")
    finally:
        await conn.close()
    _run(project, "reset", "test")
    conn = await asyncpg.connect(stack.postgres_url.rsplit("/", 1)[0] + "/dashtam_test")
    try:
        assert await conn.fetchval("SELECT count(*) FROM users") == 0
    finally:
        await conn.close()


def test_bad_input_exits_2_with_one_line(project: Path) -> None:
    wrong_env = _run(project, "up", "prod", check=False)
    assert wrong_env.returncode == 2
    assert "invalid choice: 'prod'" in wrong_env.stderr
    reset_dev = _run(project, "reset", "dev", check=False)
    assert reset_dev.returncode == 2
    assert reset_dev.stderr.strip().splitlines() == [
        "dashtam-env: error: only the test environment can be reset: the dev database is never dropped"
    ]
    (project / "env" / ".env.test").unlink()
    missing = _run(project, "up", "test", check=False)
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1
    assert "the test env file" in missing.stderr
    assert ".env.test (dashtam_env_file from default) does not exist" in missing.stderr


def test_the_backend_comes_from_the_plugin_s_configuration(project: Path) -> None:
    """--backend > DASHTAM_BACKEND > the project's ini dashtam_backend > auto, as for pytest; a bad value is
    one line and exit 2, before anything starts."""
    (project / "pyproject.toml").write_text('[tool.pytest.ini_options]\ndashtam_backend = "external"\n')
    from_ini = _run(project, "status", "test", check=False, backend=None)
    assert from_ini.returncode == 2
    assert from_ini.stderr.strip().splitlines() == [
        "dashtam-env: error: dashtam_backend=external needs --dashtam-postgres-url and --dashtam-redis-url "
        "(or DASHTAM_POSTGRES_URL / DASHTAM_REDIS_URL); give both, or choose another backend"
    ]
    from_env = _run(project, "status", "test", backend=None, extra_env={"DASHTAM_BACKEND": "local"})
    assert "test: not running (local backend)" in from_env.stdout
    from_flag = _run(project, "status", "test", backend="local", extra_env={"DASHTAM_BACKEND": "external"})
    assert "test: not running (local backend)" in from_flag.stdout
    bad = _run(project, "status", "test", check=False, backend=None, extra_env={"DASHTAM_BACKEND": "nope"})
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "dashtam-env: error: dashtam_backend='nope' (from DASHTAM_BACKEND) is not a backend; "
        "valid values: auto, compose, local, external"
    ]
    # The external backend has nothing of its own to stop: one line, exit 2, as before.
    urls = {
        "DASHTAM_POSTGRES_URL": "postgresql://postgres@127.0.0.1:1/postgres",
        "DASHTAM_REDIS_URL": "redis://127.0.0.1:1",
    }
    down = _run(project, "down", "test", check=False, backend=None, extra_env={**urls, "DASHTAM_TIMEOUT": "0.5"})
    assert down.returncode == 2
    assert down.stderr.strip().splitlines() == [
        "dashtam-env: error: the external backend does not stop servers it does not own; stop them where they run"
    ]


def test_the_test_env_file_comes_from_the_plugin_s_configuration(project: Path) -> None:
    moved = project / "config" / "ci.env"
    moved.parent.mkdir()
    shutil.move(project / "env" / ".env.test", moved)
    (project / "pyproject.toml").write_text('[tool.pytest.ini_options]\ndashtam_env_file = "config/ci.env"\n')
    up = _run(project, "up", "test")
    assert "fsync=off" in up.stdout
    assert "/dashtam_test" in up.stdout  # the database of the configured env file
    _run(project, "down", "test")


def test_reset_refuses_unsafe_test_settings(project: Path) -> None:
    env_file = project / "env" / ".env.test"
    env_file.write_text(env_file.read_text().replace("ENVIRONMENT=testing", "ENVIRONMENT=development"))
    _run(project, "up", "test")
    refused = _run(project, "reset", "test", check=False)
    assert refused.returncode == 2
    assert "ENVIRONMENT is 'development'" in refused.stderr


@pytest.mark.docker
def test_the_same_commands_on_compose(project: Path) -> None:
    """up/status/logs/reset/down for dev and test on Docker Compose, in compose projects of the test's own
    (never the developer's dashtam-dev / dashtam-test), on ports Docker picks."""
    from pytest_dashtam.backends.compose import docker_available

    if not docker_available():
        pytest.skip(
            "no Docker engine with compose v2 answers (docker compose version): install Docker with the compose "
            "plugin and start it, or point DOCKER_HOST at one"
        )
    shutil.copytree(REPO / "docker", project / "docker")
    tag = secrets.token_hex(3)
    projects = {"dev": f"dashtam-clitest-dev-{tag}", "test": f"dashtam-clitest-test-{tag}"}
    extra = {
        "DASHTAM_POSTGRES_IMAGE": os.environ.get("DASHTAM_POSTGRES_IMAGE", "dashtam-ci/postgres:15"),
        "DASHTAM_REDIS_IMAGE": os.environ.get("DASHTAM_REDIS_IMAGE", "dashtam-ci/redis:7"),
        "DASHTAM_DEV_COMPOSE_PROJECT": projects["dev"],
        # The test project as pytest reads it (dashtam_compose_project): one configuration for both.
        "DASHTAM_COMPOSE_PROJECT": projects["test"],
        "DASHTAM_DEV_POSTGRES_PORT": "0",
        "DASHTAM_DEV_REDIS_PORT": "0",
        "DASHTAM_TEST_POSTGRES_PORT": "0",
        "DASHTAM_TEST_REDIS_PORT": "0",
    }

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(project, *args, check=check, backend="compose", extra_env=extra)

    try:
        up_dev = run("up", "dev", "--no-app")
        assert "dev database migrated to head" in up_dev.stdout
        assert "dashtam_user:***@127.0.0.1:" in up_dev.stdout
        up_test = run("up", "test")
        assert "fsync=off" in up_test.stdout
        status = run("status").stdout
        assert "dev: running on the compose backend" in status
        assert "test: running on the compose backend" in status
        assert run("logs", "dev", "--lines", "20").stdout.strip()
        assert "database dashtam_test rebuilt from the migrations" in run("reset", "test").stdout
        run("down", "test")
        run("down", "dev")
        status = run("status").stdout
        assert "dev: not running" in status
        assert "test: not running" in status
        for name in projects.values():
            assert _containers(name) == []
    finally:
        for name in projects.values():
            subprocess.run(["docker", "compose", "-p", name, "down", "-v"], capture_output=True, check=False)
            volumes = _docker("volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={name}")
            if volumes:
                _docker("volume", "rm", *volumes)


def _docker(*args: str) -> list[str]:
    out = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60, check=False).stdout
    return out.split()


def _containers(project_name: str) -> list[str]:
    return _docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={project_name}")
