"""The timed training pass every harness shares: warm-up, then measured optimizer steps."""

from __future__ import annotations

import resource

import torch

from bench.measure import cuda
from bench.measure.timing import time_calls
from bench.monitor import Monitor
from bench.spec import BenchSpec
from bench.workload import build_trainer, synthetic_images


def timed_training(spec: BenchSpec, device: torch.device) -> dict:
    """Warm-up then measured optimizer steps, with nothing else running in the process.

    Figures: step_s (median), step_s_min/max, warmup_s, img_per_s, nvml_peak_mib,
    cpu_util_pct, rss_peak_mib, and on CUDA the allocator's peak_alloc_mib/peak_reserved_mib."""
    trainer = build_trainer(spec)
    images = synthetic_images(spec, spec.effective_batch)
    if device.type == "cuda":
        cuda.reset_peaks(device)
    with Monitor(device) as monitor:
        timing = time_calls(lambda: trainer.step(images), spec.steps, spec.warmup, device)
    figures = {
        "step_s": timing.median_s, "step_s_min": min(timing.times_s),
        "step_s_max": max(timing.times_s), "warmup_s": timing.warmup_s,
        "img_per_s": spec.effective_batch * spec.steps / timing.total_s,
        "nvml_peak_mib": monitor.nvml_peak_mib, "cpu_util_pct": monitor.cpu_percent,
        # ru_maxrss is the process's high-water mark, in KiB on Linux.
        "rss_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        figures["peak_alloc_mib"], figures["peak_reserved_mib"] = cuda.peaks_mib(device)
    return figures
