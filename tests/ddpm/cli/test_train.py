"""`python -m ddpm.cli.train` as a user runs it: a subprocess, its files, its exit status and
stderr."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image

from ddpm.checkpoint import load_checkpoint
from tests.helpers.cli_checks import check_one_line_error, snapshot

# Tiny and short: a whole run, final grid included, takes about a second after imports.
# 4 samples make a 2x2 grid of 16x16 images with torchvision's 2-pixel padding: 38x38.
FAST = [
    "--preset",
    "tiny",
    "--dataset",
    "digits",
    "--steps",
    "6",
    "--batch",
    "8",
    "--samples",
    "4",
    "--sample-steps",
    "3",
    "--checkpoint-every",
    "3",
    "--log-every",
    "2",
    "--val-every",
    "3",
    "--timesteps",
    "20",
    "--device",
    "cpu",
]
GRID_SIZE = (38, 38)
SCALARS = {
    "train/loss",
    "val/loss",
    "train/grad_norm",
    "train/lr",
    "train/images_per_s",
    "train/skipped_steps",
}
# Many subprocesses share a small CPU (and other jobs): one thread each, or OpenMP threads
# spin against each other and a one-second run takes a minute.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def train(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    # cwd is a temporary folder, so a default path (data/, runs/demo) never lands in the repo.
    return subprocess.run(
        [sys.executable, "-m", "ddpm.cli.train", *map(str, args)],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )


def parallel(jobs: dict) -> dict:
    """Run {name: zero-argument callable} side by side: each subprocess spends most of its time
    importing torch, which overlaps well."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """A 6-step run and an uninterrupted 9-step run side by side, then a copy of the first
    resumed to 9 steps, to compare with the uninterrupted one."""
    root = tmp_path_factory.mktemp("train_cli")
    done = parallel(
        {
            "run": lambda: train(*FAST, "--out", root / "run", cwd=root),
            "straight": lambda: train(*FAST, "--steps", "9", "--out", root / "straight", cwd=root),
        }
    )
    assert done["run"].returncode == 0, done["run"].stderr
    shutil.copytree(root / "run", root / "resumed")
    done["resumed"] = train(*FAST, "--steps", "9", "--resume", "--out", root / "resumed", cwd=root)
    return {"root": root, **done}


def tensorboard_events(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    return events


def scalar_steps(run: Path, tag: str) -> list[int]:
    return [e.step for e in tensorboard_events(run).Scalars(tag)]


def test_run_writes_checkpoint_grid_and_scalars(runs):
    out = runs["root"] / "run"
    assert load_checkpoint(out / "last.pt")["step"] == 6
    with Image.open(out / "samples.png") as grid:
        assert grid.size == GRID_SIZE
    assert SCALARS <= set(tensorboard_events(out).Tags()["scalars"])
    assert scalar_steps(out, "train/loss") == [2, 4, 6]  # every --log-every, and the last
    assert scalar_steps(out, "val/loss") == [3, 6]  # every --val-every, and the last
    # The one-line summary on stdout: steps, both losses, where things are.
    summary = runs["run"].stdout.strip().splitlines()
    assert len(summary) == 1 and "6 steps" in summary[0] and "val loss" in summary[0]
    assert str(out / "last.pt") in summary[0]
    assert not list(out.glob(".*")), "no temporary files left behind"


def test_resume_continues_bit_for_bit(runs):
    resumed, straight = runs["resumed"], runs["straight"]
    assert resumed.returncode == 0, resumed.stderr
    assert straight.returncode == 0, straight.stderr
    a = load_checkpoint(runs["root"] / "resumed" / "last.pt")
    b = load_checkpoint(runs["root"] / "straight" / "last.pt")
    assert a["step"] == b["step"] == 9
    # 6 steps, stop, resume to 9 == 9 steps straight: same weights and EMA, bit for bit.
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]["params"]:
        assert torch.equal(a["ema"]["params"][key], b["ema"]["params"][key]), key
    assert "3 in this run" in resumed.stdout
    # One TensorBoard history: the first run's events up to its checkpoint, then the new ones.
    assert scalar_steps(runs["root"] / "resumed", "train/loss") == [2, 4, 6, 8, 9]


def test_resume_removes_the_temporaries_of_a_save_killed_outright(runs, tmp_path):
    """kill -9 during a save leaves .last.pt.<random>.tmp (no handler runs); the next start
    removes those, says so, and leaves every other file."""
    out = tmp_path / "run"
    shutil.copytree(runs["root"] / "run", out)
    stale = [".last.pt.k2x_9q7a.tmp", ".last.pt.0abcdefg.tmp"]
    others = [".last.pt.tmp", ".samples.png.k2x_9q7a.tmp", "notes.tmp"]
    for name in stale + others:
        (out / name).write_bytes(b"PK\x03\x04 half a zip")
    resumed = train(*FAST, "--steps", "7", "--resume", "--out", out, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(out / "last.pt")["step"] == 7
    assert not any((out / name).exists() for name in stale)
    assert all((out / name).exists() for name in others)
    said = [line for line in resumed.stderr.splitlines() if line.startswith("removed ")]
    assert said == [
        f"removed 2 temporary file(s) an interrupted save of {out / 'last.pt'} left: "
        f"{stale[1]}, {stale[0]}"
    ]


# -- bad input: one line, exit 2, no traceback, nothing written ------------------------------------

BAD = {
    # name: (extra arguments, text the error line must contain); {tmp} is a fresh folder.
    "batch 0": (["--batch", "0"], "0"),
    "accum -1": (["--accum", "-1"], "-1"),
    "steps 0": (["--steps", "0"], "0"),
    "lr negative": (["--lr", "-0.5"], "-0.5"),
    "lr zero": (["--lr", "0"], "--lr"),
    "preset": (["--preset", "huge"], "huge"),
    "precision": (["--precision", "fp8"], "fp8"),
    "dataset": (["--dataset", "imagenet"], "imagenet"),
    "ddim steps over T": (["--sample-steps", "50"], "50"),
    "image size": (["--image-size", "12"], "12"),
    "ema decay": (["--ema-decay", "1.5"], "1.5"),
    "device name": (["--device", "tpu"], "tpu"),
    "missing folder": (
        ["--dataset", "folder", "--data-root", "{tmp}/no-such-folder"],
        "no-such-folder",
    ),
    "missing mnist": (["--dataset", "mnist", "--data-root", "{tmp}/empty"], "MNIST"),
    "out under a file": (["--out", "{tmp}/afile/out"], "afile"),
    "resume without checkpoint": (["--resume"], "last.pt"),
    "resume corrupt": (["--resume", "--out", "{tmp}/corrupt"], "corrupt"),
    "resume past steps": (["--resume", "--steps", "6", "--out", "{tmp}/done"], "6"),
    "fresh over a run": (["--out", "{tmp}/done"], "--resume"),
    "resume on another dataset": (
        ["--resume", "--steps", "9", "--out", "{tmp}/done", "--dataset", "synthetic"],
        "digits (1,797 images)",
    ),
    "batch beyond memory": (["--batch", "1000000000000"], "1000000000000"),
    "resume step not a number": (
        ["--resume", "--steps", "9", "--out", "{tmp}/badstep"],
        "step 'many'",
    ),
}
if not torch.cuda.is_available():
    BAD["cuda without GPU"] = (["--device", "cuda"], "cuda")


@pytest.fixture
def bad_folder(tmp_path, runs) -> Path:
    """What the BAD cases point at: an empty folder, a file, a corrupt and a finished run."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("a file, not a folder")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "last.pt").write_bytes(b"not a checkpoint")
    shutil.copytree(runs["root"] / "run", tmp_path / "done")  # a finished 6-step run
    (tmp_path / "badstep").mkdir()
    state = load_checkpoint(tmp_path / "done" / "last.pt")
    torch.save({**state, "step": "many"}, tmp_path / "badstep" / "last.pt")
    return tmp_path


