"""The precision policy (autocast per precision, TF32 switches) and the profiler ranges."""

import pytest
import torch
from torch import nn

from ddpm.precision import Phase, apply_matmul_precision, autocast, phase


def test_autocast_per_precision():
    linear, x = nn.Linear(4, 3), torch.randn(2, 4)
    with autocast("bf16", "cpu"):
        assert linear(x).dtype == torch.bfloat16
    for precision in ("fp32", "tf32"):
        # Switched off, not merely left alone: an enclosing bf16 region does not lower it.
        with torch.autocast("cpu", dtype=torch.bfloat16), autocast(precision, "cpu"):
            assert linear(x).dtype == torch.float32
    with pytest.raises(ValueError, match="precision must be one of fp32, tf32, fp16, bf16"):
        autocast("fp8", "cpu")


def test_tf32_switches_change_only_on_cuda():
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32
    try:
        matmul.allow_tf32 = cudnn.allow_tf32 = False
        apply_matmul_precision("tf32", torch.device("cpu"))
        assert (matmul.allow_tf32, cudnn.allow_tf32) == (False, False)
        apply_matmul_precision("tf32", "cuda:0")
        assert (matmul.allow_tf32, cudnn.allow_tf32) == (True, True)
        apply_matmul_precision("bf16", "cuda:0")  # cuDNN's default (on) is turned off too
        assert (matmul.allow_tf32, cudnn.allow_tf32) == (False, False)
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


def test_phase_is_a_profiler_range():
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with phase(Phase.FORWARD, "cpu"):
            torch.ones(3).sum()
    ranges = [e for e in prof.events() if e.name == "forward"]
    assert len(ranges) == 1
    assert any(e.name == "aten::sum" for e in ranges[0].cpu_children)
