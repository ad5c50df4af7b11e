"""The memory harness: does a training configuration fit the memory budget, with what headroom,
and how fast does it run? Its HARNESS: the figures of a row, the notes and the verdict; the
prediction is bench/predict/fit.py's, the measured passes bench/passes/training.py's, the
command line bench/memory.py."""

from __future__ import annotations

import gc

import torch

from bench import cards
from bench.core import Harness, RunContext
from bench.figure import Figure
from bench.measure import cuda
from bench.measure.tracked import CATEGORIES
from bench.passes.training import TIMED, fits_measured, timed_training
from bench.predict.fit import (
    CUDNN_ALLOWANCE_MIB,
    SEARCH_LIMITS,
    SpecFit,
    largest_batch,
    predict_fit,
)
from bench.predict.trace import step_peak
from bench.spec import DEFAULT_BUDGET_MIB, BenchSpec, architecture_words, lever_words
from ddpm import parallel


def budget_words(budget_mib: float) -> str:
    text = f"{budget_mib / 1024:.3g} GiB"
    if round(budget_mib, 6) == round(DEFAULT_BUDGET_MIB, 6):
        text += " (what CUDA offers on an 8 GB card; --budget to change)"
    return text


def verdict(row: dict) -> str | None:
    """The answer in words: does this configuration fit the budget, and by how much."""
    impl = row.get("impl") or "ddpm"
    # ours and diffusers' without a file are the preset's architecture
    if impl in ("ddpm", "diffusers") and row.get("model_config", "none") == "none":
        model = f"attention {row['attention']}, {row['preset']}{architecture_words(row)}"
        if impl == "diffusers":
            model += " as diffusers' UNet2DModel"
    else:  # another implementation's shape is its own (docs/impl.md), not the preset's
        config = "" if row.get("model_config", "none") == "none" else f" from {row['model_config']}"
        model = f"--impl {impl}{config}"
    shape = f"{row['precision']}, {model} at {row['image_size']}px"
    if row.get("checkpointing") == "on":
        shape += ", gradient checkpointing"
    shape += lever_words(row)
    what = f"batch {row['batch']} x accum {row['accum']}{_ranks_words(row)} ({shape})"
    card_words = "each CUDA" if row.get("ranks", 1) > 1 else "a CUDA"
    named = cards.card_words(row.get("card") or "")
    if named:
        on = f"on {named}"
    elif row.get("target_sm") is not None:
        on = f"on {card_words} sm{row['target_sm']:g} card"
    else:  # a search measured on the card present, with no prediction in the row
        on = f"on {row['device']}"
    if row["status"] != "ok":
        return f"{what} {on}: {row['status']} ({row['error']})."
    budget = budget_words(row["budget_mib"])
    if row.get("max_batch_source"):
        source = row["max_batch_source"]
        limit = SEARCH_LIMITS.get(source)
        answer = (
            f"at least {row['batch']:,} ({source}; the search stops at {limit:,})"
            if limit is not None and row["batch"] >= limit
            else f"{row['batch']:,} ({source})"
        )
        return (
            f"Largest batch that fits {budget} {on} at accum {row['accum']}"
            f"{_ranks_words(row)} ({shape}): {answer}."
        )
    answer = "fits" if row["fits"] else "does NOT fit"
    text = (
        f"Verdict: {what} {answer} in {budget} {on}: "
        f"predicted {row['predicted_cuda_mib']:,.0f} MiB ({row['predicted_reserved_mib']:,.0f}"
        f" MiB reserved by the allocator + {row['cudnn_workspace_mib']:,.0f} MiB cuDNN "
        f"workspace + {row['context_mib']:,.0f} MiB CUDA context), headroom "
        f"{row['headroom_mib']:,.0f} MiB."
    )
    for caveat in cards.caveats(row.get("card") or "", row["precision"], row["compile"]):
        text += f" {caveat}."
    if all(row.get(c) is not None for c in MEASURED_WORDS):
        if named:
            text += f" The prediction is for {named}; the measurement is of {row['device']}."
        text += (
            f" Measured on {row['device']}: {row['peak_alloc_mib']:,.0f} MiB allocated, "
            f"{row['peak_reserved_mib']:,.0f} MiB reserved (prediction off by "
            f"{row['reserved_error_pct']:+.1f}%)."
        )
    return text


