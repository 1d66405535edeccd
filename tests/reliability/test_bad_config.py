"""Bad configuration, case by case: one clear line, exit 4 (pytest) or 2 (dashtam-env), nothing touched.

Every case runs the `todo` project (lower-case settings fields, settings/engine/Redis client at import time,
an env.py that reads the URL from the settings) as a user would, against the servers that also hold
someone's dev data (tests/support/dev_data.py). After each case: no traceback, no password in any output,
no database of the case's name created, and the dev data's checksum unchanged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest
import tally
from dev_data import DevData, dev_data
from foreign import changed_bytes, databases_like
from passwords import SECRET, with_password
from selftest import Servers, suspended_guard
from todo_project import Todo

SERVER_NAMES = ("postgres", "redis-server", "valkey-server")


@dataclass(frozen=True)
class Case:
    """One bad configuration and the words its one line must carry."""

    id: str
    expect: str  # an fnmatch pattern the one error line must match
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    env_file: dict[str, str | None] = field(default_factory=dict)  # None: the line removed
    ini: dict[str, str] = field(default_factory=dict)
    setup: Callable[[Todo], None] | None = None
    backend: str = "external"
    root_skips: bool = False  # root reads any file: a permission case cannot be made as root


def _two_heads(todo: Todo) -> None:
    versions = todo.path / "alembic" / "versions"
    (versions / "0002_other_head.py").write_text(
        'revision = "0002other"\ndown_revision = None\nbranch_labels = None\ndepends_on = None\n\n'
        "def upgrade() -> None:\n    pass\n\n\ndef downgrade() -> None:\n    pass\n"
    )


def _failing_migration(todo: Todo) -> None:
    versions = todo.path / "alembic" / "versions"
    first = next(versions.glob("0001_*.py")).read_text()
    revision = next(line.split("=")[1].strip() for line in first.splitlines() if line.startswith("revision"))
    (versions / "0002_broken.py").write_text(
        f'from alembic import op\n\nrevision = "0002broken"\ndown_revision = {revision}\n'
        "branch_labels = None\ndepends_on = None\n\n"
        "def upgrade() -> None:\n    op.execute('SELECT * FROM no_such_table_anywhere')\n\n\n"
        "def downgrade() -> None:\n    pass\n"
    )


def _env_file_directory(todo: Todo) -> None:
    (todo.path / ".env.test").unlink()
    (todo.path / ".env.test").mkdir()


def _env_file_invalid_utf8(todo: Todo) -> None:
    path = todo.path / ".env.test"
    path.write_bytes(path.read_bytes() + b"comment=\xff\xfe broken\n")


def _env_file_unreadable(todo: Todo) -> None:
    (todo.path / ".env.test").chmod(0)


def _unwritable_cache(todo: Todo) -> None:
    (todo.path / "cache-is-a-file").write_text("not a folder\n")


def _db(todo: Todo, name: str, *, netloc: str | None = None, query: str = "") -> str:
    pg = urlsplit(todo.postgres_url)
    return f"postgresql+asyncpg://{netloc if netloc is not None else pg.netloc}/{name}{query}"


CASES: list[Case] = [
    # --- the environment and the flags of the settings ---
    Case("environment-development", "*'development'*testing*", env_file={"environment": "development"}),
    Case("environment-missing", "*environment*testing*", env_file={"environment": None}),
    Case("testing-false", "*testing*'false'*true*", env_file={"testing": "false"}),
    Case("testing-missing", "*testing*true*", env_file={"testing": None}),
    Case("testing-yes", "*testing*'yes'*true*", env_file={"testing": "yes"}),
    # --- database names ---
    Case("dev-database", "*dev database*", args=("--dashtam-dev-database={db}",)),
    Case("password-says-test", "*'todo_dev'*test*", env_file={"database_url": "{pg:postgres:test}/todo_dev"}),
    Case("user-says-test", "*'todo_dev'*test*", env_file={"database_url": "{pg:test_user}/todo_dev"}),
    Case("host-says-test", "*'todo_dev'*test*", env_file={"database_url": "{pg:postgres@testhost}/todo_dev"}),
    Case("name-with-quote", "*database name*", env_file={"database_url": "{pg}/todo'x_test"}),
    Case("name-with-semicolon", "*database name*", env_file={"database_url": "{pg}/todo;drop_test"}),
    Case("name-upper-case", "*database name*", env_file={"database_url": "{pg}/Todo_Test"}),
    Case("name-non-ascii", "*database name*", env_file={"database_url": "{pg}/t\u00f6do_test"}),
    # --- hosts ---
    Case(
        "remote-host-in-url",
        "*db.example.com*another machine*",
        env_file={"database_url": "{pg:postgres@db.example.com}/todo_x_test"},
    ),
    Case(
        "remote-host-in-query",
        "*db.example.com*",
        env_file={"database_url": "{pg:postgres@}/todo_x_test?host=db.example.com"},
    ),
    Case(
        "remote-admin-host",
        "*203.0.113.7*",
        env={"DASHTAM_POSTGRES_URL": "postgresql://postgres:{secret}@203.0.113.7:5432/postgres"},
    ),
    Case(
        "pghost-remote",
        "*203.0.113.7*",
        env={"DASHTAM_POSTGRES_URL": "postgresql://postgres:{secret}@/postgres", "PGHOST": "203.0.113.7"},
    ),
    # --- Redis indexes ---
    Case("redis-index-0", "*Redis index 0*dev index*", env_file={"redis_url": "{redis}/0"}),
    Case(
        "redis-dev-index", "*Redis index 5*dev index*", args=("--dashtam-dev-redis-index=5", "--dashtam-redis-index=5")
    ),
    Case("redis-index-beyond-count", "*Redis index*99999*", args=("--dashtam-redis-index=99999",)),
    Case("redis-index-not-a-number", "*Redis*index*", env_file={"redis_url": "{redis}/abc"}),
    Case("redis-index-option-not-a-number", "*--dashtam-redis-index*'abc'*", args=("--dashtam-redis-index=abc",)),
    # --- malformed URLs ---
    Case(
        "redis-wrong-password",
        "*Redis at redis://someone:***@*refused the credentials*",
        env={"DASHTAM_REDIS_URL": "{redis_user_secret}"},
    ),
    Case(
        "db-port-not-a-number",
        "*port*",
        env_file={"database_url": "postgresql+asyncpg://postgres:{secret}@127.0.0.1:abc/todo_x_test"},
    ),
    Case("redis-port-too-big", "*port*", env_file={"redis_url": "redis://:{secret}@127.0.0.1:99999/1"}),
    Case(
        "admin-port-not-a-number",
        "*port*",
        env={"DASHTAM_POSTGRES_URL": "postgresql://adm:{secret}@127.0.0.1:notaport/postgres"},
    ),
    Case("redis-admin-port-not-a-number", "*port*", env={"DASHTAM_REDIS_URL": "redis://:{secret}@127.0.0.1:xx"}),
    Case("db-unknown-scheme", "*mysql*", env_file={"database_url": "mysql://root:{secret}@127.0.0.1/todo_x_test"}),
    Case("redis-unknown-scheme", "*http*", env_file={"redis_url": "http://127.0.0.1:6379/1"}),
    Case("db-url-garbage", "*database_url*not a postgresql url*", env_file={"database_url": "not a url at all"}),
    # --- files ---
    Case("env-file-missing", "*nope.env*", args=("--dashtam-env-file=nope.env",)),
    Case("env-file-directory", "*.env.test*directory*", setup=_env_file_directory),
    Case("env-file-invalid-utf8", "*.env.test*UTF-8*", setup=_env_file_invalid_utf8),
    Case("env-file-unreadable", "*.env.test*", setup=_env_file_unreadable, root_skips=True),
    Case("settings-does-not-import", "*todo.nope:Settings*", ini={"dashtam_settings": "todo.nope:Settings"}),
    Case("settings-attribute-missing", "*todo.config:Nope*", ini={"dashtam_settings": "todo.config:Nope"}),
    Case("app-does-not-import", "*todo.main:nope*", ini={"dashtam_app": "todo.main:nope"}),
    Case("alembic-ini-missing", "*missing.ini*", ini={"dashtam_alembic_ini": "missing.ini"}),
    Case("alembic-two-heads", "*head*", setup=_two_heads),
    Case("alembic-failing-migration", "*alembic upgrade head*failed*no_such_table_anywhere*", setup=_failing_migration),
    # --- options ---
    Case("unknown-backend", "*backend*'docker'*", args=("--dashtam-backend=docker",), backend="external"),
    Case("postgres-url-without-redis-url", "*needs both URLs*DASHTAM_REDIS_URL*", env={"DASHTAM_REDIS_URL": ""}),
    Case("external-without-urls", "*DASHTAM_POSTGRES_URL*", env={"DASHTAM_POSTGRES_URL": ""}),
    Case("timeout-negative", "*timeout*", args=("--dashtam-timeout=-1",)),
    Case("timeout-zero", "*timeout*", args=("--dashtam-timeout=0",)),
    Case("timeout-nan", "*timeout*nan*", env={"DASHTAM_TIMEOUT": "nan"}),
    Case("timeout-inf", "*timeout*inf*", args=("--dashtam-timeout=inf",)),
    Case("timeout-not-a-number", "*timeout*'soon'*", args=("--dashtam-timeout=soon",)),
    Case("gc-freeze-not-a-bool", "*gc_freeze*'maybe'*", ini={"dashtam_gc_freeze": "maybe"}),
    # --- the local backend ---
    Case(
        "postgres-bin-missing", "*/nonexistent/bin*", args=("--dashtam-postgres-bin=/nonexistent/bin",), backend="local"
    ),
    Case(
        "redis-bin-missing",
        "*/nonexistent/redis-server*",
        args=("--dashtam-redis-bin=/nonexistent/redis-server",),
        backend="local",
    ),
    Case(
        "cache-dir-unwritable",
        "*cache-is-a-file*",
        env={"DASHTAM_CACHE_DIR": "{root}/cache-is-a-file/sub"},
        setup=_unwritable_cache,
        backend="local",
    ),
]


@pytest.fixture(scope="module")
def planted(servers: Servers) -> Iterator[DevData]:
    # A module fixture is set up before tests/conftest.py's autouse fixture lifts the outer run's guard.
    with suspended_guard(), dev_data(servers.postgres_url, servers.redis_url) as data:
        yield data


@pytest.fixture
def todo(tmp_path: Path, servers: Servers) -> Todo:
    return Todo.make(tmp_path / "todo", with_password(servers.postgres_url), servers.redis_url, 1)


def _fill(value: str, todo: Todo) -> str:
    pg = urlsplit(todo.postgres_url)
    host = f"{pg.hostname}:{pg.port}" if pg.port else str(pg.hostname)

    def netloc(spec: str) -> str:
        user, _, rest = spec.partition("@")
        name, _, password = user.partition(":")
        at_host = rest if "@" in spec else host
        return f"postgresql+asyncpg://{name}{':' + password if password else ''}@{at_host}"

    out = value.replace("{secret}", SECRET).replace("{db}", todo.database).replace("{root}", str(todo.path))
    out = out.replace("{redis}", todo.redis_url.rstrip("/"))
    redis_parts = urlsplit(todo.redis_url)
    out = out.replace("{redis_user_secret}", f"redis://someone:{SECRET}@{redis_parts.netloc}")
    out = out.replace("{pg}", f"postgresql+asyncpg://postgres:{SECRET}@{host}")
    while "{pg:" in out:
        start = out.index("{pg:")
        end = out.index("}", start)
        out = out[:start] + netloc(out[start + 4 : end]) + out[end + 1 :]
    return out


def _write_env(todo: Todo, changes: dict[str, str | None]) -> None:
    values: dict[str, str] = {
        "environment": "testing",
        "testing": "true",
        "database_url": todo.shared_db_url,
        "redis_url": todo.shared_redis_url,
    }
    for key, value in changes.items():
        if value is None:
            values.pop(key, None)
        else:
            values[key] = _fill(value, todo)
    (todo.path / ".env.test").write_text("".join(f"{k}={v}\n" for k, v in values.items()))


def _set_ini(todo: Todo, values: dict[str, str]) -> None:
    """The project's [tool.pytest.ini_options] with these keys set (replaced where the project has them)."""
    path = todo.path / "pyproject.toml"
    lines = [line for line in path.read_text().splitlines() if line.split("=", 1)[0].strip() not in values]
    at = lines.index("[tool.pytest.ini_options]") + 1
    lines[at:at] = [f'{k} = "{v}"' for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")


def orphaned_servers(since: float, todo: Todo) -> list[str]:
    """Server processes of this case's run (they inherit its environment: its project's TODO_SHARED_DB_URL)
    started since `since` whose parent is gone: what a refused run must not leave. Other tests' runs on the
    machine at the same moment (a killed run whose janitor has not reaped yet) are not this case's."""
    found = []
    for process in psutil.process_iter(["name", "ppid", "create_time", "cmdline"]):
        info = process.info
        if info["ppid"] == 1 and info["name"] in SERVER_NAMES and info["create_time"] >= since:
            try:
                ours = process.environ().get("TODO_SHARED_DB_URL") == todo.shared_db_url
            except psutil.Error:
                continue  # gone meanwhile
            if ours:
                found.append(" ".join(info["cmdline"] or [info["name"]]))
    return found


def one_line(result: pytest.RunResult, expect: str, *, exit_code: int, prefix: str) -> str:
    """The run's single error line, after checking there is no traceback and no password anywhere."""
    out = "\n".join(result.outlines + result.errlines)
    assert result.ret == exit_code, out
    assert "Traceback" not in out, out
    assert SECRET not in out, out
    errors = [line for line in result.errlines + result.outlines if line.startswith(prefix)]
    assert len(errors) == 1, out
    # Case-insensitive: a lower-case settings field is named as the user wrote it, or in upper case.
    assert fnmatch(errors[0].lower(), (prefix + expect).lower()), f"{errors[0]!r} !~ {expect!r}\n{out}"
    return errors[0]


def _record_output(record_property: Callable[[str, object], None], result: pytest.RunResult) -> None:
    """one_line() searches this output for the password: the tally counts it, and what it would find."""
    out = "\n".join(result.outlines + result.errlines)
    tally.record(record_property, passwords_found=out.count(SECRET), outputs_checked=1)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_pytest_refuses_bad_configuration(
    case: Case, todo: Todo, planted: DevData, record_property: Callable[[str, object], None]
) -> None:
    if case.root_skips and os.geteuid() == 0:
        pytest.skip("runs as root, which reads a file of mode 000: the unreadable case needs another user")
    tally.record(record_property, bad_configs=1)
    before = planted.checksum()
    _write_env(todo, case.env_file)
    if case.ini:
        _set_ini(todo, {k: _fill(v, todo) for k, v in case.ini.items()})
    if case.setup is not None:
        case.setup(todo)
    env = {k: _fill(v, todo) for k, v in case.env.items()}
    args = [_fill(a, todo) for a in case.args]
    started = time.time()
    result = todo.run("tests/test_todo.py", *args, backend=case.backend, **env)
    _record_output(record_property, result)
    one_line(result, case.expect, exit_code=pytest.ExitCode.USAGE_ERROR, prefix="ERROR: pytest-dashtam: ")
    assert databases_like(planted.postgres_url, todo.database) == set()
    assert orphaned_servers(since=started, todo=todo) == []
    after = planted.checksum()
    tally.record(record_property, checksums_compared=1, dev_bytes_changed=changed_bytes(before, after))
    assert after == before


CLI_CASES: list[Case] = [
    Case("cli-unknown-backend", "*backend*'docker'*", args=("--backend", "docker", "status")),
    Case("cli-timeout-nan", "*timeout*nan*", env={"DASHTAM_TIMEOUT": "nan"}, args=("reset", "test")),
    Case("cli-env-file-missing", "*nope.env*", env={"DASHTAM_ENV_FILE": "nope.env"}, args=("reset", "test")),
    Case(
        "cli-environment-development",
        "*'development'*testing*",
        env_file={"environment": "development"},
        args=("reset", "test"),
    ),
    Case(
        "cli-admin-port-not-a-number",
        "*port*",
        env={"DASHTAM_POSTGRES_URL": "postgresql://adm:{secret}@127.0.0.1:notaport/postgres"},
        args=("reset", "test"),
    ),
    Case("cli-redis-index-0", "*Redis index 0*dev index*", env_file={"redis_url": "{redis}/0"}, args=("reset", "test")),
    Case("cli-unknown-command", "*invalid choice*", args=("explode",)),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_dashtam_env_refuses_bad_configuration(
    case: Case, todo: Todo, planted: DevData, record_property: Callable[[str, object], None]
) -> None:
    tally.record(record_property, bad_configs=1)
    before = planted.checksum()
    _write_env(todo, case.env_file)
    env = todo.environ(case.backend, **{k: _fill(v, todo) for k, v in case.env.items()})
    command = shutil.which("dashtam-env", path=str(Path(sys.executable).parent)) or "dashtam-env"
    proc = subprocess.run(
        [command, *(_fill(a, todo) for a in case.args)],
        cwd=todo.path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    result = pytest.RunResult(proc.returncode, proc.stdout.splitlines(), proc.stderr.splitlines(), 0.0)
    print(proc.stdout, proc.stderr, sep="\n--- stderr ---\n")
    _record_output(record_property, result)
    one_line(result, case.expect, exit_code=2, prefix="dashtam-env: error: ")
    assert databases_like(planted.postgres_url, todo.database) == set()
    after = planted.checksum()
    tally.record(record_property, checksums_compared=1, dev_bytes_changed=changed_bytes(before, after))
    assert after == before


def test_the_suite_has_the_cases_the_issue_asks_for() -> None:
    """At least 30 bad configurations for pytest (the issue's floor), each with its own id."""
    ids: list[Any] = [c.id for c in CASES + CLI_CASES]
    assert len(CASES) >= 30
    assert len(ids) == len(set(ids))
