"""The pytest-benchmark suite: an automatic save and a named one both save JSON that
`pytest-benchmark compare` reads, with our machine info and extra_info inside."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SMALL = ["--bench-batch", "2", "--bench-precision", "fp32", "--bench-rounds", "1", "-q",
         "-p", "no:cacheprovider"]


def run_suite(storage: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "bench", *SMALL,
                           f"--benchmark-storage=file://{storage}", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_automatic_and_named_saves_are_read_by_compare(tmp_path):
    bare = run_suite(tmp_path, "--benchmark-autosave")
    assert bare.returncode == 0, bare.stdout[-3000:] + bare.stderr[-2000:]
    named = run_suite(tmp_path, "--benchmark-save=base")
    assert named.returncode == 0, named.stdout[-3000:] + named.stderr[-2000:]

    saved = sorted(tmp_path.rglob("*.json"))
    assert len(saved) == 2
    assert saved[0].name.startswith("0001_") and saved[0].stem != "0001_"  # automatic name
    assert saved[1].name == "0002_base.json"
    for path in saved:
        data = json.loads(path.read_text())
        benches = {b["name"].split("[")[0]: b for b in data["benchmarks"]}
        assert set(benches) == {"test_train_step", "test_ddim_step"}
        assert all(b["extra_info"]["images_per_step"] == 2 for b in benches.values())
        assert 0 < benches["test_train_step"]["extra_info"]["mfu"] < 1
        assert benches["test_ddim_step"]["extra_info"]["images_per_s_full_run"] > 0
        info = data["machine_info"]["ddpm_bench"]
        assert info["torch"] and info["cpu"] and "cudnn" in info and "driver" in info

    # The console script users type, from the same environment as this interpreter.
    cli = str(Path(sys.executable).parent / "pytest-benchmark")
    compare = subprocess.run([cli, "--storage",
                              f"file://{tmp_path}", "compare", "0001", "0002"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert compare.returncode == 0, compare.stderr[-2000:]
    assert compare.stdout.count("test_train_step") >= 2  # one line per saved run
    assert compare.stdout.count("test_ddim_step") >= 2


def test_disabled_suite_runs_each_benchmark_once(tmp_path):
    run = run_suite(tmp_path, "--benchmark-disable")
    assert run.returncode == 0, run.stdout[-3000:]
    assert "2 passed" in run.stdout
    assert not list(tmp_path.rglob("*.json"))  # nothing saved without --benchmark-save
