"""The traced steps the time prediction reads (fp16 with its GradScaler, DDP's exchange, torch's
CUDA optimizer defaults, a one-step sampler) and the harnesses' predicted columns with their
likely range; no timing anywhere."""

from __future__ import annotations

import pytest
import torch

from bench import sampling as sampling_command
from bench import throughput as throughput_command
from bench.cards import CARDS, Card
from bench.models.workload import build_model, parameter_count
from bench.predict import runtime
from bench.predict.public_runs import foreach_adam
from bench.predict.step_time import load_constants, step_time
from bench.spec import BenchSpec


def card(capability: tuple[int, int]) -> Card:
    """10 TFLOP/s FP32, 40 FP16 tensor (so 20 TF32 from 8.0 on), 1000 GB/s."""
    return Card(
        key="made-up",
        name="made-up card",
        capability=capability,
        sms=1,
        capacity_gib=8.0,
        capacity_source="made up",
        fp32_tflops=10.0,
        fp16_tflops=40.0,
        bandwidth_gbs=1000.0,
    )


def test_training_step_holds_the_optimizer_by_hand():
    """Fused AdamW returns nothing: its bytes are what it reads (weights, gradients, both
    moments, each tensor's step count) and writes in place (weights and moments), 4 bytes each:
    28 per parameter and 4 per tensor."""
    spec = BenchSpec(preset="tiny", batch=2)
    params = list(build_model(spec).parameters())
    kernels = runtime.train_step_kernels(spec, card((8, 6)))
    (adamw,) = [k for k in kernels if k.op == "_fused_adamw_"]
    assert adamw.bytes == 28 * sum(p.numel() for p in params) + 4 * len(params)


MEASURED_THROUGHPUT = ["step_s", "img_per_s", "gflop_per_step", "peak_tflops", "mfu"]


def test_throughput_predict_only_writes_predictions_alone(tmp_path):
    argv = ["--card", "rtx3070", "--predict-only", "--preset", "tiny", "--batch", "2"]
    rows = throughput_command.main(
        [*argv, "--precision", "fp32", "--inline", "--out", str(tmp_path)]
    )
    (row,) = rows
    assert row["status"] == "ok" and row["predicted_step_s"] > 0
    assert row["predicted_img_per_s"] == pytest.approx(2 / row["predicted_step_s"])
    assert row["predicted_train_h"] == pytest.approx(row["predicted_step_s"] * 800_000 / 3600)
    c = load_constants()
    assert row["predicted_train_h_low"] == pytest.approx(row["predicted_train_h"] * c.band_low)
    assert row["predicted_train_h_high"] == pytest.approx(row["predicted_train_h"] * c.band_high)
    assert row["predicted_train_h_low"] < row["predicted_train_h"] < row["predicted_train_h_high"]
    assert all(row.get(c) is None for c in MEASURED_THROUGHPUT)
    header = (tmp_path / "throughput.csv").read_text().splitlines()
    cells = dict(zip(header[0].split(","), header[1].split(",")))
    assert cells["predicted_step_s"] and not any(cells.get(c) for c in MEASURED_THROUGHPUT)


def test_sampling_predict_only_counts_finished_images(tmp_path):
    argv = ["--card", "rtx3070", "--predict-only", "--preset", "tiny", "--batch", "4"]
    rows = sampling_command.main(
        [*argv, "--sampling-steps", "50", "--inline", "--out", str(tmp_path)]
    )
    by_sampler = {r["sampler"]: r for r in rows}
    assert set(by_sampler) == {"ddpm", "ddim"}
    for row in rows:
        assert row.get("step_s") is None and row.get("projected_img_per_s") is None
        full = row["predicted_step_s"] * row["sampling_steps"]
        assert row["predicted_img_per_s"] == pytest.approx(4 / full)
        assert row["predicted_full_run_s_low"] < full < row["predicted_full_run_s_high"]
    # A complete DDPM run is all T = 1000 steps, DDIM the 50 asked for.
    assert (by_sampler["ddpm"]["sampling_steps"], by_sampler["ddim"]["sampling_steps"]) == (
        1000,
        50,
    )


