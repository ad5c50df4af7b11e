"""Specs with more than one rank, as a user runs them: `python -m bench.throughput --ranks 2
--parallel ddp` starts each spec's ranks under torchrun (gloo on this CPU), one row per spec; a
rank that fails, is killed or hangs in a collective ends as that spec's row naming the rank, and
no process of the sweep survives it. Bad combinations are one line with exit status 2."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import torch
import torch.distributed as dist

from bench.parsers import SpecError
from bench.passes.training import timed_training
from bench.predict.cache import CACHE_ENV
from bench.predict.trace import HANG_ENV
from bench.spec import BenchSpec
from bench.sweep.cli import check_launch
from bench.sweep.launch import Launch, combine_ranks
from bench.sweep.worker import FAULT_ENV, FAULT_RANK_ENV, rank_result
from bench.tables.results import read_rows
from ddpm.train import Trainer
from tests.helpers.cli_checks import check_one_line_error

ENV = {k: v for k, v in os.environ.items() if k not in (FAULT_ENV, FAULT_RANK_ENV)} | {
    "OMP_NUM_THREADS": "1"
}
BASE = [
    "--preset",
    "tiny",
    "--device",
    "cpu",
    "--precision",
    "fp32",
    "--warmup",
    "0",
    "--steps",
    "1",
]


def sweep(
    tmp_path: Path, *args, fault: str | None = None, rank: int | None = None, timeout: float = 300
) -> tuple[subprocess.CompletedProcess, str]:
    """The sweep, marked so that every process it starts can be found afterwards."""
    mark = uuid.uuid4().hex
    env = ENV | {"DDPM_TEST_MARK": mark}
    if fault:
        env |= {FAULT_ENV: fault}
    if rank is not None:
        env |= {FAULT_RANK_ENV: str(rank)}
    done = subprocess.run(
        [sys.executable, "-m", "bench.throughput", *BASE, *map(str, args), "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
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
    done, mark = sweep(
        tmp_path, "--batch", "2", "--accum", "2", "--ranks", "1,2", "--parallel", "ddp,fsdp"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = rows(tmp_path)
    assert [(r["ranks"], r["parallel"], r["status"]) for r in got] == [
        (1, "ddp", "ok"),
        (1, "fsdp", "ok"),
        (2, "ddp", "ok"),
        (2, "fsdp", "ok"),
    ]
    # effective_batch: the images of one optimizer step over all ranks.
    assert [r["effective_batch"] for r in got] == [4, 4, 8, 8]
    assert all(r["step_s"] > 0 for r in got)
    # Images per second count every rank's images: the global batch over rank 0's step time.
    assert all(
        r["img_per_s"] == pytest.approx(r["effective_batch"] / r["step_s"], rel=1e-6) for r in got
    )
    assert survivors(mark) == []


@pytest.mark.parametrize(
    "fault, status, says",
    [
        ("error", "error", "rank 1: RuntimeError: fault injected"),
        ("oom", "oom", "rank 1: fault injected"),
        ("kill", "error", "rank 1 ended without a result (killed by signal 9)"),
    ],
)
def test_a_failing_rank_is_the_row_and_takes_the_other_rank_along(tmp_path, fault, status, says):
    done, mark = sweep(tmp_path, "--ranks", "2", "--parallel", "ddp", fault=f"{fault}:tiny", rank=1)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = rows(tmp_path)
    assert row["status"] == status and says in row["error"], row["error"]
    assert survivors(mark) == []


def test_a_rank_killed_first_is_blamed_not_the_peer_it_left(tmp_path):
    # Rank 1 then fails in its collective ("Connection closed by peer"): a consequence.
    done, mark = sweep(tmp_path, "--ranks", "2", "--parallel", "ddp", fault="kill:tiny", rank=0)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = rows(tmp_path)
    assert row["status"] == "error", row
    assert row["error"] == "rank 0 ended without a result (killed by signal 9)", row["error"]
    assert survivors(mark) == []


TORCHRUN_ROOT_CAUSE = """Root Cause (first observed failure):
[0]:
  time      : 2026-12-02_23:00:00
  host      : here
  rank      : 0 (local_rank: 0)
  exitcode  : -9 (pid: 1)
