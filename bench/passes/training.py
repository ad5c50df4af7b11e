"""The timed training pass memory and throughput share: warm-up, then measured optimizer steps."""

from __future__ import annotations

import gc
import resource
import time
from collections.abc import Callable

import torch

from bench.figure import Figure
from bench.measure import cuda
from bench.measure.collectives import measure_step
from bench.measure.monitor import Monitor
from bench.measure.timing import Timing, time_calls
from bench.models.workload import TrainStep, train_step
from bench.spec import BenchSpec
from ddpm.device import synchronize

# The figures of the timed pass, declared once for the harnesses that run it (memory and
# throughput): each places those it has among its own and shows the ones it shows.
TIMED = {
    f.name: f
    for f in (
        Figure("step_s", "s"),
        Figure("step_s_min", "s"),
        Figure("step_s_max", "s"),
        Figure("img_per_s", "img/s"),
        Figure("warmup_s", "s"),
        Figure("peak_alloc_mib", "MiB", cuda=True),
        Figure("peak_reserved_mib", "MiB", cuda=True),
        Figure("warmup_peak_alloc_mib", "MiB", cuda=True),
        Figure("warmup_peak_reserved_mib", "MiB", cuda=True),
        Figure("nvml_peak_mib", "MiB", cuda=True),
        Figure("nvml_process_peak_mib", "MiB", cuda=True),
        Figure("nvml_baseline_mib", "MiB", cuda=True),
        Figure("rss_peak_mib", "MiB"),
        Figure("cpu_util_pct", "%"),
        # cuda.start's, beside the pass: what the device holds before it starts
        Figure("measured_context_mib", "MiB", cuda=True),
    )
}
CUDA_NOTE = (
    "On CUDA: peak_alloc_mib / peak_reserved_mib cover the measured (steady-state) "
    "steps, warmup_peak_alloc_mib / warmup_peak_reserved_mib the warm-up steps. "
    "measured_context_mib: device memory in use at spec start outside this process's "
    "allocator (its CUDA context and other processes). nvml_peak_mib excludes "
    "driver-reserved memory; nvml_process_peak_mib: this process's own (empty where the "
    "driver does not report it); nvml_baseline_mib: the device's use before this "
    "process started CUDA. NVML figures are of this very GPU or MIG instance, or empty."
)


# Seconds between two progress lines of a measured step: a step shorter than this says nothing.
PROGRESS_EVERY_S = 10.0


class MicroBatchProgress:
    """Trainer.step's on_micro_batch for one step: a line `say`s how many micro-batches are done
    and how long the rest takes at the pace so far, once every PROGRESS_EVERY_S seconds. On
    CUDA the pace is the host's, which queues kernels ahead of the card: a rough estimate until
    the queue fills."""

    def __init__(self, say: Callable[[str], None]):
        self.say, self.every_s = say, PROGRESS_EVERY_S
        self.start = self.last = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - self.last < self.every_s:
            return
        self.last = now
        left = (now - self.start) / done * (total - done)
        self.say(f"measured step: micro-batch {done}/{total} done, about {left:.0f} s left")


def timed_training(
    spec: BenchSpec,
    device: torch.device,
    after: Callable[[TrainStep], dict] | None = None,
    say: Callable[[str], None] | None = None,
) -> dict:
    """Warm-up then measured optimizer steps, with nothing else running in the process. A
    warm-up step is one micro-batch (every rank's) and an optimizer step, whatever the
    accumulation. `after` runs once every figure of the timed steps is taken, with the step,
    and returns figures of its own (a tracker's extra step, which the timed ones never see).

    Figures: step_s (median), step_s_min/max, warmup_s, img_per_s, the Monitor's NVML and CPU
    figures, rss_peak_mib, and on CUDA the allocator's peaks: warmup_peak_alloc_mib and
    warmup_peak_reserved_mib over the warm-up steps, peak_alloc_mib and peak_reserved_mib over
    the measured (steady-state) steps."""
    step = train_step(spec, device)
    figures: dict = {}
    with Monitor(device) as monitor:
        warmup = _warm_up(step.warm_up, spec.warmup_steps, device, figures)
        # A long measured step (ddpm-256's 64 micro-batches) reports its progress on `say`.
        timing = time_calls(
            lambda: step(MicroBatchProgress(say) if say is not None else None),
            spec.measure_steps,
            0,
            device,
        )
        if device.type == "cuda":
            figures["peak_alloc_mib"], figures["peak_reserved_mib"] = cuda.peaks_mib(device)
    figures.update(
        step_s=timing.median_s,
        step_s_min=min(timing.times_s),
        step_s_max=max(timing.times_s),
        warmup_s=warmup.warmup_s,
        img_per_s=spec.effective_batch * spec.measure_steps / timing.total_s,
        # ru_maxrss is the process's high-water mark, in KiB on Linux.
        rss_peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **monitor.figures(),
    )
    if after is not None:
        figures.update(after(step))
    return figures


def _warm_up(step: Callable[[], object], calls: int, device: torch.device, figures: dict) -> Timing:
    """The warm-up calls, timed; on CUDA their allocator peaks go into `figures` and the peaks
    start again, so the measured steps' peaks are the steady state's own."""
    if device.type != "cuda":
        return time_calls(step, 0, calls, device)
    cuda.reset_peaks(device)
    timing = time_calls(step, 0, calls, device)
    if calls:
        figures["warmup_peak_alloc_mib"], figures["warmup_peak_reserved_mib"] = cuda.peaks_mib(
            device
        )
    cuda.reset_peaks(device, release_cache=False)  # the cache stays, as in training
    return timing


def communication(spec: BenchSpec, device):
    """The tracker of the extra step, for `timed_training` to run after the timed steps."""

    def after(step: TrainStep) -> dict:
        # DDP rebuilds its gradient buckets at the first forward after the first backward,
        # broadcasting the new order from rank 0: a one-off that the third step on never has.
        for _ in range(max(0, 2 - spec.warmup_steps - spec.measure_steps)):
            step()
        return measure_step(step, device, spec.ranks).figures()

    return after


def fits_measured(spec: BenchSpec, device: torch.device) -> bool:
    """Two real optimizer steps under the budget cap; an out-of-memory of any kind means no.
    AdamW creates its state during step 1, after that step's activations are freed: only from
    step 2 on are both held at once."""
    step = None
    try:
        step = train_step(spec, device)
        for _ in range(2):
            step()
        synchronize(device)
        fits = True
    except Exception as exc:
        if not cuda.is_oom(exc):
            raise
        fits = False
    step = None  # the failed step's tensors go before the next probe
    gc.collect()
    torch.cuda.empty_cache()
    return fits
