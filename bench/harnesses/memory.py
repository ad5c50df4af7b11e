"""python -m bench.memory: does a training configuration fit the memory budget, with what
headroom, and how fast does it run?

Each spec is predicted first, its verdict printed at once, then measured in passes that no
tracker slows:
  0. predicted: the step on fake tensors under CUDA's rules, replayed through a model of the
     CUDA caching allocator, plus workspaces and the context: the `fits` verdict for a CUDA card
     of --budget, computed on any machine (--predict-only: this pass alone);
  1. timed: warm-up step(s), then measured optimizer steps; CUDA allocator peaks, NVML, RSS;
  2. tracked: the live-tensor peak of a steady-state step on this device, by category."""

from __future__ import annotations

import functools
import gc
import sys
from collections.abc import Callable

import torch

from bench import cards
from bench.core import Harness, RunContext
from bench.measure import cuda
from bench.measure.tracked import CATEGORIES
from bench.measure.training import timed_training
from bench.models.workload import train_step
from bench.predict.trace import DEFAULT_TARGET, predict, step_peak
from bench.spec import DEFAULT_BUDGET_MIB, BenchSpec, architecture_words
from bench.sweep.cli import build_parser, run_cli, specs_from_args
from ddpm import parallel
from ddpm.device import synchronize

TRACKED = [f"tracked_{c}_mib" for c in CATEGORIES]
# Transient convolution workspaces are not traced. torch's cuDNN path tries the next algorithm
# when a workspace allocation fails, so workspaces take what is free rather than cause an OOM;
# this allowance is room for the chosen algorithms' workspaces.
CUDNN_ALLOWANCE_MIB = 32.0
# Where --find-max-batch stops searching, by where its answer comes from. A measured probe runs
# two real steps of that batch, so its search stops at 65,536; a predicted probe traces fake
# tensors, whose cost does not grow with the batch, so its search goes on to 16,777,216. A batch
# at the limit is a lower bound, and the verdict says so.
SEARCH_LIMITS = {"measured": 1 << 16, "predicted": 1 << 24}


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
        return f"{what}: {row['status']} ({row['error']})."
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


# The verdict's figures: the predicted ones in every ok row, the measured ones where a card
# measured the step (the sentence about them is left out elsewhere).
VERDICT_COLUMNS = [
    "target_sm",
    "predicted_cuda_mib",
    "predicted_reserved_mib",
    "cudnn_workspace_mib",
    "context_mib",
    "budget_mib",
    "fits",
    "headroom_mib",
]
MEASURED_WORDS = ["peak_alloc_mib", "peak_reserved_mib", "reserved_error_pct"]
PREDICTED = [
    "target_sm",
    "predicted_alloc_mib",
    "predicted_reserved_mib",
    "cublas_workspace_mib",
    "cudnn_workspace_mib",
    "context_mib",
    "predicted_cuda_mib",
    "budget_mib",
    "fits",
    "headroom_mib",
]


def measure(spec: BenchSpec, context: RunContext | None = None) -> dict:
    if spec.find_max_batch:
        return max_batch_row(spec)
    device = cuda.resolve(spec.device)
    target, context_mib = card(spec, device)
    # Pass 0, the answer first: the prediction, said before the long measured passes. Under
    # torchrun rank 0 predicts for every card: its share of a sharded model is the largest.
    figures: dict = prediction(spec, target, context_mib) if parallel.rank() == 0 else {}
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


def prediction(
    spec: BenchSpec, target: tuple[int, int] = DEFAULT_TARGET, context_mib: float | None = None
) -> dict:
    """The predicted figures of a row, and the verdict they give against the budget."""
    predicted = predict(spec, target)
    context_mib = spec.context_mib if context_mib is None else context_mib
    total = predicted.mib("reserved") + CUDNN_ALLOWANCE_MIB + context_mib
    return {
        "target_sm": target[0] * 10 + target[1],
        "predicted_alloc_mib": predicted.mib("alloc"),
        "predicted_reserved_mib": predicted.mib("reserved"),
        "cublas_workspace_mib": predicted.mib("cublas_workspace"),
        "cudnn_workspace_mib": CUDNN_ALLOWANCE_MIB,
        "context_mib": context_mib,
        "predicted_cuda_mib": total,
        "budget_mib": spec.budget_mib,
        "fits": total <= spec.budget_mib,
        "headroom_mib": spec.budget_mib - total,
    }


