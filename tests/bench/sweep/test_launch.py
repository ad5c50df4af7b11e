"""Where a spec runs (bench.sweep.launch): a prediction alone on the CPU in the sweep's own
process, bounded by --timeout; everything else in a fresh one."""

from __future__ import annotations

import pytest

from bench import memory as memory_command
from bench.spec import BenchSpec
from bench.sweep import launch
from bench.sweep.worker import FAULT_ENV
from bench.tables.results import read_rows

ARGS = ["--preset", "tiny", "--image-size", "16", "--device", "cpu", "--accum", "1"]


@pytest.mark.parametrize(
    "changes, here",
    [
        ({"predict_only": True}, True),
        ({}, False),  # a measured spec: clean peaks, a crash contained
        ({"predict_only": True, "device": "cuda:0"}, False),  # the context is measured there
        ({"predict_only": True, "impl": "my_models.unet:build"}, False),  # a user's code
    ],
)
def test_only_a_prediction_of_our_code_on_the_cpu_runs_here(changes, here):
    spec = BenchSpec(preset="tiny", image_size=16, device="cpu").replace(**changes)
    assert launch.predicts_here(spec) is here


def test_a_prediction_alone_starts_no_process(tmp_path, monkeypatch):
    popen = launch.subprocess.Popen

    def no_worker(args, *rest, **kwargs):
        # Other commands (platform's `uname -p` for the environment line) may run.
        assert "bench.sweep.worker" not in args, "a worker was started"
        return popen(args, *rest, **kwargs)

    monkeypatch.setattr(launch.subprocess, "Popen", no_worker)
    memory_command.main([*ARGS, "--batch", "2", "--predict-only", "--out", str(tmp_path)])
    (row,) = read_rows(tmp_path / "memory.csv")
    assert row["status"] == "ok" and row["fits"] is True


def test_a_hang_here_ends_at_the_timeout_and_the_rest_runs_apart(tmp_path, monkeypatch):
    """The first spec hangs in the sweep's process: SIGALRM ends it at --timeout as a timeout
    row, and the next spec, the process's state no longer trusted, runs in a worker."""
    monkeypatch.setenv(FAULT_ENV, "hang:-b2x1-")
    monkeypatch.setattr(launch, "_interrupted", False)
    started = []
    popen = launch.subprocess.Popen
    monkeypatch.setattr(
        launch.subprocess, "Popen", lambda *a, **k: started.append(a) or popen(*a, **k)
    )
    memory_command.main(
        [*ARGS, "--batch", "2,3", "--predict-only", "--timeout", "3", "--out", str(tmp_path)]
    )
    first, second = read_rows(tmp_path / "memory.csv")
    assert (first["status"], first["error"]) == ("timeout", "no result after 3 s")
    assert second["status"] in ("ok", "timeout")  # a busy CPU may need more than 3 s
    workers = [args for (args, *_) in started if "bench.sweep.worker" in args]
    assert len(workers) == 1
