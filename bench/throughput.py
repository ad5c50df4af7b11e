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
    run_cli,
    specs_from_args,
)


def specs(args: argparse.Namespace) -> list[BenchSpec]:
    read_peaks(Path(args.out) / PEAK_CACHE)  # a damaged cache: one line before any spec runs
    if args.train_steps < 1:
        raise SpecError(f"--train-steps {args.train_steps} is not allowed: it must be >= 1.")
    grid = [s.replace(predict_only=args.predict_only) for s in specs_from_args(args)]
    check_predict_only(grid)
    return grid


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
    return run_cli(
        HARNESS,
        parser,
        argv,
        make_specs=specs,
        options=lambda args: {"train_steps": args.train_steps},
    )


if __name__ == "__main__":
    main(sys.argv[1:])
