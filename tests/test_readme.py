"""The README keeps to what the code does: its exit-code table is the code's, it stays short,
and every page it links to exists."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.errors import EXIT_CODES

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def test_the_exit_code_table_is_the_codes() -> None:
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", _section("Exit codes"), flags=re.MULTILINE)
    assert {int(code): meaning for code, meaning in rows} == EXIT_CODES


def test_the_readme_is_short_and_starts_with_the_two_commands() -> None:
    lines = README.splitlines()
    assert len(lines) <= 200, len(lines)
    assert lines[2].strip().startswith("python3 tasks.py demo")
    assert lines[3].strip().startswith("python3 tasks.py test")


def test_every_linked_page_exists() -> None:
    pages = {ROOT / "README.md": README}
    pages |= {path: path.read_text() for path in (ROOT / "docs").glob("*.md")}
    missing = []
    for page, text in pages.items():
        for target in re.findall(r"\]\(([^)#:]+?\.(?:md|png))(?:#[^)]*)?\)", text):
            if not (page.parent / target).exists():
                missing.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not missing, missing


def test_no_text_says_the_package_is_on_an_index() -> None:
    """Until the package is on an index, nothing tells users to `pip install lxmert-pipeline`."""
    texts = [README, *(p.read_text() for p in (ROOT / "docs").glob("*.md"))]
    texts += [
        p.read_text()
        for top in ("pipeline", "weights", "encoder", "detector")
        for p in (ROOT / top).rglob("*.py")
    ]
    said = [t for t in texts if re.search(r"pip install '?lxmert-pipeline", t)]
    assert not said