def test_predict_only_without_a_card_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        throughput_command.main(
            ["--predict-only", "--preset", "tiny", "--out", str(tmp_path / "o")]
        )
    assert exit_.value.code == 2
    assert "--predict-only needs --card" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def tiny(**changes) -> BenchSpec:
    return BenchSpec(preset="tiny", batch=2, **changes)


def test_fp16_is_traced_with_its_grad_scaler():
    """fp16 runs as fp16 (not as bf16): half convolutions, GradScaler's unscale and inf check
    over every gradient, its scale update, and the two reads of its scale (host syncs)."""
    kernels = runtime.train_step_kernels(tiny(precision="fp16"), card((8, 6)))
    ops = [k.op for k in kernels]
    assert "_amp_foreach_non_finite_check_and_unscale_" in ops and "_amp_update_scale_" in ops
    assert [k.kind for k in kernels].count("sync") == 2
    convs = [k for k in kernels if k.kind == "conv"]
    assert convs and all(k.dtype == torch.float16 for k in convs)
    bf16 = runtime.train_step_kernels(tiny(precision="bf16"), card((8, 6)))
    assert "_amp_foreach_non_finite_check_and_unscale_" not in [k.op for k in bf16]


def test_a_rank_of_ddp_exchanges_its_rebuilt_buckets_during_its_backward():
    """DDP's steady state: buckets of about 25 MiB (the first 1 MiB) in the order the
    gradients arrive, each all-reduced as soon as its last gradient is accumulated, so most of
    the exchange overlaps the backward; the card waits for the rest when the backward ends."""
    spec = BenchSpec(
        preset="ddpm-cifar10", image_size=8, attention="none", batch=1, ranks=4, parallel="ddp"
    )
    kernels = runtime.train_step_kernels(spec, CARDS["rtx3080ti"])
    buckets = [i for i, k in enumerate(kernels) if k.kind == "collective" and not k.waits]
    sizes = [kernels[i].bytes for i in buckets]
    assert sum(sizes) == 4 * parameter_count(spec)  # every fp32 gradient once
    assert len(sizes) >= 5 and max(sizes) < 30 * 2**20 and sizes[0] < 4 * 2**20
    backward = [i for i, k in enumerate(kernels) if k.engine and k.kind != "collective"]
    assert backward[0] < buckets[0] < buckets[-2] < backward[-1]  # issued along the backward
    assert [k.kind for k in kernels].count("join") >= 1
    # The loss's mean over the ranks: one more all-reduce of one float, waited for.
    assert [k.bytes for k in kernels if k.kind == "collective" and k.waits] == [4]
    one = runtime.train_step_kernels(spec.replace(ranks=1, parallel="none"), CARDS["rtx3080ti"])
    four = step_time(kernels, CARDS["rtx3080ti"], "fp32", ranks=4)
    assert four.step_s > step_time(one, CARDS["rtx3080ti"], "fp32").step_s
    assert 0 < four.exposed_comm_s


def test_an_optimizer_left_to_torchs_defaults_takes_the_foreach_kernels_as_on_cuda():
    kernels = runtime.train_step_kernels(tiny(), card((8, 6)), recipe=foreach_adam)
    ops = {k.op for k in kernels}
    assert "_foreach_addcmul_" in ops and "_fused_adamw_" not in ops
    # Without the CUDA default a fake tensor would take the per-parameter loop: one addcmul_
    # per parameter instead.
    assert "addcmul_" not in ops


def test_a_one_step_sampler_is_predicted():
    """DDIM with one step: the step traced is the only one (the trace took the second)."""
    spec = tiny(sampler="ddim", sampling_steps=1, card="rtx3070")
    figures = runtime.sampling_figures(spec, CARDS["rtx3070"])
    assert figures["predicted_full_run_s"] == figures["predicted_step_s"] > 0
    two = runtime.denoising_step_kernels(spec.replace(sampling_steps=2), CARDS["rtx3070"])
    one = runtime.denoising_step_kernels(spec, CARDS["rtx3070"])
    assert sum(k.flops for k in one) == sum(k.flops for k in two)
