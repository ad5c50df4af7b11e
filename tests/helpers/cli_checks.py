"""Checks the command-line tests share: a bad-input error is one line with exit 2, and a folder
is byte-for-byte unchanged afterwards; and a command's main(argv) run in this process, as its
`python -m` runs it, for bad-input cases beyond the one each test file runs as a real process
(a process imports torch, seconds each on a small CPU)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


def snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def check_one_line_error(says: str, status, stderr: str, stdout: str) -> None:
    lines = stderr.strip().splitlines()
    assert status == 2, stderr
    assert "Traceback" not in stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert says in lines[0]
    assert stdout == ""


def exit_of(main: Callable[[list[str]], object], argv: list[str], capsys) -> tuple[int, str, str]:
    """`main(argv)` where it must stop on its own (SystemExit, as `python -m` would exit): its
    status, stderr and stdout. Any other exception escapes and fails the test, as a traceback
    from the real process would."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    return info.value.code, captured.err, captured.out
