"""Precision helpers that training, sampling and the benchmarks share: the autocast policy, the
TF32 switches, and the profiler ranges each phase opens (and their names)."""

from __future__ import annotations

import contextlib

import torch
from torch.profiler import record_function

# The dtype each precision computes its matmuls and convolutions in. tf32 stores fp32 and rounds
# matmul inputs to TF32 on CUDA only (see apply_matmul_precision).
COMPUTE_DTYPES = {
    "fp32": torch.float32,
    "tf32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
# The precisions that run the model under autocast, and its dtype there.
AUTOCAST_DTYPES = {name: dtype for name, dtype in COMPUTE_DTYPES.items() if dtype != torch.float32}


class Phase:
    """Names of the profiler ranges ddpm opens; bench.profile finds them in traces by name."""

    DATA = "data"
    FORWARD = "forward"
    LOSS = "loss"
    BACKWARD = "backward"
    UNSCALE_CLIP = "unscale_clip"
    OPTIMIZER = "optimizer"
    EMA = "ema"
    DENOISE_STEP = "denoise_step"


# The ranges of one optimizer step (ddpm.train.Trainer.step), in the order they run.
TRAIN_PHASES = (
    Phase.DATA,
    Phase.FORWARD,
    Phase.LOSS,
    Phase.BACKWARD,
    Phase.UNSCALE_CLIP,
    Phase.OPTIMIZER,
    Phase.EMA,
)
# The range of one denoising step (ddpm.sample.sample_progressive).
SAMPLE_PHASES = (Phase.DENOISE_STEP,)


def autocast(precision: str, device: torch.device | str) -> torch.autocast:
    """Autocast to fp16/bf16 on the device's type; for fp32 and tf32 autocast is switched off,
    so an enclosing autocast region cannot lower their precision."""
    if precision not in COMPUTE_DTYPES:
        raise ValueError(
            f"precision must be one of {', '.join(COMPUTE_DTYPES)}, got {precision!r}."
        )
    dtype = AUTOCAST_DTYPES.get(precision)
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)


def apply_matmul_precision(precision: str, device: torch.device | str) -> None:
    """tf32 is a CUDA matter (Ampere and newer); elsewhere it is plain fp32. Every other
    precision turns TF32 off explicitly, since cuDNN allows it by default."""
    if torch.device(device).type == "cuda":
        tf32 = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


def phase(name: str, device: torch.device | str):
    """A profiler range that is cheap enough to stay on; also an NVTX range on CUDA (Nsight)."""
    if torch.device(device).type != "cuda":
        return record_function(name)
    stack = contextlib.ExitStack()
    stack.enter_context(record_function(name))
    stack.enter_context(torch.cuda.nvtx.range(name))
    return stack
