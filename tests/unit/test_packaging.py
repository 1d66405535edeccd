"""The packaging split (issue 12): `pip wheel .` gives the plugin alone, requiring what the plugin imports.

The wheel is built as a user's `pip wheel --no-deps .` builds it, but offline (`--no-index`,
`--no-build-isolation`: the dev extra puts the build backend in the venv) and from a copy of the checkout, so
that the build leaves no build/ or egg-info behind in it. The Dashtam application is its own project
(src/pyproject.toml); its declared dependencies are checked against its imports the same way, without a build.
"""

from __future__ import annotations

import ast
import email
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterable, Iterator
from email.message import Message
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
PLUGIN_SOURCES = REPO / "pytest_dashtam"
APP_SOURCES = REPO / "src" / "dashtam"
# The application's web stack: a project that installs the plugin must not get it from the plugin.
APP_STACK = ("fastapi", "starlette", "uvicorn", "cryptography")
# Import names whose distribution is named otherwise, for modules not installed here (the installed ones are
# looked up in importlib.metadata.packages_distributions()).
DISTRIBUTION_OF = {"dotenv": "python-dotenv", "yaml": "pyyaml", "psycopg2": "psycopg2-binary", "jwt": "pyjwt"}
# What the copy of the checkout leaves out: environments, caches, build output, the servers' state.
_NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", ".tox", ".dashtam", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "certs"
)


def _ignore(folder: str, names: list[str]) -> set[str]:
    """The copy's filter, which also drops what is neither a folder nor a file (a server's socket)."""
    skipped = set(_NOT_COPIED(folder, names))
    return skipped | {n for n in names if not (Path(folder, n).is_dir() or Path(folder, n).is_file())}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pytest-dashtam's wheel, built from a copy of this checkout."""
    root = tmp_path_factory.mktemp("packaging")
    source, out = root / "checkout", root / "dist"
    shutil.copytree(REPO, source, ignore=_ignore, symlinks=True)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "--no-build-isolation"]
    built = subprocess.run(
        [*command, "--quiet", "--wheel-dir", str(out), str(source)],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, (
        f"pip wheel failed (the build backend, setuptools>=77, comes with the dev extra: make install):\n"
        f"{built.stdout}\n{built.stderr}"
    )
    (wheel,) = out.glob("*.whl")
    return wheel


def _dist_info(wheel: Path, name: str) -> str:
    """A file of the wheel's .dist-info folder (whatever version the project has)."""
    with zipfile.ZipFile(wheel) as archive:
        (path,) = (n for n in archive.namelist() if n.split("/")[0].endswith(".dist-info") and n.endswith(f"/{name}"))
        return archive.read(path).decode()


def _metadata(wheel: Path) -> Message:
    return email.message_from_string(_dist_info(wheel, "METADATA"))


def _requirements(wheel: Path) -> list[Requirement]:
    return [Requirement(line) for line in _metadata(wheel).get_all("Requires-Dist") or []]


def _installed(requirements: Iterable[Requirement]) -> set[str]:
    """The distributions a plain install brings (the requirements behind no extra)."""
    return {canonicalize_name(r.name) for r in requirements if r.marker is None or "extra" not in str(r.marker)}


def _imports(package: Path) -> Iterator[tuple[str, str]]:
    """(top-level module, where) for every absolute import in the package's sources, in functions too."""
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                yield name.partition(".")[0], f"{path.relative_to(REPO)}:{node.lineno}"


def _third_party(package: Path) -> dict[str, str]:
    """The package's imports of other distributions (not the standard library, not itself): module -> where."""
    found: dict[str, str] = {}
    for module, where in _imports(package):
        if module not in sys.stdlib_module_names and module != package.name:
            found.setdefault(module, where)
    return found


def _uncovered(package: Path, declared: set[str]) -> list[str]:
    """The package's third-party imports that no declared distribution provides, with where and what would."""
    installed = packages_distributions()  # module -> the installed distributions that provide it
    missing = []
    for module, where in sorted(_third_party(package).items()):
        providers = {canonicalize_name(n) for n in [*installed.get(module, []), DISTRIBUTION_OF.get(module, module)]}
        if not providers & declared:
            missing.append(f"{module} ({where}; distribution {' or '.join(sorted(providers))})")
    return missing


def test_the_wheel_holds_the_plugin_alone(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    dist_info = f"pytest_dashtam-{_metadata(wheel)['Version']}.dist-info/"
    outside = [n for n in names if not n.startswith(("pytest_dashtam/", dist_info))]
    assert outside == []
    assert _dist_info(wheel, "top_level.txt").split() == ["pytest_dashtam"]
    assert {"pytest_dashtam/plugin.py", "pytest_dashtam/py.typed", "pytest_dashtam/backends/local.py"} <= set(names)
    shipped = {n for n in names if n.endswith(".py")}
    sources = {p.relative_to(REPO).as_posix() for p in PLUGIN_SOURCES.rglob("*.py")}
    assert shipped == sources


def test_the_wheel_registers_the_plugin_and_the_cli(wheel: Path) -> None:
    entry_points = _dist_info(wheel, "entry_points.txt")
    assert "[pytest11]\ndashtam = pytest_dashtam.plugin" in entry_points
    assert "[console_scripts]\ndashtam-env = pytest_dashtam.cli:main" in entry_points


def test_the_wheel_requires_no_web_stack(wheel: Path) -> None:
    """Not even through an extra: the app's stack comes with the app's own project."""
    names = {canonicalize_name(r.name) for r in _requirements(wheel)}
    assert names.isdisjoint(APP_STACK), sorted(names & set(APP_STACK))


def test_every_third_party_import_of_the_plugin_is_required(wheel: Path) -> None:
    third_party = _third_party(PLUGIN_SOURCES)
    assert "dashtam" not in third_party, f"the plugin imports the app: {third_party.get('dashtam')}"
    # The scan sees the imports (a scan that found nothing would pass any wheel).
    assert {"sqlalchemy", "redis", "pytest", "dotenv", "httpx"} <= set(third_party)
    assert _uncovered(PLUGIN_SOURCES, _installed(_requirements(wheel))) == []


def test_the_app_project_declares_what_the_app_imports() -> None:
    project = tomllib.loads((REPO / "src" / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["name"] == "dashtam"
    declared = _installed(Requirement(line) for line in project["dependencies"])
    assert {"fastapi", "uvicorn", "cryptography"} <= set(_third_party(APP_SOURCES))
    assert _uncovered(APP_SOURCES, declared) == []
