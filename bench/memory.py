"""python -m bench.memory: does a training configuration fit the memory budget, with what
headroom, and how fast does it run?

Each spec is measured in three passes so no tracker slows the timed one:
  1. timed: warm-up step(s), then measured optimizer steps; CUDA allocator peaks, NVML, RSS;
  2. tracked: the live-tensor peak of a steady-state step on this device, by category;
  3. predicted: the same step on fake tensors with CUDA's block rounding, plus the context
     allowance: the `fits` verdict for a CUDA card of --budget, computed on any machine."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable

import torch

from bench.cli import build_parser, run_cli
from bench.measure import cuda
from bench.measure.memory import step_peak
from bench.measure.tracked import CATEGORIES
from bench.measure.training import timed_training
from bench.runner import Harness
from bench.spec import BenchSpec
from bench.worker import RunContext
from bench.workload import build_trainer, synthetic_images

TRACKED = [f"tracked_{c}_mib" for c in CATEGORIES]


def verdict(row: dict) -> str | None:
    """The answer in words: does this configuration fit the budget, and by how much."""
    what = (f"batch {row['batch']} x accum {row['accum']} ({row['precision']}, attention "
            f"{row['attention']}, {row['preset']} at {row['image_size']}px)")
    if row["status"] != "ok":
        return f"{what}: {row['status']} ({row['error']})."
    budget = f"{row['budget_mib'] / 1024:g} GiB"
    if row.get("max_batch_source"):
        return (f"Largest batch that fits {budget} at accum {row['accum']} ({row['precision']}, "
                f"attention {row['attention']}): {row['batch']} ({row['max_batch_source']}).")
    answer = "fits" if row["fits"] else "does NOT fit"
    text = (f"Verdict: {what} {answer} in {budget} on a CUDA card: predicted "
            f"{row['predicted_cuda_mib']:,.0f} MiB ({row['predicted_alloc_mib']:,.0f} MiB of "
            f"tensors + {row['context_mib']:,.0f} MiB CUDA context), headroom "
            f"{row['headroom_mib']:,.0f} MiB.")
    if row.get("peak_alloc_mib") is not None:
        text += (f" Measured on {row['device']}: {row['peak_alloc_mib']:,.0f} MiB allocated, "
                 f"{row['peak_reserved_mib']:,.0f} MiB reserved.")
    return text

HARNESS = Harness(
    name="memory",
    figure_columns=["step_s", "step_s_min", "step_s_max", "img_per_s", "warmup_s",
                    "peak_alloc_mib", "peak_reserved_mib", "nvml_peak_mib", "rss_peak_mib",
                    "cpu_util_pct", "tracked_peak_mib", *TRACKED, "predicted_alloc_mib",
                    "context_mib", "predicted_cuda_mib", "budget_mib", "fits", "headroom_mib",
                    "max_batch_source"],
    display_columns=["status", "step_s", "img_per_s", "peak_alloc_mib", "tracked_peak_mib",
                     "predicted_cuda_mib", "budget_mib", "fits", "headroom_mib",
                    "max_batch_source"],
    notes=["MiB = 2^20 bytes. step_s: median seconds per optimizer step (batch x accum images); "
           "img_per_s = images / measured seconds; warmup_s: the warm-up steps, compilation "
           "included.",
           "peak_alloc_mib / peak_reserved_mib: CUDA caching allocator peaks (empty on CPU). "
           "nvml_peak_mib: device memory used per NVML, CUDA context included (empty off "
           "NVIDIA). rss_peak_mib: peak resident memory of the spec's process (OS figure).",
           "tracked_peak_mib: live-tensor peak of one steady-state optimizer step on this "
           "device, split into parameters, gradients, optimizer state, EMA copy, activations "
           "and temporaries.",
           "predicted_cuda_mib = predicted_alloc_mib (the same step on fake tensors, rounded as "
           "the CUDA caching allocator rounds) + context_mib (CUDA context allowance). fits: "
           "predicted_cuda_mib <= budget_mib; headroom_mib = budget_mib - predicted_cuda_mib. "
           "Allocator fragmentation (reserved above allocated) is not in the prediction."],
    verdict=verdict,
    figure_kinds={"fits": bool, "max_batch_source": str},
)


def measure(spec: BenchSpec, context: RunContext | None = None) -> dict:
    if spec.find_max_batch:
        return max_batch_row(spec)
    device = torch.device(spec.device)
    figures: dict = {"budget_mib": spec.budget_mib}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        cuda.cap_to_budget(device, spec.budget_mib, spec.context_mib)

    # Pass 1: timed; its trainer is freed when it returns.
    figures.update(timed_training(spec, device))
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # Pass 2: tracked tensors on this device (eager, whatever the compile axis says).
    tracked = step_peak(spec, fake=False)
    figures["tracked_peak_mib"] = tracked.mib()
    figures.update({f"tracked_{c}_mib": tracked.mib(c) for c in CATEGORIES})

    # Pass 3: predicted CUDA peak, from fake tensors.
    figures.update(prediction(spec))
    return figures


def prediction(spec: BenchSpec) -> dict:
    predicted = step_peak(spec, fake=True).mib()
    total = predicted + spec.context_mib
    return {"predicted_alloc_mib": predicted, "context_mib": spec.context_mib,
            "predicted_cuda_mib": total, "fits": total <= spec.budget_mib,
            "headroom_mib": spec.budget_mib - total}


def largest(fits: Callable[[int], bool], limit: int = 1 << 16) -> int:
    """The largest n in 1..limit with fits(n), assuming fits is monotone: double until it fails,
    then bisect between the last success and the first failure. 0 when even 1 does not fit."""
    if not fits(1):
        return 0
    good = 1
    while good < limit and fits(min(good * 2, limit)):
        good = min(good * 2, limit)
    bad = min(good * 2, limit + 1)
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


def _fits_measured(spec: BenchSpec) -> bool:
    """One real optimizer step under the budget cap; an OOM means no."""
    try:
        trainer = build_trainer(spec)
        trainer.step(synthetic_images(spec, spec.effective_batch))
        torch.cuda.synchronize()
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        trainer = None
        gc.collect()
        torch.cuda.empty_cache()


def max_batch_row(spec: BenchSpec) -> dict:
    """The row of --find-max-batch: the largest batch, where it came from, and its figures."""
    if spec.device.startswith("cuda"):
        device = torch.device(spec.device)
        torch.cuda.set_device(device)
        cuda.cap_to_budget(device, spec.budget_mib, spec.context_mib)
        best = largest(lambda n: _fits_measured(spec.replace(batch=n)))
        source = "measured"
    else:
        best = largest(lambda n: prediction(spec.replace(batch=n))["fits"])
        source = "predicted"
    if best == 0:
        raise torch.OutOfMemoryError(f"not even batch 1 fits {spec.budget_mib:g} MiB")
    found = spec.replace(batch=best)
    return {"batch": best, "effective_batch": found.effective_batch, "budget_mib": spec.budget_mib,
            "max_batch_source": source, **prediction(found)}


def main(argv: list[str] | None = None) -> None:
    parser = build_parser(
        "python -m bench.memory", __doc__,
        defaults={"batch": "2", "accum": "64", "precision": "fp32", "steps": 1, "warmup": 1})
    run_cli(HARNESS, parser, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
