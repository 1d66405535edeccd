"""Capture what the plugin really prints, from real runs of an example project, into the docs' marked blocks.

    .venv/bin/python docs/capture_output.py [--workdir DIR]

The docs show the report header, the lines after collection, the `--dashtam-timings` summary and
`dashtam-env`'s output as a run prints them. This script makes those runs: it copies the example project
tests/plugin/examples/todo into DIR (a fresh temporary folder by default), gives it a test env file naming a
database of its own (`todo_docs_test`), and runs it on the local backend with a cache folder of its own (so the
first run is a cold one), then:

1. cold: the first run (initdb, the template built from the migrations);
2. warm: the same again (the template cache hit);
3. xdist: `-n 2`;
4. verbose: `pytest -v --collect-only` (every option and where its value came from);
5. keep: `--dashtam-keep`, then `dashtam-env status test`, then a run on the external backend against the kept
   stack with a password in the admin URL (to show how it is masked), then `dashtam-env down test`;
6. keep-failed: a test that fails after writing, run with `--dashtam-keep --dashtam-keep-failed`, then
   `dashtam-env kept`, `dashtam-env kept --remove-all` and `dashtam-env down test`.

Each result replaces the text between `<!-- captured:NAME -->` and `<!-- /captured:NAME -->` in the pages under
docs/. Only pytest's own environment lines (platform, rootdir, configfile, plugins, asyncio, cachedir) are left
out, and the work folder's path is shown as `~/todo`; every other line is as printed. Passwords are masked by
the plugin itself: nothing here edits a URL. Run it after a change to what the plugin prints; it needs the
PostgreSQL and Redis binaries the local backend finds (it runs no Docker).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
EXAMPLE = ROOT / "tests" / "plugin" / "examples" / "todo"
DATABASE = "todo_docs_test"
ENV_FILE = f"""ENVIRONMENT=testing
TESTING=true
DATABASE_URL=postgresql+asyncpg://postgres:postgres@localhost:5432/{DATABASE}
REDIS_URL=redis://localhost:6379/1
"""
TESTS = "tests/test_todo.py"
# A test that fails after writing, for --dashtam-keep-failed.
FAILING = "tests/test_failing.py"
FAILING_TEST = """from todo.models import Entry


async def test_fails_after_writing(db_session, redis_client) -> None:
    db_session.add(Entry(title="left behind"))
    await db_session.commit()
    await redis_client.set("todo:probe", "1")
    assert False, "the entry is wrong"
