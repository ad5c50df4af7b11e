"""The README and the manual in docs/ stay true: the README is a front page (at most 13,000
bytes); the figures they quote between markers are in the committed result tables; every
relative link (and its #anchor) resolves inside the repository; every harness has its page in
docs/, which names each of its figure columns, and the README links every page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import harnesses

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?(?:e-?\d+)?")
README_MAX_BYTES = 13_000
# <!-- headline: ... --> ... <!-- /headline --> in the README, <!-- figures: ... --> ...
# <!-- /figures --> in docs/: every number between them is in a committed results/*.md.
QUOTED = re.compile(r"<!-- (headline|figures):[^\n]*?-->(.*?)<!-- /\1 -->", re.S)
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
IMG_SRC = re.compile(r"<img\s[^>]*src=\"([^\"]+)\"")


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose(text: str) -> str:
    """The text without its fenced code blocks (where `# ...` is no heading, `[x](y)` no link)."""
    return FENCE.sub("", text)


def quoted_blocks(path: Path) -> list[str]:
    return [block for _, block in QUOTED.findall(path.read_text())]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in prose(path.read_text()).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[str]:
    text = prose(path.read_text())
    return LINK.findall(text) + IMG_SRC.findall(text)


def relative(target: str) -> bool:
    return not re.match(r"[a-z][a-z0-9+.-]*:", target, re.I)  # http:, https:, mailto: ...


def test_the_readme_is_a_front_page():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, (
        f"README.md is {size:,} bytes (at most {README_MAX_BYTES:,}): move the manual to docs/"
    )


def test_every_number_in_the_headline_is_in_a_committed_table():
    tables = "\n".join(p.read_text() for p in sorted((ROOT / "results").glob("*.md")))
    found = set(NUMBER.findall(tables))
    headline = [b for kind, b in QUOTED.findall(README.read_text()) if kind == "headline"]
    assert len(headline) == 1
    assert len(NUMBER.findall(headline[0])) > 20  # the headline does quote figures
    assert any(quoted_blocks(p) for p in pages() if p != README)  # so do the docs pages
    missing = {
        str(p.relative_to(ROOT)): [
            n for b in quoted_blocks(p) for n in NUMBER.findall(b) if n.rstrip(",") not in found
        ]
        for p in pages()
    }
    missing = {page: numbers for page, numbers in missing.items() if numbers}
    assert not missing, f"numbers quoted between markers that are in no results/*.md: {missing}"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in links(page):
        if not relative(target):
            continue
        file, _, anchor = target.partition("#")
        resolved = (page.parent / file).resolve() if file else page
        if not resolved.is_relative_to(ROOT):
            broken.append(f"{target} (outside the repository)")
        elif not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {resolved.name})")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def test_the_readme_links_every_docs_page():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README) if relative(t)}
    unlinked = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README's tour does not link: {unlinked}"


def documented_columns(text: str) -> set[str]:
    """Names a page documents: those in the first cell of a table row (a comma list) and those
    in backticks."""
    names = set(re.findall(r"`([\w.*<>-]+)`", text))
    for line in text.splitlines():
        if line.startswith("|"):
            names |= {c.strip() for c in line.split("|")[1].split(",")}
    return names


@pytest.mark.parametrize("name", harnesses.names())
def test_every_harness_has_a_page_naming_each_figure_column(name):
    page = DOCS / f"{name}.md"
    assert page.is_file(), f"harness {name} has no docs/{name}.md"
    text = page.read_text()
    assert f"python -m bench.{name}" in text  # the page names the harness by its command
    documented = documented_columns(text)
    missing = [c for c in harnesses.named(name).figure_columns if c not in documented]
    assert not missing, f"docs/{name}.md does not document {missing}"
