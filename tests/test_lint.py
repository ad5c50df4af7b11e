"""The lint env's checks run with the tests, so a bare `pytest` holds the code to them: ruff's
rules with the complexity cap (pyproject.toml), and ruff's format."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUFF = shutil.which("ruff")


@pytest.mark.skipif(RUFF is None, reason="ruff is in the test extra: pip install -e '.[test]'")
@pytest.mark.parametrize("check", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_passes(check):
    result = subprocess.run(
        [RUFF, *check, "ddpm", "bench", "tests"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
