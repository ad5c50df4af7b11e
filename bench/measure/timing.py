"""Wall time of device work: warm-up apart, a device sync before every host clock read."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ddpm.device import synchronize


@dataclass(frozen=True)
class Timing:
    warmup_s: float  # all warm-up calls together (compilation included)
    times_s: tuple[float, ...]  # one per measured call

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def total_s(self) -> float:
        return sum(self.times_s)


def time_calls(fn: Callable[[], object], calls: int, warmup: int, device: torch.device) -> Timing:
    """Run fn `warmup` times, then `calls` times, each measured call bracketed by syncs.

    Syncing per call costs a little overlap on CUDA; in exchange every call has its own time,
    so the table can report a median and a spread rather than one average."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
    synchronize(device)
    warmup_s = time.perf_counter() - start
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return Timing(warmup_s, tuple(times))
