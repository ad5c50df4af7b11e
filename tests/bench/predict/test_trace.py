"""The memory levers in the prediction of one step (bench.predict.trace): where the EMA lives and
its dtype, the attention kernel, the memory format; each against a count made without the
predictor (the model's own parameter sizes, the attention matrix's size by hand)."""

from __future__ import annotations

import pytest
import torch

from bench.models.workload import build_model, build_trainer, synthetic_images
from bench.predict.attention import NoBackend, attention_backend
from bench.predict.trace import CUDA_BLOCK_BYTES, step_memory, step_peak
from bench.spec import BenchSpec

TINY = BenchSpec(preset="tiny", image_size=16, attention="8", batch=2)


def _param_bytes(spec: BenchSpec, itemsize: int) -> int:
    """Each parameter at `itemsize` bytes a value, rounded up to the allocator's 512 B."""
    model = build_model(spec, compiled=False)
    return sum(
        -(-p.numel() * itemsize // CUDA_BLOCK_BYTES) * CUDA_BLOCK_BYTES for p in model.parameters()
    )


@pytest.fixture(scope="module")
def on_card():
    return step_memory(TINY, fake=True).kept


@pytest.mark.parametrize(
    "ema, dtype, itemsize", [("device", "fp32", 4), ("device", "bf16", 2), ("cpu", "fp32", 0)]
)
def test_ema_placement_and_dtype_move_the_kept_memory(on_card, ema, dtype, itemsize):
    kept = step_memory(TINY.replace(ema=ema, ema_dtype=dtype), fake=True).kept
    assert kept.by_category["ema"] == _param_bytes(TINY, itemsize)
    # everything else kept is unchanged: only the shadow moved
    assert on_card.total - kept.total == _param_bytes(TINY, 4) - _param_bytes(TINY, itemsize)


def test_ema_off_keeps_no_shadow_and_trains():
    spec = TINY.replace(ema="off")
    assert step_memory(spec, fake=True).kept.by_category["ema"] == 0
    trainer = build_trainer(spec, device="cpu")
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.step(synthetic_images(spec, spec.batch))
    assert trainer.ema.params == []
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))


def test_ema_on_the_cpu_is_not_in_the_tracked_device_memory():
    assert step_memory(TINY.replace(ema="cpu"), fake=False).kept.by_category["ema"] == 0


def test_math_attention_holds_the_attention_matrix_the_fused_kernels_do_not():
    """bf16 on an sm86 card: math saves the softmax of every head for backward, B x heads x L^2
    values; flash saves the output and a log-sum-exp. tiny attends at 8x8 (L = 64), 2 heads."""
    spec = TINY.replace(precision="bf16", batch=16)
    flash = step_peak(spec.replace(attention_backend="flash"), fake=True, target=(8, 6))
    math_ = step_peak(spec.replace(attention_backend="math"), fake=True, target=(8, 6))
    matrix = 16 * 2 * 64 * 64 * 2  # one attention matrix in bf16
    assert math_.total - flash.total >= matrix
    auto = step_peak(spec, fake=True, target=(8, 6))
    assert auto.total == flash.total  # torch's dispatcher picks flash there


@pytest.mark.parametrize(
    "capability, dtype, allowed",
    [((7, 5), torch.bfloat16, {"flash"}), ((8, 6), torch.float32, {"flash"})],
)
def test_a_backend_the_card_cannot_run_is_refused_not_predicted(capability, dtype, allowed):
    with pytest.raises(NoBackend, match="flash cannot run"):
        attention_backend(capability, dtype, 64, requires_grad=True, allowed=allowed)
    assert attention_backend(capability, dtype, 64, True, allowed={"math"}) == "math"


def test_flash_on_an_sm75_card_fails_the_prediction():
    spec = TINY.replace(precision="bf16", attention_backend="flash")
    with pytest.raises(NoBackend):
        step_peak(spec, fake=True, target=(7, 5))


def test_channels_last_puts_the_weights_in_that_format_and_predicts():
    model = build_model(TINY.replace(channels_last="on"), compiled=False)
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    kept = step_memory(TINY.replace(channels_last="on"), fake=True).kept
    assert kept.by_category["parameters"] == _param_bytes(TINY, 4)
