"""The README's headline quotes only figures that are in the committed result tables."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?(?:e-?\d+)?")


def headline() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("<!-- headline:")
    return text[text.index("\n", start):text.index("<!-- /headline -->")]


def test_every_number_in_the_headline_is_in_a_committed_table():
    tables = "\n".join(p.read_text() for p in sorted((ROOT / "results").glob("*.md")))
    found = set(NUMBER.findall(tables))
    quoted = NUMBER.findall(headline())
    assert len(quoted) > 20  # the headline does quote figures
    missing = [n for n in quoted if n.rstrip(",") not in found]
    assert not missing, f"README headline numbers in no results/*.md: {missing}"