"""


def test_a_lost_peer_is_a_consequence_and_torchruns_root_cause_is_named(tmp_path):
    result = tmp_path / "result.json"
    lost = {
        "status": "error",
        "figures": {},
        "error": "RuntimeError: [gloo] Connection closed by peer [127.0.0.1]:1234",
    }
    Path(rank_result(str(result), 1)).write_text(json.dumps(lost))
    got = combine_ranks(str(result), 2, 1, TORCHRUN_ROOT_CAUSE)
    assert got["error"] == "rank 0 ended without a result (killed by signal 9)"
    # Both results there, rank 0's only a lost peer too: still torchrun's root cause.
    Path(rank_result(str(result), 0)).write_text(json.dumps(lost))
    assert combine_ranks(str(result), 2, 1, TORCHRUN_ROOT_CAUSE)["error"].startswith("rank 0 ")
    # A rank's own failure, not a lost peer, is the row, whatever torchrun names.
    own = {"status": "oom", "figures": {}, "error": "CUDA out of memory"}
    Path(rank_result(str(result), 1)).write_text(json.dumps(own))
    assert combine_ranks(str(result), 2, 1, TORCHRUN_ROOT_CAUSE) == {
        **own,
        "error": "rank 1: CUDA out of memory",
    }


def test_on_the_second_node_ranks_are_named_by_their_global_rank(tmp_path):
    """Node 1 of 2 with 2 ranks each: its result files are by local rank 0 and 1, which are
    global ranks 1 * 2 + 0 = 2 and 3, the ranks torchrun's report and the row name."""
    result = tmp_path / "result.json"

    def write(local_rank: int, global_rank: int, **fields) -> None:
        Path(rank_result(str(result), local_rank)).write_text(
            json.dumps({"figures": {}, "error": None, **fields, "rank": global_rank})
        )

    def cause(rank: int, exit_code: int) -> str:
        report = TORCHRUN_ROOT_CAUSE.replace("rank      : 0 (", f"rank      : {rank} (")
        return report.replace("exitcode  : -9", f"exitcode  : {exit_code}")

    lost = "RuntimeError: [gloo] Connection closed by peer [127.0.0.1]:1234"
    # Global rank 3 (local 1) fails on its own and torchrun names it: its own error is the row.
    write(0, 2, status="error", error=lost)
    write(1, 3, status="error", error="RuntimeError: fault injected")
    assert combine_ranks(str(result), 2, 1, cause(3, 1)) == {
        "status": "error",
        "figures": {},
        "error": "rank 3: RuntimeError: fault injected",
    }
    # Global rank 2 (local 0) is killed before writing: torchrun's root cause, by global rank.
    os.remove(rank_result(str(result), 0))
    write(1, 3, status="error", error=lost)
    assert combine_ranks(str(result), 2, 1, cause(2, -9))["error"] == (
        "rank 2 ended without a result (killed by signal 9)"
    )
    # Both ok: the node's first rank's figures, each memory figure the largest of its ranks.
    write(0, 2, status="ok", figures={"step_s": 1.0, "peak_mib": 5.0})
    write(1, 3, status="ok", figures={"step_s": 2.0, "peak_mib": 7.0})
    assert combine_ranks(str(result), 2, 0, "") == {
        "status": "ok",
        "error": None,
        "figures": {"step_s": 1.0, "peak_mib": 7.0},
    }


def prediction_child(mark: str) -> psutil.Process | None:
    """Rank 0's spawned prediction process, once it runs."""
    for pid in survivors(mark):
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if "spawn_main" in " ".join(proc.cmdline()):  # not the resource tracker
                return proc
    return None