"""
# pytest's own lines about the machine: they say nothing about the plugin and differ everywhere.
DROPPED = re.compile(r"^(platform |rootdir: |configfile: |plugins: |asyncio: |cachedir: |cacheprovider)")
BLOCK = re.compile(r"(<!-- captured:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /captured:(?P=name) -->)", re.DOTALL)


class CaptureError(Exception):
    """A run did not go as the docs describe it."""


def prepare(workdir: Path) -> Path:
    project = workdir / "todo"
    if project.exists():
        shutil.rmtree(project)
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", ".dashtam", ".pytest_cache"))
    (project / ".env.test").write_text(ENV_FILE, encoding="utf-8")
    return project


def environment(workdir: Path, extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHTAM_", "PYTEST_"))}
    env.update({"DASHTAM_BACKEND": "local", "DASHTAM_CACHE_DIR": str(workdir / "cache"), "COLUMNS": "120"})
    # This checkout's plugin, whatever copy the interpreter has installed (an editable install may point elsewhere).
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(extra)
    if extra.get("DASHTAM_POSTGRES_URL"):
        del env["DASHTAM_BACKEND"]
    return env


def run(shown: str, argv: Sequence[str], project: Path, env: Mapping[str, str], *, expect: int = 0) -> tuple[str, str]:
    """(the block's text: `$ shown` and the output, the raw output) of one command in the project."""
    result = subprocess.run(
        list(argv), cwd=project, env=dict(env), capture_output=True, text=True, check=False, timeout=600
    )
    output = result.stdout + result.stderr
    if result.returncode != expect:
        raise CaptureError(f"`{shown}` exited with {result.returncode}, not {expect}:\n{output}")
    lines = [line.replace(str(project), "~/todo") for line in output.splitlines() if not DROPPED.match(line)]
    return "\n".join([f"$ {shown}", *lines]).rstrip(), output


def pytest(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]


def dashtam_env(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest_dashtam.cli", *args]


def capture(workdir: Path) -> dict[str, str]:
    project = prepare(workdir)
    shutil.rmtree(workdir / "cache", ignore_errors=True)  # the first run is a cold one: initdb, no seed
    env = environment(workdir, {})
    blocks: dict[str, str] = {}
    timings = "DASHTAM_BACKEND=local pytest --dashtam-timings " + TESTS
    blocks["cold"], _ = run(timings, pytest("--dashtam-timings", TESTS), project, env)
    blocks["warm"], _ = run(timings, pytest("--dashtam-timings", TESTS), project, env)
    # The pages' headings say which run is which: hold the runs to it.
    for name, expected in (("cold", "(template built)"), ("warm", "(template cache hit)")):
        if expected not in blocks[name]:
            raise CaptureError(f"the {name} run's timings do not say {expected}:\n{blocks[name]}")
    blocks["xdist"], _ = run(
        "DASHTAM_BACKEND=local pytest -n 2 --dashtam-timings " + TESTS,
        pytest("-n", "2", "--dashtam-timings", TESTS),
        project,
        env,
    )
    blocks["verbose"], _ = run(
        "DASHTAM_BACKEND=local pytest -v --collect-only " + TESTS, pytest("-v", "--collect-only", TESTS), project, env
    )
    blocks["keep"], output = run(
        "DASHTAM_BACKEND=local pytest --dashtam-keep " + TESTS, pytest("--dashtam-keep", TESTS), project, env
    )
    try:
        blocks["status"], _ = run(
            "DASHTAM_BACKEND=local dashtam-env status test", dashtam_env("status", "test"), project, env
        )
        ports = re.search(
            r"PostgreSQL .*? at postgresql://[^@]*@127\.0\.0\.1:(\d+)/.*? at redis://127\.0\.0\.1:(\d+)", output
        )
        if ports is None:
            raise CaptureError(f"no stack ports in the kept run's header:\n{output}")
        pg_port, redis_port = ports.groups()
        if shutil.which("psql") and shutil.which("redis-cli"):  # what a person would look with
            url = f"postgresql://postgres@127.0.0.1:{pg_port}/{DATABASE}"
            query = "select * from entries"
            psql, _ = run(f"psql {url} -c '{query}'", ["psql", url, "-c", query], project, env)
            keys, _ = run(
                f"redis-cli -p {redis_port} -n 1 keys '*'",
                ["redis-cli", "-p", redis_port, "-n", "1", "keys", "*"],
                project,
                env,
            )
            blocks["look"] = psql + "\n" + keys
        external = environment(  # no DASHTAM_BACKEND: `auto` picks external because both URLs are given
            workdir,
            {
                "DASHTAM_POSTGRES_URL": f"postgresql://postgres:s3cret@127.0.0.1:{pg_port}/postgres",
                "DASHTAM_REDIS_URL": f"redis://127.0.0.1:{redis_port}",
            },
        )
        blocks["external"], _ = run(
            "DASHTAM_POSTGRES_URL=postgresql://postgres:s3cret@127.0.0.1:"
            f"{pg_port}/postgres DASHTAM_REDIS_URL=redis://127.0.0.1:{redis_port} pytest {TESTS}",
            pytest(TESTS),
            project,
            external,
        )
    finally:
        blocks["down"], _ = run(
            "DASHTAM_BACKEND=local dashtam-env down test", dashtam_env("down", "test"), project, env
        )
    (project / FAILING).write_text(FAILING_TEST, encoding="utf-8")
    try:
        blocks["keep-failed"], _ = run(
            f"DASHTAM_BACKEND=local pytest --dashtam-keep --dashtam-keep-failed --tb=short {FAILING}",
            pytest("--dashtam-keep", "--dashtam-keep-failed", "--tb=short", FAILING),
            project,
            env,
            expect=1,
        )
        blocks["kept"], _ = run("DASHTAM_BACKEND=local dashtam-env kept", dashtam_env("kept"), project, env)
        blocks["kept-remove"], _ = run(
            "DASHTAM_BACKEND=local dashtam-env kept --remove-all", dashtam_env("kept", "--remove-all"), project, env
        )
    finally:
        run("DASHTAM_BACKEND=local dashtam-env down test", dashtam_env("down", "test"), project, env)
    return blocks


def write(blocks: Mapping[str, str]) -> list[str]:
    """Put each block into the pages that mark it; the names no page marks come back."""
    used: set[str] = set()
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text(encoding="utf-8")

        def fill(match: re.Match[str]) -> str:
            name = match.group("name")
            if name not in blocks:
                return match.group(0)
            used.add(name)
            return f"{match.group(1)}```text\n{blocks[name]}\n```\n{match.group(4)}"

        new = BLOCK.sub(fill, text)
        if new != text:
            page.write_text(new, encoding="utf-8")
            print(f"updated {page.relative_to(ROOT)}")
    return sorted(set(blocks) - used)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Capture the plugin's real output into docs/.")
    parser.add_argument("--workdir", type=Path, default=None, help="where to copy the example (default: a temp dir)")
    parser.add_argument("--print", action="store_true", help="print the blocks instead of writing the pages")
    args = parser.parse_args(argv)
    workdir: Path = args.workdir or Path(tempfile.mkdtemp(prefix="dashtam-docs-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        blocks = capture(workdir)
    except CaptureError as exc:
        print(f"capture_output: {exc}", file=sys.stderr)
        return 1
    if args.print:
        for name, block in blocks.items():
            print(f"--- {name}\n{block}")
        return 0
    unused = write(blocks)
    if unused:
        print(f"no page marks: {', '.join(unused)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
