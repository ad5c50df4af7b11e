"""What communication costs per step: the throughput harness's collectives on 2 gloo ranks (tiny
UNet, DDP and FSDP2, gradients exchanged after the last micro-batch or after every one) against
counts and bytes derived from the model's parameter shapes and how each wrapper exchanges; the
union of overlapping time ranges in closed form."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from bench.measure.collectives import MIB, busy_ns
from bench.models.workload import parameter_count
from bench.spec import BenchSpec
from bench.tables.results import read_rows
from ddpm.unet import AttentionBlock, ResBlock, UNet

ROOT = Path(__file__).resolve().parents[3]
RANKS, BATCH, ACCUM = 2, 2, 2
FP32 = 4  # bytes
# 4 specs of 2 ranks each, every rank importing torch: ~1 min on a busy 2-core CPU. A hang (a rank
# waiting forever in a collective) fails the test after this long instead of stalling CI.
SWEEP_TIMEOUT_S = 600


def spec(parallel: str, grad_sync: str) -> BenchSpec:
    """The sweep's spec (the CLI's tiny preset: 16 px, attention at 8 px)."""
    return BenchSpec(
        preset="tiny",
        image_size=16,
        attention="8",
        batch=BATCH,
        accum=ACCUM,
        ranks=RANKS,
        parallel=parallel,
        grad_sync=grad_sync,
    )


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> dict[tuple[str, str], dict]:
    """One sweep of the four specs; --warmup 0 --steps 1, so the tracker's settling step runs."""
    out = tmp_path_factory.mktemp("comm")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.throughput",
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "--precision",
            "fp32",
            "--batch",
            str(BATCH),
            "--accum",
            str(ACCUM),
            "--ranks",
            str(RANKS),
            "--parallel",
            "ddp,fsdp",
            "--grad-sync",
            "last,every",
            "--warmup",
            "0",
            "--steps",
            "1",
            "--out",
            str(out),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SWEEP_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = {(r["parallel"], r["grad_sync"]): r for r in read_rows(out / "throughput.csv")}
    assert all(r["status"] == "ok" for r in got.values()), [r["error"] for r in got.values()]
    return got


def counts_by_kind(text: str) -> dict[str, int]:
    """The `collectives` cell, "all_gather 50: 2.58 MiB, ...", as {kind: count}."""
    return {
        part.split(":")[0].rsplit(" ", 1)[0]: int(part.split(":")[0].rsplit(" ", 1)[1])
        for part in text.split(", ")
    }


def mib_by_kind(text: str) -> dict[str, float]:
    return {
        part.split(":")[0].rsplit(" ", 1)[0]: float(part.split(": ")[1].split()[0])
        for part in text.split(", ")
    }


def exchanges(grad_sync: str) -> int:
    """Synced backward passes per optimizer step."""
    return ACCUM if grad_sync == "every" else 1


# --------------------------------------------------------------------------- DDP


@pytest.mark.slow
@pytest.mark.parametrize("grad_sync", ["last", "every"])
def test_ddp_moves_the_gradients_once_per_exchange_and_the_loss(rows, grad_sync):
    row = rows[("ddp", grad_sync)]
    gradient = parameter_count(spec("ddp", grad_sync)) * FP32  # one fp32 gradient per weight
    # The tiny UNet's 0.7 MB of gradients fit in one DDP bucket (its first, the smallest): one
    # all-reduce per synced backward, and the loss's one all-reduce of an fp32 scalar.
    assert gradient <= dist._DEFAULT_FIRST_BUCKET_BYTES
    n = exchanges(grad_sync)
    assert row["comm_mib_per_step"] * MIB == n * gradient + FP32
    assert row["collectives_per_step"] == n + 1
    assert counts_by_kind(row["collectives"]) == {"all_reduce": n + 1}
    assert 0 < row["comm_share_pct"] < 100


# --------------------------------------------------------------------------- FSDP2


def fsdp_units(model: torch.nn.Module) -> tuple[list[int], int]:
    """ddpm.parallel.shard's units (every ResBlock and attention block, then the root, which
    holds the rest), as the fp32 elements each all-gathers: every parameter padded on dim 0 to
    a multiple of the ranks, as FSDP2 shards it (torch.chunk's equal parts, the last one
    padded). Returns (the non-root units' sizes, the root's)."""
    owner = {}  # parameter -> the innermost unit holding it
    units = [m for m in model.modules() if isinstance(m, (ResBlock, AttentionBlock))]
    for unit in [model, *units]:  # outer first, so an inner unit takes its own parameters
        for p in unit.parameters():
            owner[p] = unit

    def padded(p: torch.Tensor) -> int:
        return math.ceil(p.shape[0] / RANKS) * RANKS * math.prod(p.shape[1:])

    sizes = {unit: 0 for unit in [model, *units]}
    for p, unit in owner.items():
        sizes[unit] += padded(p)
    return [sizes[u] for u in units], sizes[model]


@pytest.mark.slow
@pytest.mark.parametrize("grad_sync", ["last", "every"])
def test_fsdp_gathers_parameters_twice_and_scatters_gradients_per_exchange(rows, grad_sync):
    row = rows[("fsdp", grad_sync)]
    with torch.device("meta"):
        model = UNet(spec("fsdp", grad_sync).unet_config())
    inner, root = fsdp_units(model)
    whole = sum(inner) + root
    assert whole >= parameter_count(spec("fsdp", grad_sync))  # padding only adds
    n = exchanges(grad_sync)
    # fully_shard's default reshards a unit's parameters after its forward, so its backward
    # gathers them again, except the root's, which backward needs at once and keeps; after
    # backward every unit reshards (the root too), so each micro-batch gathers afresh.
    gathers = ACCUM * (2 * len(inner) + 1)
    gathered = ACCUM * (2 * sum(inner) + root) * FP32
    # Each synced backward reduce-scatters every unit's padded gradients.
    scatters = n * (len(inner) + 1)
    scattered = n * whole * FP32
    # The loss (one fp32 scalar), and the global gradient norm: clip_grad_norm_ takes each
    # sharded gradient's norm on its shard and all-reduces them together, one fp32 per
    # parameter tensor.
    reduced = FP32 + len(list(model.parameters())) * FP32
    assert counts_by_kind(row["collectives"]) == {
        "all_gather": gathers,
        "reduce_scatter": scatters,
        "all_reduce": 2,
    }
    assert row["collectives_per_step"] == gathers + scatters + 2
    assert row["comm_mib_per_step"] * MIB == gathered + scattered + reduced
    # The cell rounds to 3 significant figures.
    mib = mib_by_kind(row["collectives"])
    for kind, nbytes in [
        ("all_gather", gathered),
        ("reduce_scatter", scattered),
        ("all_reduce", reduced),
    ]:
        assert mib[kind] == pytest.approx(nbytes / MIB, rel=5e-3)
    assert 0 < row["comm_share_pct"] < 100


# --------------------------------------------------------------------------- time


def test_time_inside_collectives_counts_overlapping_ranges_once_within_the_step():
    # Step [100, 200]: [90, 120] is clipped to [100, 120]; [110, 130] and [125, 140] overlap it
    # and each other, adding [120, 140]; [150, 160] adds 10, [155, 158] nothing; [190, 230]
    # adds [190, 200]; [250, 260] lies outside. 20 + 20 + 10 + 10 = 60.
    spans = [(150, 160), (90, 120), (125, 140), (110, 130), (155, 158), (190, 230), (250, 260)]
    assert busy_ns(spans, 100, 200) == 60
    assert busy_ns([], 100, 200) == 0
