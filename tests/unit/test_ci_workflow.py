""".github/workflows/ci.yml and tox.ini (issue 12): they cannot run here, so their commands are pinned here.

The workflow's steps must call what the README and the Makefile name (the README's test command, the Makefile's
lint recipe); its service-container job must hand the plugin the servers through the variables the plugin reads
(pytest_dashtam/config/options.py), and its compose job must not (else its backend would be external). tox's
environments run the same commands as the Makefile.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from pytest_dashtam.config.options import OPTIONS_BY_NAME

REPO = Path(__file__).resolve().parents[2]
URL_VARIABLES = (OPTIONS_BY_NAME["postgres_url"].env, OPTIONS_BY_NAME["redis_url"].env)


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    loaded = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _jobs(workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    jobs = workflow["jobs"]
    assert isinstance(jobs, dict)
    return jobs


def _runs(job: dict[str, Any]) -> list[str]:
    """The job's shell commands, one per step, folded lines joined."""
    return [" ".join(step["run"].split()) for step in job["steps"] if "run" in step]


def _env(workflow: dict[str, Any], job: dict[str, Any]) -> dict[str, str]:
    """What the job's commands see: the workflow's env, the job's, then every step's."""
    env = {**workflow.get("env", {}), **job.get("env", {})}
    for step in job["steps"]:
        env.update(step.get("env", {}))
    return {k: str(v) for k, v in env.items()}


def _test_jobs(workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: job for name, job in _jobs(workflow).items() if any(r.startswith("make test") for r in _runs(job))}


def _readme_commands() -> list[str]:
    """The commands of the README's bash blocks, without their comments."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.DOTALL)
    return [line.split("#")[0].strip() for block in blocks for line in block.splitlines() if line.strip()]


def _recipe(target: str) -> list[str]:
    """The Makefile target's command lines, `$(BIN)/` spelled as the venv it is."""
    lines = (REPO / "Makefile").read_text(encoding="utf-8").splitlines()
    start = lines.index(next(line for line in lines if line.startswith(f"{target}:")))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip().replace("$(BIN)/", ".venv/bin/"))
    assert recipe, f"the Makefile has no recipe for {target}"
    return recipe


def _tox_commands(env: str) -> list[str]:
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(REPO / "tox.ini", encoding="utf-8")
    return [line.strip() for line in tox[f"testenv:{env}"]["commands"].strip().splitlines()]


def test_the_readme_names_the_commands_the_workflow_runs() -> None:
    commands = _readme_commands()
    assert {"make test", "make lint", "make test-app"} <= set(commands)
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    targets = {c.split()[1] for c in commands if c.startswith("make ")}
    assert [t for t in sorted(targets) if not re.search(rf"^{re.escape(t)}:", makefile, flags=re.MULTILINE)] == []


def test_the_test_jobs_run_the_readme_test_command_after_make_install(workflow: dict[str, Any]) -> None:
    jobs = _test_jobs(workflow)
    assert len(jobs) >= 2, sorted(_jobs(workflow))
    for name, job in jobs.items():
        runs = _runs(job)
        assert "make install" in runs, name
        first_test = next(i for i, r in enumerate(runs) if r.startswith("make test"))
        assert runs.index("make install") < first_test, name


def test_the_service_job_hands_the_plugin_its_servers(workflow: dict[str, Any]) -> None:
    """Both URL variables set (the plugin's `auto` backend is then external), naming the job's own services."""
    with_services = {n: j for n, j in _test_jobs(workflow).items() if set(URL_VARIABLES) <= set(_env(workflow, j))}
    assert len(with_services) == 1, sorted(_test_jobs(workflow))
    ((name, job),) = with_services.items()
    images = {service["image"].split(":")[0]: service for service in job["services"].values()}
    assert images.keys() == {"postgres", "redis"}, name
    env = _env(workflow, job)
    for variable, image, scheme in zip(URL_VARIABLES, ("postgres", "redis"), ("postgresql", "redis"), strict=True):
        url = urlsplit(env[variable])
        assert url.scheme == scheme, (variable, env[variable])
        assert url.hostname in ("127.0.0.1", "localhost"), (variable, env[variable])
        published = {str(p).split(":")[0] for p in images[image].get("ports", [])}
        assert str(url.port) in published, (variable, env[variable], published)
    assert "DASHTAM_BACKEND" not in env or env["DASHTAM_BACKEND"] in ("auto", "external")


def test_the_compose_job_uses_docker_and_may_not_skip_it(workflow: dict[str, Any]) -> None:
    compose = {n: j for n, j in _test_jobs(workflow).items() if not set(URL_VARIABLES) & set(_env(workflow, j))}
    assert len(compose) == 1, sorted(_test_jobs(workflow))
    ((name, job),) = compose.items()
    env = _env(workflow, job)
    assert job["runs-on"].startswith("ubuntu"), name
    assert env.get("DASHTAM_REQUIRE_DOCKER") == "1", name
    assert env.get("DASHTAM_BACKEND", "auto") in ("auto", "compose"), name
    # The compose stacks' images are ones a registry has (the stand-ins exist only on this project's machines).
    assert not env.get("DASHTAM_POSTGRES_IMAGE", "").startswith("dashtam-ci/"), name
    assert not env.get("DASHTAM_REDIS_IMAGE", "").startswith("dashtam-ci/"), name


def test_the_lint_and_type_jobs_run_the_makefile_lint_recipe(workflow: dict[str, Any]) -> None:
    jobs = _jobs(workflow)
    assert {"lint", "type"} <= jobs.keys()
    checks = [r for name in ("lint", "type") for r in _runs(jobs[name])]
    for name in ("lint", "type"):
        assert _runs(jobs[name])[0] == "make install", name
    assert set(_recipe("lint")) <= set(checks)


def test_tox_runs_the_makefile_commands() -> None:
    venv = ".venv/bin/"
    assert [c.removeprefix(venv) for c in _recipe("lint")] == [*_tox_commands("lint"), *_tox_commands("type")]
    (make_test,) = _recipe("test")
    as_tox = make_test.removeprefix(venv).replace("$(PYTEST_WORKERS)", "{env:PYTEST_WORKERS:2}")
    assert _tox_commands("test") == [as_tox.replace("$(PYTEST_ARGS)", "{posargs}")]
