"""The CUDA caching allocator's own figures, and the budget cap that makes a big card act small."""

from __future__ import annotations

import torch

MIB = 2**20


def cap_to_budget(device: torch.device, budget_mib: float, context_mib: float) -> float | None:
    """Limit this process's allocator to the budget minus the context allowance (the context is
    not allocator memory). Returns the fraction set, or None when the card is within budget."""
    total = torch.cuda.get_device_properties(device).total_memory
    allowed = (budget_mib - context_mib) * MIB
    if allowed >= total:
        return None
    fraction = max(allowed, 0) / total
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction


def reset_peaks(device: torch.device) -> None:
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)


def peaks_mib(device: torch.device) -> tuple[float, float]:
    """(peak allocated, peak reserved) since the last reset_peaks, in MiB."""
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) / MIB,
            torch.cuda.max_memory_reserved(device) / MIB)
