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


# ----- docs/extending.md names only what exists ----------------------------------------------

EXTENDING = ROOT / "docs" / "extending.md"


def defined(name: str) -> bool:
    """A function, class or module-level constant of that name in bench/, ddpm/ or tests/."""
    pattern = re.compile(rf"^\s*(def|class) {re.escape(name)}\b|^{re.escape(name)}\b\s*[:=]", re.M)
    return any(
        pattern.search(p.read_text())
        for package in ("bench", "ddpm", "tests")
        for p in (ROOT / package).rglob("*.py")
    )


def named_things(text: str) -> dict[str, list[str]]:
    """What the page's code spans name: file paths, modules, constants and callables, tests.
    A `<name>` placeholder stands for the file a recipe creates: its folder must exist."""
    found: dict[str, list[str]] = {"paths": [], "modules": [], "names": []}
    for span in re.findall(r"`([^`]+)`", text):
        for word in re.findall(r"[\w./<>-]+", span):
            if "/" in word and re.search(r"\.(py|md|toml)$", word):
                found["paths"].append(word)
            elif re.fullmatch(r"(bench|ddpm)(\.\w+)+", word):
                found["modules"].append(word)
        call = re.match(r"([A-Za-z_][\w.]*)\(", span)
        if call:
            found["names"].append(call.group(1).rsplit(".", 1)[-1])
        if re.fullmatch(r"[A-Z][A-Z0-9_]+|test_\w+", span):
            found["names"].append(span)
    return found


def test_the_extending_page_names_only_what_exists():
    found = named_things(EXTENDING.read_text())
    assert len(found["paths"]) > 20 and len(found["names"]) > 10
    missing = []
    for path in found["paths"]:
        where = ROOT / path.split("<", 1)[0].rsplit("/", 1)[0] if "<" in path else ROOT / path
        if not where.exists():
            missing.append(path)
    for module in found["modules"]:
        if "<" in module:
            continue
        parts = module.split(".")
        if not any((ROOT.joinpath(*parts[:n]).with_suffix(".py")).exists() for n in (2, 3)):
            missing.append(module)
    missing += [name for name in found["names"] if not defined(name)]
    assert missing == [], "docs/extending.md names what does not exist"


def test_the_extending_page_reader_finds_what_a_page_names(tmp_path):
    text = (
        "1. `bench/spec.py`, `docs/<name>.md`, `Figure(name, unit)`, `TIMED`, "
        "`bench.harnesses.memory`, `test_every_axis_is_in_the_name`\n"
    )
    assert named_things(text) == {
        "paths": ["bench/spec.py", "docs/<name>.md"],
        "modules": ["bench.harnesses.memory"],
        "names": ["Figure", "TIMED", "test_every_axis_is_in_the_name"],
    }
    assert defined("Figure") and defined("TIMED") and not defined("NO_SUCH_NAME_ANYWHERE")
