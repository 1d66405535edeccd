"""/docs and /redoc work offline: their assets come from the installed fastapi-offline package, not a CDN.

The ASGI check reads the pages' HTML; the Chromium check renders /docs in a real (headless) browser whose
every host but 127.0.0.1 is unresolvable, so a page that still needed a CDN would render white.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from itertools import accumulate
from pathlib import Path

import httpx
import pytest
from app_support import asgi_client, closed_port

from dashtam.main import create_app

# Paths of a few of the API's routes: Swagger UI and ReDoc list them once the OpenAPI document is rendered.
KNOWN_PATHS = (
    "/health",
    "/api/v1/users",
    "/api/v1/users/{user_id}/providers",
    "/api/v1/providers/{provider_id}/authorization",
)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # Offline, whatever the machine: every host but the app's fails to resolve, so a CDN asset cannot load.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)
# Swagger UI's method badges (swagger-ui.css): present in the screenshot only when its stylesheet applied.
GET_BLUE, POST_GREEN = b"\x61\xaf\xfe", b"\x49\xcc\x90"


# ---------------------------------------------------------------- the HTML, through the app's ASGI client


def _asset_urls(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)


@pytest.mark.asyncio
@pytest.mark.parametrize(("page", "asset"), [("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")])
async def test_docs_pages_reference_only_local_assets_that_answer(page: str, asset: str) -> None:
    async with asgi_client(create_app()) as client:
        response = await client.get(page)
        assert response.status_code == 200
        html = response.text
        assert not re.findall(r"https?://[^\s\"'<>]+", html), f"{page} names another host"
        urls = _asset_urls(html)
        assert any(url.endswith(asset) for url in urls), urls
        for url in urls:
            assert url.startswith("/"), f"{page} loads {url} from elsewhere"
            assert not url.startswith("//"), f"{page} loads {url} from another host"
            fetched = await client.get(url)
            assert fetched.status_code == 200, url
            assert fetched.content, url
        spec = await client.get("/openapi.json")
        assert spec.status_code == 200
        assert set(KNOWN_PATHS) <= set(spec.json()["paths"])


# ---------------------------------------------------------------- /docs in headless Chromium


@pytest.fixture
def chromium() -> str:
    """Debian's chromium, else the test skips (before any server starts)."""
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("chromium is not installed (the Chromium check of /docs needs it): apt-get install -y chromium")
    return path


@pytest.fixture
def served_app(tmp_path: Path) -> Iterator[str]:
    """The API served by uvicorn on a free loopback port, its database and Redis pointed at nothing."""
    port = closed_port()
    env = {
        **os.environ,
        # /docs needs no server: a closed port proves startup and the pages reach neither.
        "ENVIRONMENT": "testing",
        "DATABASE_URL": f"postgresql+asyncpg://nobody@127.0.0.1:{closed_port()}/nothing",
        "REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0",
    }
    log = (tmp_path / "uvicorn.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), "dashtam.main:app"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"uvicorn exited with {proc.returncode}: {(tmp_path / 'uvicorn.log').read_text()}")
            try:
                if httpx.get(f"{base}/openapi.json", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"uvicorn did not answer on {base} within 30 s: {(tmp_path / 'uvicorn.log').read_text()}")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _run_chromium(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_docs_render_in_headless_chromium_offline(chromium: str, served_app: str, tmp_path: Path) -> None:
    screenshot = tmp_path / "docs.png"
    _run_chromium(
        chromium, tmp_path / "profile", f"--screenshot={screenshot}", "--window-size=1280,2000", f"{served_app}/docs"
    )
    assert screenshot.is_file(), f"chromium wrote no screenshot to {screenshot}"
    colours = _colours(screenshot.read_bytes())
    assert len(colours) > 50, f"{screenshot} is blank: {len(colours)} colour(s)"
    assert {GET_BLUE, POST_GREEN} <= colours, f"{screenshot} shows no styled GET/POST badges (swagger-ui.css)"

    dom = _run_chromium(chromium, tmp_path / "profile", "--dump-dom", f"{served_app}/docs").stdout
    (tmp_path / "docs.html").write_text(dom)
    listed = set(re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', dom))
    assert set(KNOWN_PATHS) <= listed, f"Swagger UI lists {sorted(listed)}"
    assert dom.count('class="opblock ') >= len(KNOWN_PATHS)

    redoc = _run_chromium(chromium, tmp_path / "profile", "--dump-dom", f"{served_app}/redoc").stdout
    (tmp_path / "redoc.html").write_text(redoc)
    for operation in ("Create User", "Start Authorization", "Finish Authorization"):
        assert operation in redoc, f"ReDoc does not list {operation!r}"


# ---------------------------------------------------------------- a PNG decoder, enough for a screenshot


def _colours(png: bytes) -> set[bytes]:
    """The distinct pixel values of an 8-bit, non-interlaced greyscale/RGB(A) PNG (what Chromium writes)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks, header = 8, [], b""
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, body = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert (depth, interlace) == (8, 0), f"a {depth}-bit PNG, interlace {interlace}: not what Chromium writes"
    bpp = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]  # greyscale, RGB, greyscale + alpha, RGBA
    raw = zlib.decompress(b"".join(chunks))
    stride = width * bpp
    previous = bytes(stride)
    colours: set[bytes] = set()
    for y in range(height):
        start = y * (stride + 1)
        row = _unfilter(raw[start], raw[start + 1 : start + 1 + stride], previous, bpp)
        colours.update(row[x : x + bpp] for x in range(0, stride, bpp))
        previous = row
    return colours


def _add_bytes(a: int, b: int) -> int:
    return (a + b) & 0xFF


def _unfilter(kind: int, line: bytes, previous: bytes, bpp: int) -> bytes:
    # https://www.w3.org/TR/png/#9Filter-types
    if kind == 0:
        return line
    if kind == 2:
        return bytes((a + b) & 0xFF for a, b in zip(line, previous, strict=True))
    row = bytearray(line)
    if kind == 1:
        for c in range(bpp):
            sums: Iterator[int] = accumulate(line[c::bpp], _add_bytes)
            row[c::bpp] = bytes(sums)
        return bytes(row)
    for i in range(len(row)):
        left = row[i - bpp] if i >= bpp else 0
        up = previous[i]
        if kind == 3:
            row[i] = (row[i] + ((left + up) >> 1)) & 0xFF
            continue
        corner = previous[i - bpp] if i >= bpp else 0
        estimate = left + up - corner
        pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
        row[i] = (row[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
    return bytes(row)
