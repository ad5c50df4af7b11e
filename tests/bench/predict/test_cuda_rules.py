"""The prediction's CUDA rules (bench.predict.cuda_rules, bench.predict.attention): each rule
against an independent count, and the attention backend against hand-picked cards."""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from bench.measure.tracked import TensorTracker
from bench.models.workload import build_trainer, synthetic_images
from bench.predict.attention import attention_backend
from bench.predict.cuda_rules import CudaRules
from bench.predict.trace import step_peak
from bench.spec import BenchSpec
from ddpm.config import PRESETS
from ddpm.schedule import NoiseSchedule
from ddpm.unet import UNet

SM86 = (8, 6)
MIB = 2**20


# ----- the attention kernel a card runs ------------------------------------------------------


@pytest.mark.parametrize(
    "capability, dtype, head_dim, cudnn, expected",
    [
        # Turing: no flash (sm80+), memory-efficient takes fp16 and fp32 but not bf16.
        ((7, 5), torch.float16, 256, 92400, "efficient"),
        ((7, 5), torch.bfloat16, 256, 92400, "math"),
        ((6, 1), torch.float32, 256, 92400, "efficient"),
        # Ampere / Ada consumer cards: flash trains head dims <= 192 or > 224 (no dropout).
        ((8, 6), torch.bfloat16, 256, 92400, "flash"),
        ((8, 9), torch.float16, 200, 92400, "efficient"),
        ((8, 6), torch.float32, 256, 92400, "efficient"),
        ((8, 0), torch.bfloat16, 200, 92400, "flash"),
        # Hopper with cuDNN > 9.15 tries cuDNN first; its backward takes head dim <= 128 or 256.
        ((9, 0), torch.bfloat16, 256, 92400, "cudnn"),
        ((9, 0), torch.bfloat16, 160, 92400, "flash"),
        ((9, 0), torch.bfloat16, 256, 91000, "flash"),
        ((9, 0), torch.float32, 256, 92400, "efficient"),
    ],
)
def test_attention_backend_per_card(capability, dtype, head_dim, cudnn, expected):
    assert (
        attention_backend(capability, dtype, head_dim, requires_grad=True, cudnn_version=cudnn)
        == expected
    )


def test_attention_backend_without_grad_lifts_the_consumer_flash_limit():
    assert (
        attention_backend((8, 6), torch.bfloat16, 200, requires_grad=False, cudnn_version=92400)
        == "flash"
    )


# ----- each rule, seen in the autograd graph ----------------------------------------------------


def _fake_forward(fn, rules: bool, autocast: torch.dtype | None = None):
    with (
        FakeTensorMode(),
        CudaRules(SM86) if rules else contextlib.nullcontext(),
        torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None),
    ):
        return fn()


def test_dropout_keeps_a_bool_mask_under_cuda_rules():
    def run():
        x = torch.randn(4, 8, requires_grad=True)
        y = F.dropout(x, 0.1, training=True)
        return type(y.grad_fn).__name__, [t.dtype for t in _saved_tensors(y.grad_fn)]

    assert run() == ("MulBackward0", [torch.float32])  # real CPU: float noise, saved by mul
    name, saved = _fake_forward(run, rules=True)
    assert name == "NativeDropoutBackward0" and saved == [torch.bool]


def _saved_tensors(node):
    return [
        getattr(node, a)
        for a in dir(node)
        if a.startswith("_saved_") and isinstance(getattr(node, a), torch.Tensor)
    ]


def test_group_norm_runs_in_fp32_under_cuda_autocast_only():
    def run():
        x = torch.randn(2, 8, 4, 4)
        w = torch.randn(8, 8, 3, 3)
        h = F.conv2d(x, w, padding=1)
        return h.dtype, F.group_norm(h, 2).dtype

    assert _fake_forward(run, rules=False, autocast=torch.bfloat16) == (
        torch.bfloat16,
        torch.bfloat16,
    )
    assert _fake_forward(run, rules=True, autocast=torch.bfloat16) == (
        torch.bfloat16,
        torch.float32,
    )


