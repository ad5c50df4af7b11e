"""Specs with more than one rank, as a user runs them: `python -m bench.throughput --ranks 2
--parallel ddp` starts each spec's ranks under torchrun (gloo on this CPU), one row per spec; a
rank that fails, is killed or hangs in a collective ends as that spec's row naming the rank, and
no process of the sweep survives it. Bad combinations are one line with exit status 2."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest
import torch
import torch.distributed as dist

from bench.measure.training import timed_training
from bench.spec import BenchSpec, SpecError
from bench.sweep.cli import check_launch
from bench.sweep.launch import Launch
from bench.sweep.worker import FAULT_ENV, FAULT_RANK_ENV
from bench.tables.results import read_rows
from ddpm.train import Trainer
from tests.helpers.cli_checks import check_one_line_error

ENV = {k: v for k, v in os.environ.items() if k not in (FAULT_ENV, FAULT_RANK_ENV)} | {
    "OMP_NUM_THREADS": "1"}
BASE = ["--preset", "tiny", "--device", "cpu", "--precision", "fp32", "--warmup", "0", "--steps",
        "1"]


def sweep(tmp_path: Path, *args, fault: str | None = None, rank: int | None = None,
          timeout: float = 300) -> tuple[subprocess.CompletedProcess, str]:
    """The sweep, marked so that every process it starts can be found afterwards."""
    mark = uuid.uuid4().hex
    env = ENV | {"DDPM_TEST_MARK": mark}
    if fault:
        env |= {FAULT_ENV: fault}
    if rank is not None:
        env |= {FAULT_RANK_ENV: str(rank)}
    done = subprocess.run([sys.executable, "-m", "bench.throughput", *BASE, *map(str, args),
                           "--out", str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=timeout)
    return done, mark


def survivors(mark: str) -> list[int]:
    """Processes still carrying the sweep's mark in their environment."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("DDPM_TEST_MARK") == mark:
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def rows(tmp_path: Path) -> list[dict]:
    return read_rows(tmp_path / "throughput.csv")


def test_two_ranks_make_one_row_with_the_global_batch(tmp_path):
    done, mark = sweep(tmp_path, "--batch", "2", "--accum", "2", "--ranks", "1,2",
                       "--parallel", "ddp,fsdp")
    assert done.returncode == 0, done.stderr[-2000:]
    got = rows(tmp_path)
    assert [(r["ranks"], r["parallel"], r["status"]) for r in got] == [
        (1, "ddp", "ok"), (1, "fsdp", "ok"), (2, "ddp", "ok"), (2, "fsdp", "ok")]
    # effective_batch: the images of one optimizer step over all ranks.
    assert [r["effective_batch"] for r in got] == [4, 4, 8, 8]
    assert all(r["step_s"] > 0 for r in got)
    # Images per second count every rank's images: the global batch over rank 0's step time.
    assert all(r["img_per_s"] == pytest.approx(r["effective_batch"] / r["step_s"], rel=1e-6)
               for r in got)
    assert survivors(mark) == []


@pytest.mark.parametrize("fault, status, says", [
    ("error", "error", "rank 1: RuntimeError: fault injected"),
    ("oom", "oom", "rank 1: fault injected"),
    ("kill", "error", "rank 1 ended without a result (killed by signal 9)"),
])
def test_a_failing_rank_is_the_row_and_takes_the_other_rank_along(tmp_path, fault, status,
                                                                   says):
    done, mark = sweep(tmp_path, "--ranks", "2", "--parallel", "ddp", fault=f"{fault}:tiny",
                       rank=1)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = rows(tmp_path)
    assert row["status"] == status and says in row["error"], row["error"]
    assert survivors(mark) == []


def test_a_hung_collective_ends_at_the_timeout_with_no_process_left(tmp_path):
    # Rank 1 never reaches the first gradient exchange; rank 0 waits in it.
    done, mark = sweep(tmp_path, "--ranks", "2", "--parallel", "ddp", "--timeout", "30",
                       fault="hang:tiny", rank=1)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = rows(tmp_path)
    assert row["status"] == "timeout" and "30 s" in row["error"]
    assert survivors(mark) == []


