"""The time prediction's arithmetic on a made-up card, against figures computed by hand from the
layer shapes and the card's datasheet; no timing anywhere."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from bench import sampling as sampling_command
from bench import throughput as throughput_command
from bench.cards import Card
from bench.predict import runtime
from bench.predict.runtime import Kernel, KernelRecorder


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


@pytest.fixture(autouse=True)
def round_constants(monkeypatch):
    # Round efficiencies, so every figure below is a hand division.
    monkeypatch.setattr(runtime, "COMPUTE_EFFICIENCY", 0.5)
    monkeypatch.setattr(runtime, "MEMORY_EFFICIENCY", 0.5)
    monkeypatch.setattr(runtime, "LAUNCH_S", 1e-6)


def recorded(fn, *shapes, dtype=torch.float32) -> list[Kernel]:
    recorder = KernelRecorder()
    with FakeTensorMode():
        tensors = [torch.empty(s, dtype=dtype) for s in shapes]
        with recorder:
            recorder.on = True
            fn(*tensors)
    return recorder.kernels


def test_one_convolution_by_hand():
    # N=8, Cin=64 -> Cout=64, 16x16, 3x3, padding 1.
    (k,) = recorded(
        lambda x, w, b: F.conv2d(x, w, b, padding=1), (8, 64, 16, 16), (64, 64, 3, 3), (64,)
    )
    assert k.kind == "conv"
    assert k.flops == 2 * 8 * 64 * 16 * 16 * 64 * 3 * 3  # 150,994,944
    assert k.bytes == 4 * (8 * 64 * 256 + 64 * 64 * 9 + 64 + 8 * 64 * 256)  # 1,196,288
    # CC 8.6: TF32 (20 TFLOP/s x 0.5) -> 15.0995 us of math, 2.3926 us of memory, + 1 us.
    assert runtime.kernel_seconds(k, card((8, 6)), True, False) == pytest.approx(
        16.0995e-6, rel=1e-4
    )
    # CC 7.5: no TF32, the FP32 cores (10 x 0.5) -> 30.199 us + 1 us.
    assert runtime.kernel_seconds(k, card((7, 5)), True, False) == pytest.approx(
        31.199e-6, rel=1e-4
    )


def test_one_matmul_by_hand():
    (k,) = recorded(torch.mm, (64, 128), (128, 256))
    assert (k.kind, k.flops) == ("matmul", 2 * 64 * 128 * 256)
    assert k.bytes == 4 * (64 * 128 + 128 * 256 + 64 * 256)
    # torch's default keeps fp32 matmuls off TF32: 4,194,304 / 5e12 = 0.8389 us (> 0.4588 us of
    # memory), + 1 us; with TF32 matmuls on, half the math.
    assert runtime.kernel_seconds(k, card((8, 6)), True, False) == pytest.approx(
        1.8389e-6, rel=1e-4
    )
    assert runtime.kernel_seconds(k, card((8, 6)), True, True) == pytest.approx(1.4588e-6, rel=1e-4)


def test_one_elementwise_op_is_its_bytes():
    (k,) = recorded(torch.add, (1000,), (1000,))
    assert (k.kind, k.flops, k.bytes) == ("memory", 0, 12_000)
    # 12,000 B / 500 GB/s = 0.024 us, + 1 us.
    assert runtime.kernel_seconds(k, card((8, 6)), True, False) == pytest.approx(1.024e-6)


def test_views_and_broadcasts_cost_nothing_extra():
    kernels = recorded(lambda a, b: (a.view(10, 100).t(), a + b.expand(1000)), (1000,), (1,))
    assert [(k.op, k.bytes) for k in kernels] == [("add", 4 * (1000 + 1 + 1000))]


def test_dtype_paths():
    conv = Kernel("convolution", "conv", 1, 1, torch.float32)
    assert runtime.peak_tflops(card((8, 6)), conv, True, False) == 20.0  # TF32
    assert runtime.peak_tflops(card((8, 6)), conv, False, False) == 10.0  # TF32 switched off
    assert runtime.peak_tflops(card((7, 5)), conv, True, False) == 10.0  # no TF32 before 8.0
    bf16 = Kernel("convolution", "conv", 1, 1, torch.bfloat16)
    assert runtime.peak_tflops(card((8, 6)), bf16, True, False) == 40.0
    assert runtime.peak_tflops(card((7, 5)), bf16, True, False) == 10.0  # no bf16 tensor cores
    fp16 = Kernel("convolution", "conv", 1, 1, torch.float16)
    assert runtime.peak_tflops(card((7, 5)), fp16, True, False) == 40.0


def test_torch_defaults_and_the_tf32_precision():
    assert runtime.tf32_switches("tf32") == (True, True)
    assert runtime.tf32_switches("fp32") == (
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision() != "highest",
    )


def test_training_step_holds_the_optimizer_by_hand():
    """Fused AdamW returns nothing: its bytes are what it reads (weights, gradients, both
    moments, each tensor's step count) and writes in place (weights and moments), 4 bytes each:
    28 per parameter and 4 per tensor."""
    from bench.models.workload import build_model
    from bench.spec import BenchSpec

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
