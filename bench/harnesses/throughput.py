"""The throughput harness: how fast does a configuration train, and how much of the device's
measured peak does it use (MFU)? Its HARNESS: the figures of a row and the notes; the passes
are bench/passes/training.py and bench/passes/peak.py, the command line bench/throughput.py."""

from __future__ import annotations

from bench import cards
from bench.cards import CARDS
from bench.core import Harness, RunContext
from bench.figure import Figure
from bench.measure import cuda
from bench.measure.flops import training_step_flops
from bench.passes.peak import PEAK_CACHE, peak_flops, read_peaks
from bench.passes.training import CUDA_NOTE, TIMED, communication, timed_training
from bench.predict.runtime import PAPER_TRAIN_STEPS, training_figures
from bench.spec import BenchSpec
from bench.tables.ratios import impl_ratios, rank_scaling
from bench.tables.results import format_value

FIGURES = (
    TIMED["step_s"].show(),
    TIMED["step_s_min"].show(),
    TIMED["step_s_max"].show(),
    TIMED["img_per_s"].show(),
    TIMED["warmup_s"],
    Figure("compile_s", "s", shown=True),
    Figure("gflop_per_step", "GFLOP", shown=True),
    Figure("achieved_tflops", "TFLOP/s", shown=True),
    Figure("peak_tflops", "TFLOP/s", shown=True),
    Figure("mfu", "", shown=True),
    TIMED["peak_alloc_mib"],
    TIMED["peak_reserved_mib"],
    TIMED["nvml_peak_mib"],
    TIMED["rss_peak_mib"],
    TIMED["cpu_util_pct"],
    TIMED["measured_context_mib"],
    TIMED["warmup_peak_alloc_mib"],
    TIMED["warmup_peak_reserved_mib"],
    TIMED["nvml_process_peak_mib"],
    TIMED["nvml_baseline_mib"],
    # The collectives of one more step, across ranks (bench.measure.collectives)
    Figure("collectives_per_step", "", shown=True),
    Figure("comm_mib_per_step", "MiB", shown=True),
    Figure("comm_share_pct", "%", shown=True),
    Figure("collectives", "", str, shown=True),
    # The time prediction for the row's --card (bench.predict.runtime); never a measurement.
    # The verdict reads the step, images/s, hours and steps; the likely range (the public runs'
    # leave-one-out band) only where a row has it: rows written before it have none.
    Figure("predicted_step_s", "s", source="predicted", shown=True, verdict="predicted rows"),
    Figure("predicted_step_s_low", "s", source="predicted"),
    Figure("predicted_step_s_high", "s", source="predicted"),
    Figure(
        "predicted_img_per_s", "img/s", source="predicted", shown=True, verdict="predicted rows"
    ),
    Figure("predicted_train_h", "h", source="predicted", shown=True, verdict="predicted rows"),
    Figure("predicted_train_h_low", "h", source="predicted", shown=True),
    Figure("predicted_train_h_high", "h", source="predicted", shown=True),
    Figure("predicted_train_steps", "", source="predicted", verdict="predicted rows"),
    Figure("predicted_kernels", "", source="predicted"),
    Figure("predicted_exposed_comm_s", "s", source="predicted"),
    Figure("predicted_torch_roofline_s", "s", source="predicted"),
)


def peaks_measured(rows: list[dict], context: RunContext) -> list[str]:
    """The MFU denominators, stated once above the table."""
    return [
        f"Peak {key}: {entry['peak_flops'] / 1e12:.3g} TFLOP/s measured ({entry['probe']}; "
        f"matmul {entry['matmul_flops'] / 1e12:.3g}, conv {entry['conv_flops'] / 1e12:.3g})."
        for key, entry in read_peaks(context.out / PEAK_CACHE).items()
    ]


def predicted(spec: BenchSpec, context: RunContext | None) -> dict:
    """The row's predicted columns for its --card (none without one)."""
    key = spec.card
    if not key:
        return {}
    options = context.options if context is not None else {}
    return training_figures(spec, CARDS[key], options.get("train_steps", PAPER_TRAIN_STEPS))


def predicted_verdict(row: dict) -> str | None:
    """The predicted time of a row with --card, in words with its likely range (rows written
    before the range have none) and what the card does not run as predicted
    (bench.cards.caveats); nothing for a row without a prediction."""
    if row["status"] != "ok" or row.get("predicted_step_s") is None:
        return None
    said = cards.caveats(row["card"], row["precision"], row["compile"])
    v = {k: format_value(row.get(k)) for k in row}
    ranks = f", one rank of {row['ranks']}" if row.get("ranks", 1) > 1 else ""
    likely = ""
    if row.get("predicted_train_h_low") is not None:
        likely = f", likely {v['predicted_train_h_low']}-{v['predicted_train_h_high']} h"
    steps = f"{int(row['predicted_train_steps']):,}"
    return (
        f"Batch {row['batch']} x {row['accum']}, {row['precision']}{ranks} on "
        f"{CARDS[row['card']].name}: PREDICTED {v['predicted_step_s']} s per step, "
        f"{v['predicted_img_per_s']} images/s; {steps} steps take {v['predicted_train_h']} h"
        f"{likely}" + "".join(f"; {c}" for c in said) + "."
    )