@pytest.mark.parametrize("args, says", [
    (["--ranks", "2"], "--ranks 2 needs --parallel ddp or fsdp"),
    (["--grad-sync", "every"], "--grad-sync every needs --parallel ddp or fsdp"),
    (["--ranks", "0", "--parallel", "ddp"], "--ranks 0 is not allowed"),
    (["--ranks", "2", "--parallel", "zero"], "--parallel 'zero' is not allowed"),
    (["--ranks", "2", "--parallel", "ddp", "--inline"], "--inline runs specs in this one"),
    (["--ranks", "3", "--parallel", "ddp", "--nnodes", "2", "--rdzv-endpoint", "h:1"],
     "--ranks 3 does not split evenly over --nnodes 2"),
    (["--ranks", "2", "--parallel", "ddp", "--nnodes", "2"], "--rdzv-endpoint host:port"),
])
def test_bad_rank_options_are_one_line(tmp_path, args, says):
    done, _ = sweep(tmp_path, *args)
    check_one_line_error(says, done.returncode, done.stderr, done.stdout)
    assert not (tmp_path / "throughput.csv").exists()


def test_more_ranks_than_cards_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    specs = [BenchSpec(device="cuda:0", ranks=4, parallel="fsdp")]
    args = type("Args", (), {"inline": False, "nnodes": 1})()
    with pytest.raises(SpecError, match="4 ranks on this machine, but it has 2 CUDA card"):
        check_launch(specs, args)
    check_launch([BenchSpec(device="cuda:0", ranks=2, parallel="fsdp")], args)  # two fit


@pytest.fixture
def fake_group_of_two():
    """This process as rank 1 of 2 in a fake group, whose collectives do nothing."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=1, world_size=2)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_a_warm_up_step_takes_one_micro_batch_of_every_rank(fake_group_of_two, monkeypatch):
    # A rank's trainer takes the images of all ranks and trains its own share: a warm-up step
    # (one micro-batch) takes ranks x batch images, a measured step ranks x batch x accum.
    seen = []
    step = Trainer.step
    monkeypatch.setattr(Trainer, "step", lambda self, x0: (seen.append(len(x0)), step(self, x0))[1])
    spec = BenchSpec(preset="tiny", image_size=16, attention="8", batch=2, accum=3, ranks=2,
                     parallel="fsdp", warmup_steps=1, measure_steps=1)
    timed_training(spec, torch.device("cpu"))
    assert seen == [2 * 2, 2 * 2 * 3]


def test_loss_curves_across_fsdp_ranks_equal_one_rank(tmp_path):
    """The held-out loss between steps leaves FSDP2's gathered weights usable by the next
    step, and 2 ranks x batch 2 train the same curve as 1 rank with accumulation 2."""
    mark = uuid.uuid4().hex
    done = subprocess.run(
        [sys.executable, "-m", "bench.loss", "--ranks", "1,2", "--parallel", "fsdp", "--batch",
         "2", "--effective-batch", "4", "--precision", "fp32", "--steps", "4", "--val-every",
         "2", "--val-images", "16", "--out", str(tmp_path)],
        env=ENV | {"DDPM_TEST_MARK": mark}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = read_rows(tmp_path / "loss.csv")
    assert [(r["ranks"], r["accum"], r["status"]) for r in got] == [(1, 2, "ok"), (2, 1, "ok")]
    one, two = (read_rows_of(Path(r["curve_path"])) for r in got)
    assert [row["loss"] for row in two] == pytest.approx([row["loss"] for row in one], rel=1e-5)
    assert survivors(mark) == []


def read_rows_of(curve: Path) -> list[dict]:
    with curve.open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]


@pytest.mark.parametrize("launch, ranks, expected", [
    (Launch(), 2, {"standalone": True, "nnodes": "1:1", "nproc_per_node": "2"}),
    (Launch(nnodes=2, rdzv_endpoint="node0:29500"), 8,
     {"standalone": False, "nnodes": "2", "nproc_per_node": "4", "rdzv_endpoint": "node0:29500",
      "rdzv_backend": "c10d"}),
])
def test_torchrun_reads_the_launch_as_meant(launch, ranks, expected):
    """The arguments as torchrun's own parser reads them: all ranks here, or spread evenly."""
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args([*launch.torchrun_args(ranks), "worker.py"])
    assert {k: getattr(args, k) for k in expected} == expected


def test_the_pytest_suite_runs_across_ranks(tmp_path):
    """torchrun -m pytest bench --bench-parallel ddp: each rank joins the group and runs the
    benchmarks as one model over 2 ranks."""
    mark = uuid.uuid4().hex
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "pytest", "bench/suite/test_train_step.py", "--bench-parallel", "ddp",
         "--benchmark-disable", "--bench-batch", "2", "--bench-precision", "fp32", "-q",
         "-p", "no:cacheprovider"],
        env=ENV | {"DDPM_TEST_MARK": mark}, capture_output=True, text=True, timeout=300,
        cwd=Path(__file__).resolve().parents[3])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert done.stdout.count("1 passed") == 2  # each rank ran the benchmark
    assert survivors(mark) == []
