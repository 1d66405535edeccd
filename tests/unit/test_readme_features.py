"""The README keeps its promises (issue 12): its comparison table claims only what named tests prove.

Under the table in "Compared with other tools", every row has one line naming the test files that back its
pytest-dashtam cell; this file checks that each row has exactly one such line, that every file it names exists
and holds tests, and that the README's relative links (into docs/) lead somewhere. It also pins the README's
shape the issue asks for: the opening in five lines and the two set-up commands.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
COMPARISON = "Compared with other tools"
TOOLS = ("pytest-dashtam", "pytest-postgresql", "pytest-redis", "pytest-django", "pytest-docker", "testcontainers")
_PATH = re.compile(r"`(tests/[^`\s]+)`")


def _text() -> str:
    return README.read_text(encoding="utf-8")


def _sections(text: str) -> dict[str, str]:
    """Each `## ` section's body by its heading (the text before the first one under "")."""
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    sections = {"": parts[0]}
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        sections[heading.strip()] = body
    return sections


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _table(section: str) -> tuple[list[str], list[list[str]]]:
    """The section's first table: its header cells and its rows' cells."""
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert len(lines) >= 3, f"no table in the README's {COMPARISON!r} section"
    header, separator, *rows = lines
    assert set(separator.replace("|", "").strip()) <= {"-", ":", " "}, separator
    return _cells(header), [_cells(row) for row in rows]


def _backing(section: str) -> list[tuple[str, list[str]]]:
    """The `- <row>: <paths>` lines under the table, in order."""
    lines = [line[2:] for line in section.splitlines() if line.startswith("- ")]
    backing = []
    for line in lines:
        label, sep, rest = line.partition(": ")
        assert sep, f"a backing line without ': ': {line!r}"
        backing.append((label.strip(), _PATH.findall(rest)))
    return backing


@pytest.fixture(scope="module")
def comparison() -> str:
    sections = _sections(_text())
    assert COMPARISON in sections, f"the README has no '## {COMPARISON}' section"
    return sections[COMPARISON]


def test_the_table_has_a_column_per_tool(comparison: str) -> None:
    header, rows = _table(comparison)
    assert tuple(header[1:]) == TOOLS
    assert 10 <= len(rows) <= 14, len(rows)
    for row in rows:
        assert len(row) == len(header), row
        assert all(row), f"an empty cell (write '—' for a feature a tool does not document): {row}"


def test_every_row_has_one_backing_line_in_the_table_s_order(comparison: str) -> None:
    _, rows = _table(comparison)
    labels = [label for label, _ in _backing(comparison)]
    assert labels == [row[0] for row in rows]


def test_every_backing_file_exists_and_holds_tests(comparison: str) -> None:
    missing = []
    for label, paths in _backing(comparison):
        assert paths, f"the backing line of {label!r} names no test file"
        for path in paths:
            file = REPO / path
            if not (file.is_file() and file.name.startswith("test_") and file.suffix == ".py"):
                missing.append(f"{label}: {path}")
            elif not re.search(r"^(async )?def test_", file.read_text(encoding="utf-8"), flags=re.MULTILINE):
                missing.append(f"{label}: {path} (no test in it)")
    assert missing == []


def test_the_readme_s_relative_links_lead_somewhere() -> None:
    targets = re.findall(r"\]\(([^)\s]+)\)", _text())
    local = {t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")}
    assert {t for t in local if t.startswith("docs/")}, "the README links into no docs/ page"
    assert sorted(t for t in local if not (REPO / t).exists()) == []


def test_the_opening_is_five_lines_and_the_set_up_is_two_commands() -> None:
    sections = _sections(_text())
    opening = [line for line in sections[""].splitlines() if line.strip() and not line.startswith("# ")]
    assert len(opening) == 5, opening
    setup = re.findall(r"```bash\n(.*?)```", sections["Set up on a fresh machine"], flags=re.DOTALL)
    commands = [line.split("#")[0].strip() for block in setup for line in block.splitlines() if line.strip()]
    assert commands == ["make dev-up", "make test"]
