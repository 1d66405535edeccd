"""A healthy compose project described as a `Stack`: host ports, credentials, and what the servers say.

The host ports come from `docker compose port` (the compose files may publish on fixed ports or
let Docker choose), the superuser from the container's own environment, and the versions and tuning
from the servers themselves through those ports (`_compose_probe`, imported only here and only
when a stack is described, so that the availability check imports no database driver).
"""

from __future__ import annotations

from pytest_dashtam.backends._compose_cli import parse_port_output
from pytest_dashtam.backends._compose_containers import POSTGRES_SERVICE, REDIS_SERVICE, Assessment
from pytest_dashtam.backends._compose_engine import ProjectDocker
from pytest_dashtam.backends._compose_owner import Owner
from pytest_dashtam.backends.base import ComposeFacts, EnvName, Stack
from pytest_dashtam.errors import BackendError

POSTGRES_PORT = 5432
REDIS_PORT = 6379


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def describe(
    docker: ProjectDocker, assessment: Assessment, env: EnvName, *, redis: bool, started: bool, timeout: float
) -> Stack:
    """The stack of a project whose required services are ready; `started`: this run brought it up; `redis`:
    the project uses Redis (else the stack has none, whatever else the compose files run)."""
    postgres = assessment.containers[POSTGRES_SERVICE]
    pg_host, pg_port = host_port(docker, POSTGRES_SERVICE, POSTGRES_PORT)
    redis_host, redis_port = host_port(docker, REDIS_SERVICE, REDIS_PORT) if redis else ("", 0)
    # The container's own environment is the truth about its superuser, also when attaching to
    # a stack brought up with another env file; the env file is the fallback.
    file_values = docker.env_file_values()
    user = postgres.env.get("POSTGRES_USER") or file_values.get("POSTGRES_USER") or "postgres"
    password = postgres.env.get("POSTGRES_PASSWORD", file_values.get("POSTGRES_PASSWORD", ""))
    from sqlalchemy.engine import URL

    postgres_url = URL.create(
        "postgresql", username=user, password=password or None, host=pg_host, port=pg_port, database="postgres"
    ).render_as_string(hide_password=False)
    redis_url = f"redis://{_netloc(redis_host, redis_port)}" if redis else ""
    budget = max(timeout, 2.0)
    from pytest_dashtam.backends._compose_probe import ProbeError, postgres_facts, redis_facts

    try:
        pg = postgres_facts(postgres_url, budget)
        rd = redis_facts(redis_url, budget) if redis else None
    except ProbeError as exc:
        raise BackendError(
            f"compose project {docker.name} reports healthy but {exc}; check `docker compose -p {docker.name} logs`"
        ) from None
    owner = Owner.from_labels(postgres.labels)
    return Stack(
        backend="compose",
        env=env,
        postgres_url=postgres_url,
        redis_url=redis_url,
        postgres_version=pg.version,
        redis_version=rd.version if rd is not None else "",
        # What took effect, read back: only the durability settings that are actually off.
        tuning={name: value for name, value in pg.settings.items() if value == "off"},
        owns_servers=True,
        started=started,
        redis_databases=rd.databases if rd is not None else None,
        data_on_tmpfs=any(path.startswith("/var/lib/postgresql") for path in postgres.tmpfs),
        compose=ComposeFacts(
            project=docker.name,
            services=tuple(sorted({c.service for c in assessment.everything if c.status == "running"})),
            compose_files=tuple(str(f) for f in docker.files),
            env_file=str(docker.env_file),
            postgres_port=pg_port,
            redis_port=redis_port,
            containers={name: c.name for name, c in assessment.containers.items()},
            owner_pid=owner.pid if owner else None,
            run_id=owner.run_id if owner else None,
            kept=bool(owner is None or owner.keep),
        ),
    )


def host_port(docker: ProjectDocker, service: str, container_port: int) -> tuple[str, int]:
    """(host, port) to reach `container_port` of `service` from here; refused when it is not published."""
    result = docker.call(docker.project.port(service, container_port))
    port = parse_port_output(result.stdout) if result.ok else None
    if port is None:
        raise BackendError(
            f"service {service} of compose project {docker.name} publishes no host port for "
            f"{container_port} ({result.first_error_line() if not result.ok else 'not published'}); "
            f'publish it on 127.0.0.1 in the compose file, e.g. "127.0.0.1::{container_port}"'
        )
    return port