def bad_args(name: str, tmp: Path) -> list[str]:
    return [
        *map(str, FAST),
        "--out",
        str(tmp / "out"),
        *(a.replace("{tmp}", str(tmp)) for a in BAD[name][0]),
    ]


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_one_line_exit_2_nothing_written(bad_folder, name, capsys, monkeypatch):
    # In-process, so twenty cases cost milliseconds rather than a torch import each; any
    # exception other than SystemExit(2) would fail the test, so "no traceback" holds here too.
    from ddpm.cli.train import main

    monkeypatch.chdir(bad_folder)
    before = snapshot(bad_folder)
    with torch.random.fork_rng(devices=[]), pytest.raises(SystemExit) as exit_info:
        main(bad_args(name, bad_folder))
    captured = capsys.readouterr()
    check_one_line_error(BAD[name][1], exit_info.value.code, captured.err, captured.out)
    assert snapshot(bad_folder) == before, "nothing may be written, or changed, on bad input"


# One of each kind end to end, as a user meets it: from argparse, a dataset, a checkpoint.
AS_SUBPROCESS = ["batch 0", "missing folder", "resume corrupt"]


def test_bad_input_as_subprocess(bad_folder):
    before = snapshot(bad_folder)
    results = parallel(
        {
            name: lambda name=name: train(*bad_args(name, bad_folder), cwd=bad_folder)
            for name in AS_SUBPROCESS
        }
    )
    for name, result in results.items():
        check_one_line_error(BAD[name][1], result.returncode, result.stderr, result.stdout)
    assert snapshot(bad_folder) == before


# -- interruption: one line, the shell's status for the signal, nothing half-written --------------


def test_sigterm_stops_training_with_143_and_no_temporary_files(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ddpm.cli.train",
            *FAST,
            "--steps",
            "100000",
            "--checkpoint-every",
            "1",
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Signalled while a checkpoint is being written, if the poll catches one in the act;
        # else once checkpoints are being written at all.
        deadline = None
        while not list(out.glob(".last.pt.*.tmp")):
            assert proc.poll() is None, proc.communicate()[1]
            if deadline is None and (out / "last.pt").exists():
                deadline = time.monotonic() + 30
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(0.001)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted (SIGTERM) at step "), last
    assert not list(out.glob(".*")), "no temporary files left behind"
    if (out / "last.pt").exists():  # the save in progress was the first one: none, else whole
        assert "--resume" in last
        assert load_checkpoint(out / "last.pt")["step"] >= 1
    else:
        assert "no checkpoint was written yet" in last


# -- a closed pipe: every file written, no traceback, 141 -----------------------------------------


def test_a_closed_stdout_and_stderr_cost_no_file(tmp_path):
    """`python -m ddpm.cli.train ... 2>&1 | head -0`: the progress and the summary nobody reads
    end in os.devnull; the checkpoint, the log and the grid are written, exit status 141."""
    out = tmp_path / "run"
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ddpm.cli.train", *FAST, "--out", str(out)],
            cwd=tmp_path,
            env=ENV,
            stdout=write,
            stderr=write,
        )
    finally:
        os.close(write)
    assert proc.wait(timeout=600) == 141
    assert load_checkpoint(out / "last.pt")["step"] == 6
    assert list((out / "tb").glob("events.out.tfevents.*"))
    with Image.open(out / "samples.png") as image:
        assert image.size == GRID_SIZE
