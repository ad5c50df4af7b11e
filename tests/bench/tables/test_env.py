"""The commit a table records: clean while only the committed tables differ (a sweep appending
to results/ leaves the next command's commit clean), dirty once code differs."""

from __future__ import annotations

import subprocess

from bench.tables.env import git_commit


def git(root, *args):
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def test_only_code_outside_results_makes_the_commit_dirty(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "memory.csv").write_text("a\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    short = subprocess.run(
        ["git", "-C", str(tmp_path), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert git_commit(tmp_path) == short
    (tmp_path / "results" / "memory.csv").write_text("a\nb\n")  # a sweep appended a row
    (tmp_path / "scratch.txt").write_text("untracked\n")  # untracked files never count
    assert git_commit(tmp_path) == short
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == short + "-dirty"


def test_outside_a_git_checkout_there_is_no_commit(tmp_path):
    assert git_commit(tmp_path) is None
