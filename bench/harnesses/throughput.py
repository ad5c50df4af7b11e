"""python -m bench.throughput: how fast does a configuration train, and how much of the
device's measured peak does it use (MFU)?

Per spec: the shared timed training pass (warm-up apart, device-synchronized steps), the FLOPs
of one optimizer step counted once on an eager model over fake tensors, and the device's peak
FLOP/s at that precision from a probe of large matmuls and convolutions, cached in
<out>/peak_flops.json per device, precision, torch version and thread count. A spec across ranks
(--parallel ddp or fsdp) runs one more optimizer step after the timed ones, under the profiler:
the collectives it issues, the bytes they carry and the share of its time spent inside them."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.cards import CARDS
from bench.core import Harness, RunContext
from bench.measure import cuda
from bench.measure.collectives import measure_step
from bench.measure.flops import training_step_flops
from bench.measure.peak import peak_flops
from bench.measure.training import CUDA_COLUMNS, CUDA_NOTE, timed_training
from bench.models.workload import TrainStep
from bench.predict.runtime import PAPER_TRAIN_STEPS, training_figures
from bench.spec import BenchSpec, SpecError
from bench.sweep.cli import build_parser, run_cli, specs_from_args
from bench.tables.ratios import impl_ratios, rank_scaling
from bench.tables.results import ResultsError, format_value

PEAK_CACHE = "peak_flops.json"
COMM_COLUMNS = ["collectives_per_step", "comm_mib_per_step", "comm_share_pct", "collectives"]
PEAK_FIGURES = ("peak_flops", "matmul_flops", "conv_flops")
# The time prediction for the row's --card (bench.predict.runtime); never a measurement.
PREDICTED = [
    "predicted_step_s",
    "predicted_step_s_low",
    "predicted_step_s_high",
    "predicted_img_per_s",
    "predicted_train_h",
    "predicted_train_h_low",
    "predicted_train_h_high",
    "predicted_train_steps",
    "predicted_kernels",
    "predicted_exposed_comm_s",
    "predicted_torch_roofline_s",
]


def read_peaks(cache: Path) -> dict[str, dict]:
    """The probe results cached in <out>/peak_flops.json ({} before the first probe);
    ResultsError, naming the file, when it is not such a record."""
    if not cache.exists():
        return {}
    try:
        table = json.loads(cache.read_text())
        entries = table.values() if isinstance(table, dict) else [None]
        valid = all(
            isinstance(e, dict)
            and isinstance(e.get("probe"), str)
            and all(isinstance(e.get(k), (int, float)) for k in PEAK_FIGURES)
            for e in entries
        )
    except (OSError, UnicodeDecodeError, ValueError):
        valid = False
    if not valid:
        raise ResultsError(
            f"{cache} is not a record of peak FLOP/s; move it aside (the next "
            "throughput run measures the peaks again)."
        )
    return table


def peaks_measured(rows: list[dict], context: RunContext) -> list[str]:
    """The MFU denominators, stated once above the table."""
    return [
        f"Peak {key}: {entry['peak_flops'] / 1e12:.3g} TFLOP/s measured ({entry['probe']}; "
        f"matmul {entry['matmul_flops'] / 1e12:.3g}, conv {entry['conv_flops'] / 1e12:.3g})."
        for key, entry in read_peaks(context.out / PEAK_CACHE).items()
    ]


def specs(args: argparse.Namespace) -> list[BenchSpec]:
    read_peaks(Path(args.out) / PEAK_CACHE)  # a damaged cache: one line before any spec runs
    if args.train_steps < 1:
        raise SpecError(f"--train-steps {args.train_steps} is not allowed: it must be >= 1.")
    grid = [s.replace(predict_only=args.predict_only) for s in specs_from_args(args)]
    check_predict_only(grid)
    return grid


def check_predict_only(specs: list[BenchSpec]) -> None:
    """A prediction is for a card: --predict-only without --card has nothing to answer."""
    if any(s.predict_only and not s.card for s in specs):
        raise SpecError(
            f"--predict-only needs --card: the card to predict for ({', '.join(CARDS)})."
        )


def predicted(spec: BenchSpec, context: RunContext | None) -> dict:
    """The row's predicted columns for its --card (none without one)."""
    key = spec.card
    if not key:
        return {}
    options = context.options if context is not None else {}
    return training_figures(spec, CARDS[key], options.get("train_steps", PAPER_TRAIN_STEPS))


def predicted_verdict(row: dict) -> str | None:
    """The predicted time of a row with --card, in words with its likely range (rows written
    before the range have none); nothing for a row without a prediction."""
    if row["status"] != "ok" or row.get("predicted_step_s") is None:
        return None
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
        f"{likely}."
    )


def communication(spec: BenchSpec, device):
    """The tracker of the extra step, for `timed_training` to run after the timed steps."""

    def after(step: TrainStep) -> dict:
        # DDP rebuilds its gradient buckets at the first forward after the first backward,
        # broadcasting the new order from rank 0: a one-off that the third step on never has.
        for _ in range(max(0, 2 - spec.warmup_steps - spec.measure_steps)):
            step()
        return measure_step(step, device, spec.ranks).figures()

    return after


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
    figure_columns=[
        "step_s",
        "step_s_min",
        "step_s_max",
        "img_per_s",
        "warmup_s",
        "compile_s",
        "gflop_per_step",
        "achieved_tflops",
        "peak_tflops",
        "mfu",
        "peak_alloc_mib",
        "peak_reserved_mib",
        "nvml_peak_mib",
        "rss_peak_mib",
        "cpu_util_pct",
        *CUDA_COLUMNS,
        *COMM_COLUMNS,
        *PREDICTED,
    ],
    display_columns=[
        "status",
        "step_s",
        "step_s_min",
        "step_s_max",
        "img_per_s",
        "compile_s",
        "gflop_per_step",
        "achieved_tflops",
        "peak_tflops",
        "mfu",
        *COMM_COLUMNS,
        "predicted_step_s",
        "predicted_img_per_s",
        "predicted_train_h",
        "predicted_train_h_low",
        "predicted_train_h_high",
    ],
    figure_kinds={"collectives": str},
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
    verdict=lambda row: predicted_verdict(row),
    compare=lambda rows, context: (
        peaks_measured(rows, context)
        + impl_ratios(rows, "img_per_s", "img/s", also=("mfu",))
        + rank_scaling(rows, "img_per_s", "img/s")
    ),
    measure=measure,
    options=lambda args: {"train_steps": args.train_steps},
)


def add_predict_only(parser: argparse.ArgumentParser) -> None:
    """--predict-only, as bench.throughput and bench.sampling take it."""
    parser.add_argument(
        "--predict-only",
        action="store_true",
        help="with --card: the predicted time alone, in seconds, nothing measured "
        "(the measured columns stay empty)",
    )


def add_prediction_options(parser: argparse.ArgumentParser) -> None:
    add_predict_only(parser)
    parser.add_argument(
        "--train-steps",
        type=int,
        default=PAPER_TRAIN_STEPS,
        help="optimizer steps of a whole training run, for predicted_train_h "
        "(default %(default)s: Ho et al. 2020's CIFAR-10 run)",
    )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = build_parser(
        "python -m bench.throughput",
        __doc__,
        defaults={"batch": "8", "accum": "1", "precision": "fp32,bf16", "steps": 5, "warmup": 1},
    )
    add_prediction_options(parser)
    return run_cli(HARNESS, parser, argv, make_specs=specs)


if __name__ == "__main__":
    main(sys.argv[1:])
