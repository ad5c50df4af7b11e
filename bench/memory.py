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

import sys

from bench.harnesses.memory import HARNESS
from bench.sweep.cli import build_parser, run_cli, specs_from_args


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
