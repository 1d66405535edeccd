"""Why a compose stack would not come up, as one line a user can act on.

`classify_up_failure` reads `docker compose up --wait`'s output (plain text in, plain data out, for
unit tests); the messages add what the engine knows (the services' states, log tails, the image).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pytest_dashtam.backends._compose_cli import Result, telling_line
from pytest_dashtam.backends._compose_containers import REQUIRED_SERVICES, Assessment, assess
from pytest_dashtam.backends._compose_engine import ProjectDocker
from pytest_dashtam.backends.base import EnvName
from pytest_dashtam.errors import BackendError

FailureKind = Literal["port", "image", "unhealthy", "timeout", "other"]


@dataclass(frozen=True)
class UpFailure:
    kind: FailureKind
    detail: str
    service: str | None = None
    host: str | None = None
    port: int | None = None


_PORT_PATTERNS = (
    # userland proxy: "listen tcp4 127.0.0.1:5432: bind: address already in use"
    re.compile(r"listen tcp[46]? (?P<host>[\d.]+|\[[0-9a-f:]*\]):(?P<port>\d+): bind: address already in use"),
    # another container holds it: "Bind for 127.0.0.1:5433 failed: port is already allocated"
    re.compile(r"Bind for (?P<host>[\d.]+|\[[0-9a-f:]*\]):(?P<port>\d+) failed: port is already allocated"),
)
_ENDPOINT = re.compile(r"on endpoint (?P<name>[\w.-]+)")
_PULL_ERROR = re.compile(r"^\s*(?P<service>[\w.-]+) Error (?P<msg>.+)$", re.MULTILINE)
_IMAGE_WORDS = (
    "pull access denied",
    "manifest unknown",
    "failed to resolve reference",
    "no such image",
    "repository does not exist",
    "registry-1.docker.io",
    "error pulling image",
)
_UNHEALTHY = re.compile(r"container (?P<name>[\w.-]+) (?P<what>is unhealthy|exited \(\d+\))")


def service_of(container_name: str, project: str) -> str:
    """`dashtam-test-postgres-1` -> `postgres` (compose's default container naming)."""
    name = container_name.lstrip("/")
    if name.startswith(project + "-"):
        name = name[len(project) + 1 :]
    return re.sub(r"-\d+$", "", name)


def classify_up_failure(output: str, project: str) -> UpFailure:
    """Why `compose up --wait` failed, from its output: the cases users can act on."""
    for pattern in _PORT_PATTERNS:
        match = pattern.search(output)
        if match:
            endpoint = _ENDPOINT.search(output)
            service = service_of(endpoint.group("name"), project) if endpoint else None
            return UpFailure(
                "port",
                match.group(0),
                service=service,
                host=match.group("host").strip("[]"),
                port=int(match.group("port")),
            )
    pull = _PULL_ERROR.search(output)
    lowered = output.lower()
    if pull or any(word in lowered for word in _IMAGE_WORDS):
        service = pull.group("service") if pull else None
        detail = pull.group("msg").strip() if pull else telling_line(output, "no output")
        return UpFailure("image", detail, service=service)
    unhealthy = _UNHEALTHY.search(output)
    if unhealthy:
        return UpFailure(
            "unhealthy",
            unhealthy.group("what"),
            service=service_of(unhealthy.group("name"), project),
        )
    if "dependency failed to start" in lowered:
        return UpFailure("unhealthy", telling_line(output, "no output"))
    if "timeout" in lowered or "deadline" in lowered:
        return UpFailure("timeout", telling_line(output, "no output"))
    return UpFailure("other", telling_line(output, "no output"))


def log_tail(text: str, lines: int = 8, width: int = 600) -> str:
    """The last lines of a service's log folded into one line for an error message."""
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    folded = " | ".join(kept)
    return folded if len(folded) <= width else "..." + folded[-width:]


def up_failure_message(
    docker: ProjectDocker, result: Result, env: EnvName, timeout: float, required: Sequence[str] = REQUIRED_SERVICES
) -> str:
    """What went wrong in a failed `compose up --wait` (`result`), and what to do about it; `required`: the
    services the stack needs (PostgreSQL alone for a project without Redis)."""
    failure = classify_up_failure(result.stdout + "\n" + result.stderr, docker.name)
    where = f"compose project {docker.name}"
    if failure.kind == "port":
        service = failure.service or "a service"
        variable = f"DASHTAM_{env.upper()}_{(failure.service or 'POSTGRES').upper()}_PORT"
        return (
            f"{where}: port {failure.port} on {failure.host} is already taken, so {service} cannot publish "
            f"there; stop what holds it or set {variable} to a free port (0 lets Docker choose)"
        )
    if failure.kind == "image":
        image = _image_of(docker, failure.service)
        return (
            f"{where}: image {image or '(unknown)'} for service {failure.service or '?'} is missing and could "
            f"not be pulled ({failure.detail}); pull or build it, or point DASHTAM_"
            f"{(failure.service or 'POSTGRES').upper()}_IMAGE at an image this engine has"
        )
    if failure.kind in ("unhealthy", "timeout"):
        services = [failure.service] if failure.service else list(required)
        assessment = assess(docker.containers(), required)
        tails = [f"{s} log: {t}" for s in services if (t := service_log(docker, s))]
        what = failure.detail if failure.kind == "unhealthy" else f"not healthy within {timeout:.0f}s"
        return f"{where}: {failure.service or 'a service'} {what} ({assessment.describe()})" + (
            f"; {'; '.join(tails)}" if tails else ""
        )
    return f"{where}: `docker compose up` failed: {failure.detail}"


def logs_hint(docker: ProjectDocker, assessment: Assessment) -> str:
    """A `; <service> log: <tail>` suffix for the first required service that is not up ('' if none has a log)."""
    bad = [state.split()[0] for state in assessment.states if not state.endswith(("healthy", "running"))]
    for service in bad:
        if service in assessment.containers:
            tail = service_log(docker, service)
            if tail:
                return f"; {service} log: {tail}"
    return ""


def service_log(docker: ProjectDocker, service: str) -> str:
    """The tail of one service's log in one line, or "" when the engine will not say."""
    try:
        result = docker.call(docker.project.logs(20, service))
    except BackendError:
        return ""
    return log_tail(result.stdout + result.stderr) if result.ok else ""


def _image_of(docker: ProjectDocker, service: str | None) -> str | None:
    if service is None:
        return None
    result = docker.call(docker.project.config_json())
    if not result.ok:
        return None
    try:
        services: Mapping[str, Any] = json.loads(result.stdout).get("services", {})
        image = services.get(service, {}).get("image")
    except (ValueError, AttributeError):
        return None
    return str(image) if image else None