def measure(spec: BenchSpec, context: RunContext) -> dict:
    prediction = predicted(spec, context)
    if spec.predict_only:
        return prediction
    device = cuda.resolve(spec.device)
    tracker = communication(spec, device) if spec.parallel != "none" else None
    figures = {**cuda.start(device, spec.precision), **timed_training(spec, device, after=tracker)}
    if spec.compile != "off":
        # A warm-up step is one micro-batch: about 1/accum of a measured step.
        warm_step_s = figures["step_s"] / spec.accum
        figures["compile_s"] = max(0.0, figures["warmup_s"] - spec.warmup_steps * warm_step_s)
    flops = training_step_flops(spec)
    peak = peak_flops(device, spec.precision, context.out / PEAK_CACHE)["peak_flops"]
    achieved = flops / figures["step_s"]
    figures.update(
        gflop_per_step=flops / 1e9,
        achieved_tflops=achieved / 1e12,
        peak_tflops=peak / 1e12,
        mfu=achieved / peak,
    )
    return {**figures, **prediction}


HARNESS = Harness(
    name="throughput",
    figures=FIGURES,
    notes=[
        "step_s: median seconds per optimizer step over --steps measured steps (min, max "
        "beside it); img_per_s = batch x accum x steps / measured seconds.",
        "compile_s: the warm-up steps' time (one micro-batch and an optimizer step each) less "
        "as many micro-batches of the measured step's pace (torch.compile's compilation); "
        "empty with --compile off.",
        "gflop_per_step: 10^9 FLOPs of one optimizer step (matmul, convolution and attention,"
        " forward and backward; a multiply-add counts 2), counted on an eager copy. "
        "achieved_tflops = gflop_per_step / step_s / 1000; peak_tflops: the probe's measured "
        "peak at this precision; mfu = achieved / peak (0 to 1).",
        "Memory columns as in bench.memory (MiB = 2^20 bytes; CUDA columns empty on CPU).",
        CUDA_NOTE,
        "Communication, for --parallel ddp or fsdp (empty for none): one more optimizer step "
        "after the timed ones, under torch.profiler on every rank, the row's figures rank "
        "0's. collectives_per_step: the process-group collectives it issued (c10d "
        "operators, DDP's bucket all-reduces and FSDP2's all-gathers included); collectives: "
        "their count and MiB by kind. comm_mib_per_step: the MiB of their messages, each "
        "collective's whole tensor (all-reduce and broadcast: the tensor; all-gather: the "
        "gathered output; reduce-scatter: the input before scattering), not the bytes on the "
        "wire, which the algorithm sets (a ring all-reduce sends 2(N-1)/N of it per rank). "
        "comm_share_pct: the time inside collectives (gloo's own ranges on its threads, "
        "NCCL's kernels; overlapping ones once) as a percentage of that step's wall time; it "
        "includes waiting for the slowest rank, and DDP overlaps its all-reduces with "
        "backward, so it is not all time the step loses. Empty where the backend records no "
        "such ranges. The profiler slows the step, so the share is of a profiled step. With "
        "fewer than two steps before it (--warmup + --steps), one unprofiled step runs first: "
        "DDP's one-off bucket rebuild would be counted.",
        "Scaling (the sentences below the table): a spec on N ranks against the same spec on "
        "1 rank (the same per-rank --batch and every other axis, medians over --repeats): "
        "efficiency = img/s at N ranks / (N x img/s at 1 rank), 100% for perfect scaling; and "
        "a 1-rank spec spread by ddp or fsdp against parallel none: the wrapper's own cost.",
        "PREDICTED, not measured (with --card; --predict-only: these alone): "
        "predicted_step_s for one optimizer step on that card (one rank of --ranks, its "
        "gradient exchange included), the step-time model over the step's traced kernels "
        "(bench.predict.runtime, docs/throughput.md), likely between predicted_step_s_low and "
        "_high (the public runs' leave-one-out error range); predicted_img_per_s = batch x "
        "accum / predicted_step_s; predicted_train_h = predicted_step_s x "
        "predicted_train_steps / 3600 (--train-steps, default the paper's 800k), likely "
        "between predicted_train_h_low and _high; predicted_kernels: kernels launched per "
        "step; predicted_exposed_comm_s: the part of the step the compute waits for the "
        "exchange; predicted_torch_roofline_s: the same kernels under torch's "
        "RuntimeEstimator formula.",
    ],
    verdict=predicted_verdict,
    compare=lambda rows, context: (
        peaks_measured(rows, context)
        + impl_ratios(rows, "img_per_s", "img/s", also=("mfu",))
        + rank_scaling(rows, "img_per_s", "img/s")
    ),
    measure=measure,
)
