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
import sys
from pathlib import Path

from bench.harnesses.throughput import HARNESS
from bench.parsers import SpecError
from bench.passes.peak import PEAK_CACHE, read_peaks
from bench.predict.runtime import PAPER_TRAIN_STEPS
from bench.spec import BenchSpec
from bench.sweep.cli import (
    add_predict_only,
    build_parser,
    check_predict_only,
    refuse_unused,
    run_cli,
    specs_from_args,
)


def specs(args: argparse.Namespace) -> list[BenchSpec]:
    read_peaks(Path(args.out) / PEAK_CACHE)  # a damaged cache: one line before any spec runs
    refuse_unused(args, "throughput", ("budget", "cuda_context_mib"))
    if args.find_max_batch:  # the shared option, searched by bench.memory alone
        raise SpecError(
            "--find-max-batch searches the largest batch that fits the budget (python -m "
            "bench.memory); bench.throughput times the batches --batch gives."
        )
    grid = [s.replace(predict_only=args.predict_only) for s in specs_from_args(args)]
    check_predict_only(grid)
    return grid


# A whole run's optimizer steps: the paper's is 800k, the longest published diffusion runs a few
# million; past a thousand times the paper's, a number is a typo, not a plan.
MAX_TRAIN_STEPS = 10**9


def train_steps(text: str) -> int:
    """--train-steps: a whole number from 1 to MAX_TRAIN_STEPS, written out or as 8e5; one
    bound, whichever way it is written (1e30 and its 31 digits alike)."""
    allowed = f"give a whole number of steps from 1 to {MAX_TRAIN_STEPS:,}, e.g. 800000 or 8e5"
    try:
        value = int(text)  # exact, however many digits
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number: {allowed}") from None
    if not (1 <= value <= MAX_TRAIN_STEPS and value == int(value)):
        raise argparse.ArgumentTypeError(f"{text} is not allowed: {allowed}")
    return int(value)


def add_prediction_options(parser: argparse.ArgumentParser) -> None:
    add_predict_only(parser)
    parser.add_argument(
        "--train-steps",
        type=train_steps,
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
    return run_cli(
        HARNESS,
        parser,
        argv,
        make_specs=specs,
        options=lambda args: {"train_steps": args.train_steps},
    )


if __name__ == "__main__":
    main(sys.argv[1:])
