"""Where a user's rows go without --out: a run folder git ignores, never the committed reference
tables in results/; `python -m bench.report` with no --out rebuilds that run folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import gpucheck, report
from bench import memory as memory_command
from bench.tables.results import RUN_FOLDER

ROOT = Path(__file__).resolve().parents[3]
# PYTHONPATH: the subprocess runs this checkout's bench from a temporary working directory.
ENV = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def parsed_out(main_parser) -> str:
    return main_parser().parse_args([]).out


def test_every_command_defaults_to_the_run_folder(monkeypatch):
    seen = {}

    def stop(harness, parser, argv, make_specs=None, options=None):
        seen["out"] = parser.parse_args(argv).out
        return []

    monkeypatch.setattr(memory_command, "run_cli", stop)
    memory_command.main([])
    assert seen["out"] == RUN_FOLDER
    assert parsed_out(report.build_parser) == RUN_FOLDER
    assert parsed_out(gpucheck.build_parser) == RUN_FOLDER
    assert Path(RUN_FOLDER).parts[0] != "results"


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
@pytest.mark.parametrize(
    "name",
    [
        "memory.csv",
        "memory.json",
        "memory.md",
        ".memory.lock",
        "loss/run/spec/curve.csv",
        "plots/memory_vs_batch.png",
        "gpucheck.md",
    ],
)
def test_git_ignores_the_run_folder(name):
    """What the .gitignore of this checkout says of each file a default run writes."""
    path = f"{RUN_FOLDER}/{name}"
    ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT)
    assert ignored.returncode == 0, f"git does not ignore {path}"


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
@pytest.mark.parametrize(
    "name", ["memory.csv", "memory.md", "loss/run/spec/curve.csv", "plots/memory_vs_batch.png"]
)
def test_git_does_not_ignore_the_reference_tables(name):
    """The same question of results/, where `--out results` writes: the answer must differ, or
    the test above would pass for a .gitignore that ignores everything."""
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "--no-index", f"results/{name}"], cwd=ROOT
    )
    assert ignored.returncode == 1


def test_a_run_without_out_writes_the_run_folder_and_report_rebuilds_it(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.memory",
            "--preset",
            "tiny",
            "--image-size",
            "16",
            "--batch",
            "1",
            "--accum",
            "1",
            "--device",
            "cpu",
            "--predict-only",
            "--inline",
        ],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    folder = tmp_path / RUN_FOLDER
    assert sorted(p.name for p in folder.iterdir()) == [
        ".memory.lock",
        "memory.csv",
        "memory.json",
        "memory.md",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]  # no results/ beside it
    assert f"Rows appended to {Path(RUN_FOLDER) / 'memory.csv'}" in run.stdout + run.stderr

    written = (folder / "memory.md").read_bytes()
    (folder / "memory.md").unlink()
    rebuilt = subprocess.run(
        [sys.executable, "-m", "bench.report", "--no-plots"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert rebuilt.stdout.splitlines() == [f"wrote {Path(RUN_FOLDER) / 'memory.md'}"]
    assert (folder / "memory.md").read_bytes() == written