def largest(fits: Callable[[int], bool], limit: int) -> int:
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


def _fits_measured(spec: BenchSpec, device: torch.device) -> bool:
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


def max_batch_row(spec: BenchSpec) -> dict:
    """The row of --find-max-batch: the largest batch, where it came from, and its figures."""
    device = cuda.resolve(spec.device)
    target, context_mib = card(spec, device)
    # Each batch is predicted once: the answer's row reuses its probe, one trace (2 s for
    # ddpm-256 here) fewer than predicting it again (bench/PERF.md).
    probes = functools.cache(lambda n: prediction(spec.replace(batch=n), target, context_mib))
    if device.type == "cuda" and not spec.predict_only:
        source = "measured"
        best = largest(
            lambda n: _fits_measured(spec.replace(batch=n), device), SEARCH_LIMITS[source]
        )
    else:
        source = "predicted"
        best = largest(lambda n: probes(n)["fits"], SEARCH_LIMITS[source])
    if best == 0:
        raise torch.OutOfMemoryError(f"not even batch 1 fits {spec.budget_mib:g} MiB")
    found = spec.replace(batch=best)
    return {
        "batch": best,
        "effective_batch": found.effective_batch,
        "budget_mib": spec.budget_mib,
        "max_batch_source": source,
        **probes(best),
    }


HARNESS = Harness(
    name="memory",
    figure_columns=[
        "step_s",
        "step_s_min",
        "step_s_max",
        "img_per_s",
        "warmup_s",
        "peak_alloc_mib",
        "peak_reserved_mib",
        "warmup_peak_alloc_mib",
        "warmup_peak_reserved_mib",
        "nvml_peak_mib",
        "nvml_process_peak_mib",
        "nvml_baseline_mib",
        "rss_peak_mib",
        "cpu_util_pct",
        "tracked_peak_mib",
        *TRACKED,
        *PREDICTED,
        "alloc_error_pct",
        "reserved_error_pct",
        "max_batch_source",
    ],
    display_columns=[
        "status",
        "step_s",
        "img_per_s",
        "peak_alloc_mib",
        "peak_reserved_mib",
        "tracked_peak_mib",
        "predicted_reserved_mib",
        "predicted_cuda_mib",
        "budget_mib",
        "fits",
        "headroom_mib",
        "reserved_error_pct",
        "max_batch_source",
    ],
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
    verdict_columns=VERDICT_COLUMNS,
    predicted_verdict_columns=VERDICT_COLUMNS,  # a --predict-only row's verdict reads them too
    signed_columns=["headroom_mib", "alloc_error_pct", "reserved_error_pct"],
    figure_kinds={"fits": bool, "max_batch_source": str},
    measure=measure,
)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = build_parser(
        "python -m bench.memory",
        __doc__,
        defaults={"batch": "2", "accum": "64", "precision": "fp32", "steps": 1, "warmup": 1},
        helps={
            "steps": "optimizer steps timed per spec in the measured pass (its peaks cover "
            "them); the tracked pass and the prediction take one steady-state step "
            "(default %(default)s)"
        },
    )
    parser.add_argument(
        "--predict-only",
        action="store_true",
        help="the verdict from the prediction alone, in seconds: no timed or "
        "tracked pass (their columns stay empty)",
    )
    return run_cli(
        HARNESS,
        parser,
        argv,
        lambda args: [
            spec.replace(predict_only=args.predict_only) for spec in specs_from_args(args)
        ],
    )


if __name__ == "__main__":
    main(sys.argv[1:])