@pytest.mark.parametrize("stop", ["sigterm-sweep", "kill-rank-0"])
def test_no_process_outlives_a_sweep_stopped_while_rank_0_predicts(tmp_path, stop):
    mark = uuid.uuid4().hex
    sweep_proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.memory",
            *BASE,
            "--image-size",
            "16",
            "--ranks",
            "2",
            "--parallel",
            "ddp",
            "--out",
            str(tmp_path),
        ],
        env=ENV | {"DDPM_TEST_MARK": mark},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        child = None
        for _ in range(600):
            child = prediction_child(mark)
            if child is not None or sweep_proc.poll() is not None:
                break
            time.sleep(0.2)
        assert child is not None, "rank 0 never started its prediction process"
        if stop == "sigterm-sweep":
            sweep_proc.send_signal(signal.SIGTERM)
        else:
            os.kill(child.ppid(), signal.SIGKILL)  # rank 0, the prediction's parent
        sweep_proc.wait(timeout=120)
        for _ in range(50):  # the watchers notice within a second
            if not survivors(mark):
                break
            time.sleep(0.2)
        assert survivors(mark) == []
    finally:
        sweep_proc.kill()
        sweep_proc.wait()


def test_no_process_outlives_a_timeout_while_rank_0_predicts(tmp_path):
    """Rank 0's prediction child hangs (HANG_ENV), so the spec ends at --timeout: the sweep
    kills torchrun's process group, which holds neither the ranks (each in a session of its
    own) nor the child; they end with their parents."""
    mark = uuid.uuid4().hex
    sweep_proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.memory",
            *BASE,
            "--image-size",
            "16",
            "--ranks",
            "2",
            "--parallel",
            "ddp",
            "--timeout",
            "60",
            "--out",
            str(tmp_path),
        ],
        # No trace cache: the trace must run, in the child that hangs.
        env=ENV | {"DDPM_TEST_MARK": mark, HANG_ENV: "1", CACHE_ENV: "off"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        child = None
        for _ in range(300):
            child = prediction_child(mark)
            if child is not None or sweep_proc.poll() is not None:
                break
            time.sleep(0.2)
        assert child is not None, "rank 0 never started its prediction process"
        _, err = sweep_proc.communicate(timeout=180)
        assert sweep_proc.returncode == 0, err[-2000:]
        (row,) = read_rows(tmp_path / "memory.csv")
        assert row["status"] == "timeout" and "60 s" in row["error"], row
        for _ in range(50):  # the watchers notice within a second
            if not survivors(mark):
                break
            time.sleep(0.2)
        assert survivors(mark) == []
    finally:
        sweep_proc.kill()
        sweep_proc.wait()


def test_two_nodes_on_this_machine_run_a_rank_sweep(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    marks, nodes = [], []
    for node in range(2):
        mark = uuid.uuid4().hex
        marks.append(mark)
        nodes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.throughput",
                    *BASE,
                    "--image-size",
                    "16",
                    "--ranks",
                    "2",
                    "--parallel",
                    "ddp",
                    "--nnodes",
                    "2",
                    "--rdzv-endpoint",
                    f"127.0.0.1:{port}",
                    "--out",
                    str(tmp_path / f"node{node}"),
                ],
                env=ENV | {"DDPM_TEST_MARK": mark},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outs = [n.communicate(timeout=300)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outs
    # Each node writes its row: the same spec, ok, across the 2 ranks of both nodes.
    got = [read_rows(tmp_path / f"node{node}" / "throughput.csv") for node in range(2)]
    assert [[(r["ranks"], r["parallel"], r["status"]) for r in g] for g in got] == [
        [(2, "ddp", "ok")],
        [(2, "ddp", "ok")],
    ]
    assert all(survivors(m) == [] for m in marks)


def test_a_hung_collective_ends_at_the_timeout_with_no_process_left(tmp_path):
    # Rank 1 never reaches the first gradient exchange; rank 0 waits in it.
    done, mark = sweep(
        tmp_path, "--ranks", "2", "--parallel", "ddp", "--timeout", "30", fault="hang:tiny", rank=1
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = rows(tmp_path)
    assert row["status"] == "timeout" and "30 s" in row["error"]
    assert survivors(mark) == []


@pytest.mark.parametrize(
    "args, says",
    [
        (["--ranks", "2"], "--ranks 2 needs --parallel ddp or fsdp"),
        (["--grad-sync", "every"], "--grad-sync every needs --parallel ddp or fsdp"),
        (["--ranks", "0", "--parallel", "ddp"], "--ranks 0 is not allowed"),
        (["--ranks", "2", "--parallel", "zero"], "--parallel 'zero' is not allowed"),
        (["--ranks", "2", "--parallel", "ddp", "--inline"], "--inline runs specs in this one"),
        (
            ["--ranks", "3", "--parallel", "ddp", "--nnodes", "2", "--rdzv-endpoint", "h:1"],
            "--ranks 3 does not split evenly over --nnodes 2",
        ),
        (["--ranks", "2", "--parallel", "ddp", "--nnodes", "2"], "--rdzv-endpoint host:port"),
        # One rank cannot span two nodes, with --parallel none or not.
        (
            [
                "--ranks",
                "1",
                "--parallel",
                "none,ddp",
                "--nnodes",
                "2",
                "--rdzv-endpoint",
                "127.0.0.1:29400",
            ],
            "--ranks 1 does not split evenly over --nnodes 2",
        ),
        (
            ["--ranks", "2", "--parallel", "ddp", "--nnodes", "2", "--rdzv-endpoint", "nonsense"],
            "--rdzv-endpoint 'nonsense': give host:port",
        ),
        (
            ["--ranks", "2", "--parallel", "ddp", "--nnodes", "2", "--rdzv-endpoint", "h:99999"],
            "must be an integer between 0 and 65536",
        ),
    ],
)
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
    monkeypatch.setattr(
        Trainer,
        "step",
        lambda self, x0, *a, **k: (seen.append(len(x0)), step(self, x0, *a, **k))[1],
    )
    spec = BenchSpec(
        preset="tiny",
        image_size=16,
        attention="8",
        batch=2,
        accum=3,
        ranks=2,
        parallel="fsdp",
        warmup_steps=1,
        measure_steps=1,
    )
    timed_training(spec, torch.device("cpu"))
    assert seen == [2 * 2, 2 * 2 * 3]


def test_loss_curves_across_fsdp_ranks_equal_one_rank(tmp_path):
    """The held-out loss between steps leaves FSDP2's gathered weights usable by the next
    step, and 2 ranks x batch 2 train the same curve as 1 rank with accumulation 2."""
    mark = uuid.uuid4().hex
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.loss",
            "--ranks",
            "1,2",
            "--parallel",
            "fsdp",
            "--batch",
            "2",
            "--effective-batch",
            "4",
            "--precision",
            "fp32",
            "--steps",
            "4",
            "--val-every",
            "2",
            "--val-images",
            "16",
            "--out",
            str(tmp_path),
        ],
        env=ENV | {"DDPM_TEST_MARK": mark},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = read_rows(tmp_path / "loss.csv")
    assert [(r["ranks"], r["accum"], r["status"]) for r in got] == [(1, 2, "ok"), (2, 1, "ok")]
    one, two = (read_rows_of(Path(r["curve_path"])) for r in got)
    assert [row["loss"] for row in two] == pytest.approx([row["loss"] for row in one], rel=1e-5)
    assert survivors(mark) == []


def read_rows_of(curve: Path) -> list[dict]:
    with curve.open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]


@pytest.mark.parametrize(
    "launch, ranks, expected",
    [
        (Launch(), 2, {"standalone": True, "nnodes": "1:1", "nproc_per_node": "2"}),
        (
            Launch(nnodes=2, rdzv_endpoint="node0:29500"),
            8,
            {
                "standalone": False,
                "nnodes": "2",
                "nproc_per_node": "4",
                "rdzv_endpoint": "node0:29500",
                "rdzv_backend": "c10d",
            },
        ),
    ],
)
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
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "pytest",
            "bench/suite/test_train_step.py",
            "--bench-parallel",
            "ddp",
            "--benchmark-disable",
            "--bench-batch",
            "2",
            "--bench-precision",
            "fp32",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        env=ENV | {"DDPM_TEST_MARK": mark},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert done.stdout.count("1 passed") == 2  # each rank ran the benchmark
    assert survivors(mark) == []
