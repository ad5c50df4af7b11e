"""docs/layout.md names every module of ddpm/ and bench/, in the folder that holds it, and names
no module that is not there; it names every helper in tests/helpers/."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = ROOT / "docs" / "layout.md"


def named_paths(text: str) -> set[str]:
    """The file paths the page's tree blocks draw: two spaces of indent per folder level; a
    line starts with a name, or a comma list of names, then two spaces and what it holds."""
    paths = set()
    for block in re.findall(r"```\n(.*?)```", text, re.DOTALL):
        folders: list[str] = []
        for line in block.splitlines():
            match = re.match(r"^( *)([^\s,]+(?:, [^\s,]+)*)", line)
            if not match:
                continue
            level = len(match.group(1)) // 2
            names = match.group(2).split(", ")
            if len(names) == 1 and names[0].endswith("/"):
                folders[level:] = [names[0].rstrip("/")]
                continue
            if not all(n.endswith(".py") for n in names):
                continue  # a description that runs on to its own line
            paths |= {"/".join([*folders[:level], n]) for n in names}
    return paths


def modules() -> set[str]:
    return {
        str(p.relative_to(ROOT))
        for package in ("ddpm", "bench")
        for p in (ROOT / package).rglob("*.py")
        if p.name != "__init__.py"
    }


def test_the_layout_names_every_module_and_no_other():
    named = named_paths(LAYOUT.read_text())
    assert sorted(modules() - named) == [], "modules the layout does not name"
    assert sorted(named - modules()) == [], "the layout names modules that do not exist"


def test_the_layout_names_every_test_helper():
    text = LAYOUT.read_text()
    helpers = [p.name for p in (ROOT / "tests" / "helpers").glob("*.py") if p.name != "__init__.py"]
    assert helpers and [h for h in helpers if f"`{h}`" not in text] == []


def test_the_tree_reader_follows_indentation():
    text = (
        "```\npkg/\n  a.py        holds a\n  sub/        a folder\n    b.py, c.py   two\n"
        "                continued description\n  d.py\n```\n"
    )
    assert named_paths(text) == {"pkg/a.py", "pkg/sub/b.py", "pkg/sub/c.py", "pkg/d.py"}
