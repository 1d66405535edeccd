"""Options through CLI, environment and ini: the header names the winner; mistakes are UsageErrors."""

from __future__ import annotations

import socket

import pytest
from inner_project import Inner


def test_each_level_wins_in_turn_and_the_header_says_so(inner: Inner) -> None:
    inner.copy()
    inner.ini(dashtam_backend="compose", dashtam_redis_index="12", dashtam_dev_database="dev_from_ini")
    inner.monkeypatch.setenv("DASHTAM_BACKEND", "local")
    inner.monkeypatch.setenv("DASHTAM_REDIS_INDEX", "11")
    result = inner.run("--collect-only", "--dashtam-backend=external")
    result.stdout.fnmatch_lines(
        [
            "dashtam: *, backend=external (from --dashtam-backend), env_file=.env.test (from ini dashtam_env_file), "
            "settings=exampleapp:Settings (from ini dashtam_settings)",
            f"dashtam: test database {inner.database}, redis_index=11 (from DASHTAM_REDIS_INDEX), "
            "dev_database=dev_from_ini (from ini dashtam_dev_database), dev_redis_index=0 (default)",
        ]
    )


def test_cli_flags_and_masked_urls_in_the_header(inner: Inner) -> None:
    inner.copy()
    inner.monkeypatch.setenv("DASHTAM_POSTGRES_URL", "postgresql://postgres:s3cret@127.0.0.1:5432/postgres")
    result = inner.run("--collect-only", "--dashtam-keep", "--dashtam-rebuild")
    result.stdout.fnmatch_lines(
        [
            "dashtam: postgres_url=postgresql://postgres:***@127.0.0.1:5432/postgres (from DASHTAM_POSTGRES_URL), "
            f"redis_url={inner.redis_url} (from DASHTAM_REDIS_URL)",
            "dashtam: keep=True (from --dashtam-keep), rebuild=True (from --dashtam-rebuild), alembic_ini=None*",
        ]
    )
    assert "s3cret" not in result.stdout.str()


def test_bad_value_is_a_usage_error_listing_valid_values(inner: Inner) -> None:
    inner.copy()
    inner.monkeypatch.setenv("DASHTAM_BACKEND", "kubernetes")
    result = inner.run()
    assert result.ret == 4
    result.stderr.fnmatch_lines(
        [
            "ERROR: pytest-dashtam: dashtam_backend='kubernetes' (from DASHTAM_BACKEND) is not a backend; "
            "valid values: auto, compose, local, external"
        ]
    )
    assert "Traceback" not in result.stderr.str()


def test_help_works_on_a_broken_configuration(inner: Inner) -> None:
    inner.copy()
    inner.monkeypatch.setenv("DASHTAM_BACKEND", "kubernetes")
    inner.monkeypatch.setenv("DASHTAM_ENV_FILE", "missing.env")
    result = inner.run("--help")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["pytest-dashtam: the PostgreSQL + Redis test stack:", "*--dashtam-backend=BACKEND*"])


def test_collect_only_does_no_work(inner: Inner) -> None:
    inner.copy()
    # Servers that only listen: a connection attempt of the run would wait in their backlog (seen below).
    with _listener() as postgres, _listener() as redis:
        inner.monkeypatch.setenv("DASHTAM_POSTGRES_URL", f"postgresql://postgres@127.0.0.1:{_port(postgres)}/postgres")
        inner.monkeypatch.setenv("DASHTAM_REDIS_URL", f"redis://127.0.0.1:{_port(redis)}")
        result = inner.run("--collect-only", "--dashtam-timeout=30")
        assert result.ret == 0
        assert "dashtam: backend=external (from DASHTAM_BACKEND):" not in result.stdout.str()
        for server in (postgres, redis):
            with pytest.raises(BlockingIOError):  # nobody knocked
                server.accept()
    assert inner.databases() == set()


def _listener() -> socket.socket:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    return server


def _port(server: socket.socket) -> int:
    return int(server.getsockname()[1])


def test_unconfigured_project_leaves_the_plugin_idle(inner: Inner) -> None:
    """Installed in a venv, the plugin must not break projects that do not use it."""
    for key in ("DASHTAM_BACKEND", "DASHTAM_POSTGRES_URL", "DASHTAM_REDIS_URL"):
        inner.monkeypatch.delenv(key)
    inner.pytester.makepyfile("def test_plain():\n    assert True\n")
    result = inner.run("-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["dashtam: *, idle: the test env file * does not exist*"])


# Every option at one level, valid, and what `-v`'s header must then show for it.
EVERY_OPTION: dict[str, tuple[str, str]] = {
    "backend": ("external", "external"),
    "env_file": (".env.test", ".env.test"),
    "settings": ("exampleapp:Settings", "exampleapp:Settings"),
    "app": ("exampleapp:create_app", "exampleapp:create_app"),
    "metadata": ("exampleapp:Base.metadata", "exampleapp:Base.metadata"),
    "alembic_ini": ("", "None"),
    "session_dependency": ("exampleapp:get_session", "exampleapp:get_session"),
    "redis_dependency": ("exampleapp:get_redis", "exampleapp:get_redis"),
    "redis": ("true", "True"),
    "compose_files": ("other.yml", "other.yml"),
    "keep": ("true", "True"),
    "keep_failed": ("true", "True"),
    "rebuild": ("true", "True"),
    "timings": ("true", "True"),
    "dev_database": ("devdb", "devdb"),
    "dev_redis_index": ("3", "3"),
    "redis_index": ("7", "7"),
    "allowed_hosts": ("db.test.internal", "db.test.internal"),
    "postgres_bin": ("/opt/pg/bin", "/opt/pg/bin"),
    "redis_bin": ("/opt/redis-server", "/opt/redis-server"),
    "timeout": ("5", "5.0"),
}


@pytest.mark.parametrize("level", ["cli", "env", "ini"])
def test_every_option_at_every_level(inner: Inner, level: str) -> None:
    from pytest_dashtam.config import OPTIONS_BY_NAME

    inner.copy()
    values = {
        **EVERY_OPTION,
        "postgres_url": (inner.postgres_url, inner.postgres_url),
        "redis_url": (inner.redis_url, inner.redis_url),
    }
    args = ["--collect-only", "-v"]
    for key in ("DASHTAM_BACKEND", "DASHTAM_POSTGRES_URL", "DASHTAM_REDIS_URL"):
        inner.monkeypatch.delenv(key)
    for name, (raw, _) in values.items():
        option = OPTIONS_BY_NAME[name]
        if level == "cli":
            args.append(option.flag if option.kind == "flag" else f"{option.flag}={raw}")
        elif level == "env":
            inner.monkeypatch.setenv(option.env, raw)
    if level == "ini":
        (inner.pytester.path / "pytest.ini").write_text(
            "[pytest]\n" + "".join(f"{OPTIONS_BY_NAME[n].ini} = {raw}\n" for n, (raw, _) in values.items())
        )
    result = inner.run(*args)
    assert result.ret == 0, result.stderr.str()
    for name, (_, shown) in values.items():
        option = OPTIONS_BY_NAME[name]
        source = {"cli": option.flag, "env": option.env, "ini": f"ini {option.ini}"}[level]
        result.stdout.fnmatch_lines([f"dashtam:   {name}={shown} (from {source})"])