def _ranks_words(row: dict) -> str:
    """How the row's ranks share the model; nothing for one rank without a parallel wrapper.
    --batch is one rank's. One rank under DDP or FSDP2 is named: its step is traced wrapped."""
    ranks, mode = row.get("ranks", 1), row.get("parallel") or "none"
    if ranks == 1:
        return "" if mode == "none" else (f" on 1 rank ({mode}, gradient sync {row['grad_sync']})")
    return f" per rank of {ranks} ({mode}, gradient sync {row['grad_sync']})"


# The figures the verdict says of a measured step, where a card measured it (the sentence about
# them is left out elsewhere); the predicted ones are in every ok row (verdict="every row").
MEASURED_WORDS = ["peak_alloc_mib", "peak_reserved_mib", "reserved_error_pct"]
FIGURES = (
    TIMED["step_s"].show(),
    TIMED["step_s_min"],
    TIMED["step_s_max"],
    TIMED["img_per_s"].show(),
    TIMED["warmup_s"],
    TIMED["peak_alloc_mib"].show(),
    TIMED["peak_reserved_mib"].show(),
    TIMED["warmup_peak_alloc_mib"],
    TIMED["warmup_peak_reserved_mib"],
    TIMED["nvml_peak_mib"],
    TIMED["nvml_process_peak_mib"],
    TIMED["nvml_baseline_mib"],
    TIMED["rss_peak_mib"],
    TIMED["cpu_util_pct"],
    # The tracked pass: live tensors of a steady-state step on this device, by category
    Figure("tracked_peak_mib", "MiB", shown=True),
    *(Figure(f"tracked_{c}_mib", "MiB") for c in CATEGORIES),
    # The prediction for a CUDA card (bench.predict.fit) and its verdict against the budget
    Figure("target_sm", "", source="predicted", verdict="every row"),
    Figure("predicted_alloc_mib", "MiB", source="predicted"),
    Figure("predicted_reserved_mib", "MiB", shown=True, source="predicted", verdict="every row"),
    Figure("cublas_workspace_mib", "MiB", source="predicted"),
    Figure("cudnn_workspace_mib", "MiB", source="predicted", verdict="every row"),
    Figure("context_mib", "MiB", source="predicted", verdict="every row"),
    Figure("predicted_cuda_mib", "MiB", shown=True, source="predicted", verdict="every row"),
    Figure("budget_mib", "MiB", shown=True, source="predicted", verdict="every row"),
    Figure("fits", "", bool, shown=True, source="predicted", verdict="every row"),
    Figure("headroom_mib", "MiB", shown=True, source="predicted", verdict="every row", signed=True),
    # The prediction's error where the card measured the same step
    Figure("alloc_error_pct", "%", cuda=True, signed=True),
    Figure("reserved_error_pct", "%", shown=True, cuda=True, signed=True),
    # --find-max-batch: where the row's batch comes from, measured or predicted
    Figure("max_batch_source", "", str, source="setting", shown=True),
)


def measure(spec: BenchSpec, context: RunContext | None = None) -> dict:
    if spec.find_max_batch:
        return max_batch_row(spec, context)
    device = cuda.resolve(spec.device)
    target, context_mib = card(spec, device)
    # Pass 0, the answer first: the prediction, said before the long measured passes. Under
    # torchrun rank 0 predicts for every card: its share of a sharded model is the largest.
    figures: dict = predict_fit(spec, target, context_mib).figures() if parallel.rank() == 0 else {}
    if spec.predict_only:
        return figures
    if context is not None and figures:
        context.say(
            f"Predicted for a CUDA sm{figures['target_sm']:g} card: "
            f"{'fits' if figures['fits'] else 'does NOT fit'} in "
            f"{figures['budget_mib'] / 1024:.3g} GiB, {figures['predicted_cuda_mib']:,.0f}"
            f" MiB, headroom {figures['headroom_mib']:,.0f} MiB. Measuring the step "
            "now (--predict-only stops here)."
        )

    # Pass 1: timed; its trainer is freed when it returns.
    figures.update(timed_training(spec, device, say=context.say if context else None))
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # Pass 2: tracked tensors on this device (eager, whatever the compile axis says).
    tracked = step_peak(spec, fake=False)
    figures["tracked_peak_mib"] = tracked.mib()
    figures.update({f"tracked_{c}_mib": tracked.mib(c) for c in CATEGORIES})

    # The predictor's error where the card measured the same step.
    if figures.get("peak_reserved_mib") and "predicted_alloc_mib" in figures:
        figures["alloc_error_pct"] = _error_pct(
            figures["predicted_alloc_mib"], figures["peak_alloc_mib"]
        )
        figures["reserved_error_pct"] = _error_pct(
            figures["predicted_reserved_mib"] + figures["cudnn_workspace_mib"],
            figures["peak_reserved_mib"],
        )
    return figures


