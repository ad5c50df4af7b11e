"""Checks the command-line tests share: a bad-input error is one line with exit 2, and a folder
is byte-for-byte unchanged afterwards."""

from __future__ import annotations

from pathlib import Path


def snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def check_one_line_error(says: str, status, stderr: str, stdout: str) -> None:
    lines = stderr.strip().splitlines()
    assert status == 2, stderr
    assert "Traceback" not in stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert says in lines[0]
    assert stdout == ""
