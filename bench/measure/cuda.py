"""Everything the harnesses do only on CUDA: the indexed device, the capability check, the memory
already in use at spec start, the budget cap that makes a big card act small, the caching
allocator's peaks, and which errors mean out of memory."""

from __future__ import annotations

import torch

from bench.spec import MIB
from ddpm.device import indexed_device, synchronize

NEEDS_AMPERE = ("bf16", "tf32")  # bf16 kernels and TF32 tensor cores need compute capability 8.0

# Out-of-memory that torch raises as a plain RuntimeError, not torch.OutOfMemoryError.
OOM_MARKERS = (
    "CUBLAS_STATUS_ALLOC_FAILED",  # cuBLAS handle or workspace
    "CUDNN_STATUS_ALLOC_FAILED",  # cuDNN 8
    "CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED",  # cuDNN 9
    "CUDA error: out of memory",  # cudaErrorMemoryAllocation through C10_CUDA_CHECK
    "cudaErrorMemoryAllocation",
    "CUDA driver error: out of memory",  # module loading through the driver API
    "Triton Error [CUDA]: out of memory",  # a compiled kernel's module loading
)


class CapabilityError(RuntimeError):
    """The card cannot run this spec at all; the message is the row's one line."""


def resolve(device: str | torch.device) -> torch.device:
    """The spec's device as torch.cuda's setters want it: 'cuda' becomes 'cuda:<current>'."""
    return torch.device(indexed_device(device))


def start(device: torch.device, precision: str) -> dict:
    """A spec's CUDA setup, once per harness: select the card, refuse what it cannot run, and
    measure the memory already in use. Returns that figure; {} on CPU."""
    if device.type != "cuda":
        return {}
    select(device)
    check_capability(device, precision)
    return {"measured_context_mib": context_mib(device)}


def select(device: torch.device) -> None:
    torch.cuda.set_device(device)


def capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def check_capability(device: torch.device, precision: str) -> None:
    """One line instead of emulated bf16 (sm_75 runs it, slowly) or kernels the build lacks."""
    major, minor = torch.cuda.get_device_capability(device)
    name = f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"
    if precision in NEEDS_AMPERE and major < 8:
        raise CapabilityError(
            f"{precision} needs compute capability 8.0 or newer; {name} "
            "emulates bf16 and runs tf32 as fp32: use fp32 or fp16."
        )
    archs = torch.cuda.get_arch_list()
    if archs and not any(runs_on(arch, 10 * major + minor) for arch in archs):
        raise CapabilityError(
            f"{name} cannot run this torch build's kernels "
            f"({' '.join(archs)}): install a build for sm_{major}{minor}."
        )


def runs_on(arch: str, capability: int) -> bool:
    """Whether code built for `arch` (sm_86, sm_90a, compute_90) runs on a card of capability
    10 * major + minor: machine code runs on its own major version from its minor up ('a' code
    only on its own capability), PTX is compiled at load time for its capability and newer."""
    kind, _, number = arch.partition("_")
    built = int(number.rstrip("af"))
    if number.endswith("a"):
        return capability == built
    if kind == "compute":
        return capability >= built
    return capability // 10 == built // 10 and capability >= built


def context_mib(device: torch.device) -> float:
    """Device memory in use outside this process's allocator cache (its CUDA context and other
    processes), in MiB; at spec start the cache is empty."""
    free, total = torch.cuda.mem_get_info(device)
    return (total - free - torch.cuda.memory_reserved(device)) / MIB


def cap_to_budget(device: torch.device, budget_mib: float, context_mib: float) -> float | None:
    """Limit this process's allocator to the budget minus the context allowance (the context is
    not allocator memory). Returns the fraction set, or None when the card is within budget."""
    total = torch.cuda.get_device_properties(device).total_memory
    allowed = (budget_mib - context_mib) * MIB
    if allowed >= total:
        return None
    fraction = max(allowed, 0.0) / total  # a float in [0, 1): torch refuses anything else
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction


def reset_peaks(device: torch.device, release_cache: bool = True) -> None:
    """Start the allocator's peaks from now. release_cache returns cached blocks to the driver
    first (a spec's start); without it the cache stays, as it does between training steps."""
    synchronize(device)
    if release_cache:
        torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)


def peaks_mib(device: torch.device) -> tuple[float, float]:
    """(peak allocated, peak reserved) since the last reset_peaks, in MiB."""
    synchronize(device)
    return (
        torch.cuda.max_memory_allocated(device) / MIB,
        torch.cuda.max_memory_reserved(device) / MIB,
    )


def is_oom(exc: BaseException) -> bool:
    """Out of device memory, however it surfaced: torch's own OutOfMemoryError, or a library's
    allocation failure as a RuntimeError, directly or as the cause of a wrapping error."""
    while exc is not None:
        if isinstance(exc, torch.OutOfMemoryError) or (
            isinstance(exc, RuntimeError) and any(m in str(exc) for m in OOM_MARKERS)
        ):
            return True
        exc = exc.__cause__
    return False
