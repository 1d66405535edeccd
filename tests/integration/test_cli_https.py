"""`dashtam-env up dev` serves the API and the callback server over HTTPS with a certificate of its own making,
and plain HTTP with `--http`: real servers (local backend) and real uvicorns in a throw-away project folder."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import ssl
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from selftest import stop_process

from pytest_dashtam.backends._local_procs import pick_free_ports

REPO = Path(__file__).resolve().parents[2]
STARTUP_SECONDS = 180.0  # the local dev cluster starts in seconds, much slower on a loaded machine


@dataclass
class Project:
    root: Path
    api_port: int
    callback_port: int
    environ: dict[str, str]
    running: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)

    @property
    def cert_dir(self) -> Path:
        return self.root / ".dashtam" / "certs"

    def cli(self, *args: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "pytest_dashtam.cli",
            "--project-root",
            str(self.root),
            "--backend",
            "local",
            *args,
        ]

    def start(self, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
        """`dashtam-env ... up dev` in the background (it runs the apps until SIGTERM), its output in a file."""
        log = self.root / f"up-{len(self.running)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                self.cli(*args), env=self.environ, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.running.append((proc, log))
        return proc, log

    def stop(self, proc: subprocess.Popen[bytes], log: Path) -> str:
        """SIGTERM (run_apps stops both uvicorns on it), then the whole output."""
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
        return log.read_text()


@pytest.fixture
def project() -> Iterator[Project]:
    """A copy of the project's env files and migrations, with the dev env file made from the example on free
    ports (servers and apps); whatever it starts is stopped after.

    Under /tmp with mode 755 (not pytest's 700 tmp_path): as root, the dev cluster runs as `postgres`, which
    must reach its data folder under the project.
    """
    root = Path(tempfile.mkdtemp(prefix="dashtam-https-"))
    root.chmod(0o755)
    shutil.copytree(REPO / "env", root / "env", ignore=shutil.ignore_patterns(".env.dev"))
    shutil.copytree(REPO / "alembic", root / "alembic", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "alembic.ini", root / "alembic.ini")
    postgres, redis, api, callback = pick_free_ports(4)
    example = (root / "env" / ".env.dev.example").read_text()
    assert "API_BASE_URL=https://localhost:8000" in example
    assert "PROVIDER_AUTHORIZE_URL=https://localhost:8182/" in example
    (root / "env" / ".env.dev").write_text(
        example.replace("localhost:8000", f"localhost:{api}")
        .replace("localhost:8182", f"localhost:{callback}")
        .replace("CALLBACK_PORT=8182", f"CALLBACK_PORT={callback}")
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DASHTAM_")}
    environ.update(DASHTAM_DEV_POSTGRES_PORT=str(postgres), DASHTAM_DEV_REDIS_PORT=str(redis))
    made = Project(root, api, callback, environ)
    yield made
    for proc, _log in made.running:
        stop_process(proc, timeout=30)
    subprocess.run(
        made.cli("down", "dev"), env=environ, capture_output=True, stdin=subprocess.DEVNULL, timeout=180, check=False
    )
    shutil.rmtree(root, ignore_errors=True)


def _wait_for(
    url: str, proc: subprocess.Popen[bytes], log: Path, verify: ssl.SSLContext | bool = True
) -> httpx.Response:
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        if proc.poll() is not None:
            pytest.fail(f"dashtam-env exited with {proc.returncode} before {url} answered:\n{log.read_text()}")
        try:
            response = httpx.get(url, verify=verify, timeout=2)
        except (httpx.TransportError, FileNotFoundError, ssl.SSLError):
            response = None
        if response is not None and response.status_code == 200:
            return response
        if time.monotonic() > deadline:
            pytest.fail(f"{url} did not answer 200 within {STARTUP_SECONDS:.0f} s:\n{log.read_text()}")
        time.sleep(0.1)


def _trusting(cert_file: Path) -> ssl.SSLContext:
    """Verification on, with the dev certificate as the only CA."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while not cert_file.is_file():
        assert time.monotonic() < deadline, f"{cert_file} was never made"
        time.sleep(0.05)
    return ssl.create_default_context(cafile=str(cert_file))


def test_up_dev_serves_https_with_its_own_certificate_and_http_one_flag_away(project: Project) -> None:
    api, callback = f"127.0.0.1:{project.api_port}", f"127.0.0.1:{project.callback_port}"
    cert_file, key_file = project.cert_dir / "cert.pem", project.cert_dir / "key.pem"

    # ---- HTTPS, the default: the certificate is made on first use, its folder made private
    project.cert_dir.mkdir(parents=True)
    project.cert_dir.chmod(0o755)
    proc, log = project.start("up", "dev")
    trust = _trusting(cert_file)
    health = _wait_for(f"https://{api}/health", proc, log, verify=trust)
    assert health.json()["status"] == "ok"
    assert httpx.get(f"https://localhost:{project.api_port}/health", verify=trust).status_code == 200
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://{api}/health")  # the system's CAs do not know it: verification is on
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://{api}/health")  # no plain HTTP on the HTTPS port
    assert _wait_for(f"https://{callback}/health", proc, log, verify=trust).json() == {"status": "ok"}

    # The whole sandbox flow over HTTPS: consent on the callback server, the redirect to its https callback,
    # and its forwarding to the API, which verifies the API's certificate (API_CA_FILE).
    with httpx.Client(base_url=f"https://localhost:{project.api_port}", verify=trust) as client:
        user = client.post("/api/v1/users", json={"email": "tls@example.com", "name": "TLS"}).json()
        connection = client.post(
            f"/api/v1/users/{user['id']}/providers", json={"provider_key": "sandbox", "alias": "tls"}
        ).json()
        start = client.post(f"/api/v1/providers/{connection['id']}/authorization").json()
        assert start["authorization_url"].startswith(f"https://localhost:{project.callback_port}/sandbox/authorize?")
        done = client.get(start["authorization_url"], follow_redirects=True)
        assert [str(r.url).split("?")[0] for r in done.history] == [start["authorization_url"].split("?")[0]]
        assert str(done.url).startswith(f"https://localhost:{project.callback_port}/callback?")
        assert done.status_code == 200, done.text
        assert "Your account is connected" in done.text

    # The key: the user's alone, in a folder of the user's alone; the certificate: localhost, a year.
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(project.cert_dir.stat().st_mode) == 0o700
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    assert dt.timedelta(days=364) < cert.not_valid_after_utc - cert.not_valid_before_utc < dt.timedelta(days=367)

    output = project.stop(proc, log)
    assert (
        f"api on https://localhost:{project.api_port}, callback on https://localhost:{project.callback_port}" in output
    )
    assert "made a self-signed certificate for localhost, 127.0.0.1" in output
    key_text = key_file.read_text()
    key_lines = [line for line in key_text.splitlines() if line and not line.startswith("-----")]
    assert "PRIVATE KEY" not in output
    assert not [line for line in key_lines if line in output]

    # ---- --http: the same apps over plain HTTP; the certificate stays as it was
    proc, log = project.start("up", "dev", "--http")
    assert _wait_for(f"http://{api}/health", proc, log).json()["status"] == "ok"
    assert _wait_for(f"http://{callback}/health", proc, log).json() == {"status": "ok"}
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"https://{api}/health", verify=trust)
    output = project.stop(proc, log)
    assert f"api on http://localhost:{project.api_port}, callback on http://localhost:{project.callback_port}" in output
    assert key_file.read_text() == key_text

    # `make certs` (python -m dashtam.certs) keeps a valid certificate; --force makes a new one.
    certs = [sys.executable, "-m", "dashtam.certs", str(project.cert_dir)]
    kept = subprocess.run(certs, capture_output=True, text=True, check=True, env=project.environ)
    assert "kept the certificate" in kept.stdout
    assert key_file.read_text() == key_text
    forced = subprocess.run([*certs, "--force"], capture_output=True, text=True, check=True, env=project.environ)
    assert "made a self-signed certificate" in forced.stdout
    assert key_file.read_text() != key_text
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in kept.stdout + kept.stderr + forced.stdout + forced.stderr