def card(spec: BenchSpec, device: torch.device) -> tuple[tuple[int, int], float]:
    """The prediction's target and context: the --card's capability, else this card's on CUDA
    (the default off it); the context measured on CUDA (the process capped to the budget),
    the allowance elsewhere."""
    if device.type != "cuda":
        return spec.target, spec.context_mib
    context_mib = cuda.start(device, spec.precision)["measured_context_mib"]
    cuda.cap_to_budget(device, spec.budget_mib, context_mib)
    # A named card stays the prediction's target: the card present is measured, capped to the
    # named card's budget, and the verdict says both.
    return (spec.target if spec.card else cuda.capability(device)), context_mib


def _error_pct(predicted: float, measured: float) -> float:
    return 100.0 * (predicted - measured) / measured


def max_batch_row(spec: BenchSpec, context: RunContext | None = None) -> dict:
    """The row of --find-max-batch: the largest batch, where it came from, and its figures."""
    device = cuda.resolve(spec.device)
    target, context_mib = card(spec, device)
    if device.type == "cuda" and not spec.predict_only:
        source = "measured"
        best = largest_batch(spec, lambda s: fits_measured(s, device), source)
        fitter = None
    else:
        # Two traces answer every batch (bench.predict.fit.SpecFit); the answer is traced too.
        source = "predicted"
        fitter = SpecFit(spec, target, context_mib)
        best = fitter.largest_batch()
        if fitter.model.unpaired and context is not None:
            context.say(f"Each batch traced: {fitter.model.unpaired}.")
    if best == 0:
        raise torch.OutOfMemoryError(f"not even batch 1 fits {budget_words(spec.budget_mib)}")
    found = spec.replace(batch=best)
    figures = fitter.at(best) if fitter else predict_fit(found, target, context_mib)
    return {
        "batch": best,
        "effective_batch": found.effective_batch,
        "budget_mib": spec.budget_mib,
        "max_batch_source": source,
        **figures.figures(),
    }


HARNESS = Harness(
    name="memory",
    figures=FIGURES,
    notes=[
        "MiB = 2^20 bytes. step_s: median seconds per optimizer step (batch x accum images); "
        "img_per_s = images / measured seconds; warmup_s: the warm-up steps, compilation "
        "included. A warm-up step is one micro-batch and an optimizer step whatever the "
        "accumulation: it warms kernels, allocator and optimizer state without a whole "
        "accumulated step (what it skips: nothing the measured step needs).",
        "peak_alloc_mib / peak_reserved_mib: CUDA caching allocator peaks of the measured "
        "steps, after warm-up (warmup_peak_*: the warm-up's own, compilation and autotuning "
        "included; all empty on CPU). nvml_peak_mib: device memory used per NVML, CUDA "
        "context and other processes included; nvml_process_peak_mib: this process's own "
        "(empty off NVIDIA). rss_peak_mib: peak resident memory of the spec's process.",
        "tracked_peak_mib: live-tensor peak of one steady-state optimizer step on this "
        "device, split into parameters, gradients, optimizer state, EMA copy, activations "
        "and temporaries.",
        "Prediction for a CUDA card of compute capability target_sm (this card on CUDA): the "
        "step traced on fake tensors with CUDA's rules (bool dropout masks, CUDA autocast's "
        "op lists, the card's attention kernel), its allocations replayed through a model of "
        "the CUDA caching allocator: predicted_alloc_mib and predicted_reserved_mib are its "
        "peak allocated and reserved, with the cuBLAS workspaces of the forward and the "
        "backward thread (cublas_workspace_mib, both together) among them. "
        f"predicted_cuda_mib = predicted_reserved_mib + cudnn_workspace_mib (an allowance of "
        f"{CUDNN_ALLOWANCE_MIB:g} MiB for convolution workspaces, not traced) + context_mib "
        "(the CUDA context: an allowance off CUDA, measured on CUDA). fits: "
        "predicted_cuda_mib <= budget_mib; headroom_mib = budget_mib - predicted_cuda_mib.",
        "On CUDA, alloc_error_pct and reserved_error_pct = 100 x (predicted - measured) / "
        "measured, for allocated and for reserved (with the cuDNN allowance).",
    ],
    verdict=verdict,
    measure=measure,
)