def test_attention_calls_the_card_kernel():
    def run():
        q = torch.randn(2, 1, 64, 256, requires_grad=True)
        return type(F.scaled_dot_product_attention(q, q, q).grad_fn).__name__

    assert _fake_forward(run, rules=True, autocast=torch.bfloat16) == (
        "ScaledDotProductFlashAttentionBackward0"
    )
    assert _fake_forward(run, rules=True) == "ScaledDotProductEfficientAttentionBackward0"


# ----- the rules' effect on the CIFAR-10 model, against independent counts ---------------------


def dropout_elements_per_image() -> int:
    """Counted by forward hooks on the model's Dropout modules, on a real 1-image forward."""
    model = UNet(PRESETS["ddpm-cifar10"])
    count = 0

    def hook(module, inputs, output):
        nonlocal count
        count += inputs[0].numel()

    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32), torch.tensor([10]))
    return count


@functools.cache
def cpu_rules_peak(spec: BenchSpec) -> int:
    """The step on fake tensors with this CPU's own rules (what the prediction was before)."""
    schedule = NoiseSchedule.linear()  # its validation reads values: made outside fake mode
    with FakeTensorMode(allow_non_fake_inputs=True):
        trainer = build_trainer(spec, device="cpu", compiled=False, schedule=schedule)
        trainer.step(synthetic_images(spec, spec.batch))
        with TensorTracker(
            trainer.model, trainer.optimizer, trainer.ema.params, round_to=512
        ) as tracker:
            trainer.step(synthetic_images(spec, spec.batch))
    return tracker.peak.total


def test_fp32_prediction_falls_by_the_dropout_mask_difference_per_image():
    """A bool mask (1 byte) instead of a float32 noise tensor (4 bytes) per dropout element."""
    assert dropout_elements_per_image() == 1_093_632
    spec = BenchSpec(batch=8, precision="fp32", attention="16")
    big = spec.replace(batch=16)
    cuda_slope = (step_peak(big, fake=True).total - step_peak(spec, fake=True).total) / 8
    cpu_slope = (cpu_rules_peak(big) - cpu_rules_peak(spec)) / 8
    expected = dropout_elements_per_image() * (4 - 1)
    assert cpu_slope - cuda_slope == pytest.approx(expected, rel=0.002)


def forward_end_bytes(batch: int, by_hand: bool) -> int:
    """Live bytes after a bf16-autocast forward of the CIFAR-10 UNet at 16px (attention at 8).

    by_hand=True is an independent implementation of the two CUDA rules on real CPU tensors:
    group_norm on an fp32 copy of its input, dropout through native_dropout; CPU autocast does
    the rest as CUDA's would (conv, linear, attention in bf16). by_hand=False: CudaRules on fake
    tensors."""
    config = PRESETS["ddpm-cifar10"].replace(image_size=16, attention_resolutions=(8,))
    torch.manual_seed(0)
    with (
        contextlib.nullcontext() if by_hand else FakeTensorMode(),
        contextlib.nullcontext() if by_hand else CudaRules(SM86),
    ):
        model = UNet(config)
        if by_hand:
            for m in model.modules():
                if isinstance(m, torch.nn.GroupNorm):
                    m.forward = lambda x, m=m: F.group_norm(
                        x.float(), m.num_groups, m.weight, m.bias, m.eps
                    )
                if isinstance(m, torch.nn.Dropout):
                    m.forward = lambda x, m=m: torch.native_dropout(x, m.p, True)[0]
        x = torch.randn(batch, 3, 16, 16)
        t = torch.randint(0, 1000, (batch,))
        with TensorTracker(model) as tracker, torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, t)
            live = tracker.live_bytes
        del out
    return live


def test_bf16_forward_follows_group_norm_and_mask_rules_per_image():
    by_hand = (forward_end_bytes(4, True) - forward_end_bytes(2, True)) / 2
    traced = (forward_end_bytes(4, False) - forward_end_bytes(2, False)) / 2
    assert traced == by_hand
