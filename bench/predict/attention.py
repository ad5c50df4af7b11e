"""Which kernel scaled_dot_product_attention runs on a given CUDA card, decided without the card.

The rules are those of torch's SDPA dispatcher for dense inputs with no mask, no causal flag and
no attention dropout (the UNet's self-attention): backends are tried in priority order and the
first whose checks pass runs. Each backend saves different tensors for backward (math keeps the
whole attention matrix, the fused ones only the output and a log-sum-exp), so the choice moves
the memory prediction.
"""

from __future__ import annotations

import torch

HALF = (torch.float16, torch.bfloat16)


def prefers_cudnn(capability: tuple[int, int], cudnn_version: int | None) -> bool:
    """cuDNN attention goes first on sm90 and sm10x with cuDNN newer than 9.15 (CUDA 13 builds,
    such as this project's torch); elsewhere the order is flash, efficient, math."""
    return bool(cudnn_version and cudnn_version > 91500 and capability[0] in (9, 10))


def cudnn_ok(capability, dtype, head_dim, requires_grad, cudnn_version) -> bool:
    major, minor = capability
    if not (8, 0) <= capability <= (12, 1) or dtype not in HALF or head_dim % 8:
        return False
    sm90_or_10x = (major == 9 and minor == 0) or major == 10
    limit = 256 if sm90_or_10x and (cudnn_version or 0) > 92200 else 128
    if head_dim > limit:
        return False
    # Backward on sm90 / sm10x with the 256 limit supports head dims <= 128 or exactly 256.
    return not (requires_grad and limit == 256 and 128 < head_dim != 256)


def flash_ok(capability, dtype, head_dim, requires_grad) -> bool:
    if not (8, 0) <= capability <= (12, 1) or dtype not in HALF or head_dim > 256:
        return False
    # Training on sm86-89 and sm120-121 fails in backward for head dims in (192, 224].
    consumer = (8, 6) <= capability <= (8, 9) or (12, 0) <= capability <= (12, 1)
    return not (requires_grad and consumer and 192 < head_dim <= 224)


def efficient_ok(capability, dtype, head_dim) -> bool:
    if not (5, 0) <= capability <= (12, 1):
        return False
    allowed = (
        (torch.float16, torch.float32, torch.bfloat16)
        if capability >= (8, 0)
        else (torch.float16, torch.float32)
    )
    if dtype not in allowed:
        return False
    # The last dimension must be a multiple of the GEMM alignment: 128 bits on tensor cores
    # (always from sm80, for half types from sm70), else 4 elements from sm80 and 1 before.
    tensor_cores = capability >= (8, 0) or (capability >= (7, 0) and dtype in HALF)
    alignment = 4 if capability >= (8, 0) else 1
    if tensor_cores:
        alignment = max(alignment, 128 // (16 if dtype in HALF else 32))
    return head_dim % alignment == 0


class NoBackend(RuntimeError):
    """No allowed SDPA backend runs on the target card: torch's dispatcher fails the call too."""


def allowed_backends() -> set[str]:
    """The backends torch's switches allow now (torch.nn.attention.sdpa_kernel sets them, as
    ddpm.attention does for --attention-backend); all four unless restricted."""
    cuda = torch.backends.cuda
    switches = {
        "cudnn": cuda.cudnn_sdp_enabled(),
        "flash": cuda.flash_sdp_enabled(),
        "efficient": cuda.mem_efficient_sdp_enabled(),
        "math": cuda.math_sdp_enabled(),
    }
    return {name for name, on in switches.items() if on}


def attention_backend(
    capability: tuple[int, int],
    dtype: torch.dtype,
    head_dim: int,
    requires_grad: bool,
    has_mask: bool = False,
    cudnn_version: int | None = None,
    allowed: set[str] | None = None,
) -> str:
    """ "cudnn", "flash", "efficient" or "math" for the UNet's attention on this card, among
    the `allowed` backends (default: those torch's switches allow now); NoBackend, saying why,
    where none of them runs."""
    if cudnn_version is None:
        cudnn_version = torch.backends.cudnn.version()
    allowed = allowed_backends() if allowed is None else allowed
    order = ["flash", "efficient", "math"]
    if prefers_cudnn(capability, cudnn_version):
        order.insert(0, "cudnn")
    order = [backend for backend in order if backend in allowed]
    usable = {
        "cudnn": lambda: (
            not has_mask and cudnn_ok(capability, dtype, head_dim, requires_grad, cudnn_version)
        ),
        "flash": lambda: not has_mask and flash_ok(capability, dtype, head_dim, requires_grad),
        "efficient": lambda: efficient_ok(capability, dtype, head_dim),
        "math": lambda: True,
    }
    chosen = next((backend for backend in order if usable[backend]()), None)
    if chosen is None:
        dtype_name = str(dtype).removeprefix("torch.")
        raise NoBackend(
            f"attention backend {' or '.join(sorted(allowed))} cannot run on a "
            f"sm{capability[0]}{capability[1]} card in {dtype_name} at head dim {head_dim}"
            + (" in training" if requires_grad else "")
            + " (flash needs sm80 or newer and fp16/bf16; efficient sm50 or newer)"
        )
    return chosen
