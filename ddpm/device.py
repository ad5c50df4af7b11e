"""Device helpers that training, sampling and the benchmarks share: a CUDA device named with its
index, and the sync before a host clock is read."""

from __future__ import annotations

import torch


def indexed_device(device) -> str:
    """'cuda' as 'cuda:<current device>', any other device unchanged: torch.cuda.set_device and
    the per-process memory fraction refuse a CUDA device without an index."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


def synchronize(device: torch.device | str) -> None:
    """Wait for queued device work, so that a host clock read next covers it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
