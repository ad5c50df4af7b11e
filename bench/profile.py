"""python -m bench.profile: where do the time and memory of a training (or sampling) step go?

    python -m bench.profile                       # ddpm-cifar10, batch 2: about 20 s on CPU
    python -m bench.profile --preset tiny --target train,sample
    python -m bench.profile --batch 8 --memory-snapshot                  # on CUDA

Per spec, torch.profiler records optimizer steps (or, for --target sample, DDIM-50 denoising
steps) under schedule(wait, warmup, active, repeat): prof.step() once per step, so each
ProfilerStep#N range in the trace is exactly one step. Here --warmup and --steps are the
schedule's warm-up and active steps (nothing is timed apart: profiled time is not a benchmark
figure; bench.throughput gives that). Shapes and memory are always recorded; Python call stacks,
with the nn.Module calls in them, by default (--no-stack leaves them out); FLOPs on request.
Each cycle's trace goes to <out>/traces/<spec name>/ through tensorboard_trace_handler, so
`tensorboard --logdir <out>/traces`, Perfetto and Holistic Trace Analysis read it as is.

The row says, without TensorBoard: the mean step time over the active steps, the share of it
spent in each ddpm phase range (training: data, forward, loss, backward, unscale_clip,
optimizer, ema; sampling: denoise_step) and in nothing named (other_pct), and the peak memory
the profiler saw. The top operators by self time go to <trace dir>/operators.csv and below the
table. <trace dir>/summary.html shows the phase shares, the top operators and memory over the
profiled steps on one self-contained page that opens offline."""

from __future__ import annotations

import argparse
import sys

from bench.harnesses.profile import HARNESS
from bench.parsers import SpecError, parse_choices
from bench.spec import BenchSpec
from bench.sweep.cli import build_parser, refuse_unused, run_cli, specs_from_args

TARGETS = ("train", "sample")

SAMPLE_SAMPLER, SAMPLE_STEPS = "ddim", 50


def make_specs(args: argparse.Namespace) -> list[BenchSpec]:
    """Every check first; then one spec per (other axes, target). A sample spec is a DDIM-50
    spec with accumulation 1, so its name, and its trace folder, differ from training's."""
    if args.find_max_batch:
        raise SpecError(
            "--find-max-batch searches a batch (python -m bench.memory); profiling takes --batch."
        )
    refuse_unused(args, "profile", ("card", "budget", "cuda_context_mib"))
    for option, value, minimum in (
        ("--wait", args.wait, 0),
        ("--repeat", args.repeat, 1),
        ("--top", args.top, 1),
    ):
        if value < minimum:
            raise SpecError(f"{option} {value} is not allowed: it must be >= {minimum}.")
    targets = parse_choices("--target", args.target, TARGETS)
    specs = []
    for spec in specs_from_args(args):
        if args.memory_snapshot and not spec.device.startswith("cuda"):
            raise SpecError(
                f"--memory-snapshot records the CUDA caching allocator; device "
                f"{spec.device} has none: leave it out or use --device cuda."
            )
        for target in targets:
            # Accumulation and checkpointing change training only: sampling is the same spec.
            one = (
                spec
                if target == "train"
                else spec.replace(
                    accum=1,
                    checkpointing="off",
                    sampler=SAMPLE_SAMPLER,
                    sampling_steps=SAMPLE_STEPS,
                )
            )
            if one not in specs:
                specs.append(one)
    return specs


def profile_options(args: argparse.Namespace) -> dict:
    return {
        "wait": args.wait,
        "repeat": args.repeat,
        "with_stack": not args.no_stack,
        "with_flops": args.with_flops,
        "memory_snapshot": args.memory_snapshot,
        "top": args.top,
    }


def build_profile_parser() -> argparse.ArgumentParser:
    parser = build_parser(
        "python -m bench.profile",
        __doc__,
        defaults={"batch": "2", "accum": "1", "precision": "fp32", "steps": 2, "warmup": 1},
        helps={
            "steps": "profiler schedule: active steps recorded per cycle (default %(default)s)",
            "warmup": "profiler schedule: warm-up steps per cycle, traced but discarded "
            "(default %(default)s)",
        },
    )
    g = parser.add_argument_group("profiler")
    g.add_argument(
        "--target",
        default="train",
        help="train (optimizer steps), sample (DDIM-50 denoising steps), or both: "
        "train,sample (default %(default)s)",
    )
    g.add_argument(
        "--wait",
        type=int,
        default=1,
        help="profiler schedule: steps skipped at the start of each cycle (default %(default)s)",
    )
    g.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="profiler cycles, each written as its own trace file (default %(default)s)",
    )
    g.add_argument(
        "--no-stack",
        action="store_true",
        help="leave out Python call stacks, recorded by default for TensorBoard's "
        "View CallStack and Module view. Their cost on --preset tiny (CPU): "
        "profiled steps 10-25%% slower, the run 20%% longer, trace files 5x as "
        "large (34 MB against 7 MB for a training step)",
    )
    g.add_argument(
        "--with-flops",
        action="store_true",
        help="estimate FLOPs of matmuls and convolutions in the trace",
    )
    g.add_argument(
        "--memory-snapshot",
        action="store_true",
        help="CUDA only: record the allocator's history over the profiled steps and "
        "dump <trace dir>/<spec>.memory_snapshot.pickle for "
        "pytorch.org/memory_viz",
    )
    g.add_argument(
        "--top",
        type=int,
        default=15,
        help="operators listed per spec below the table (default %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    return run_cli(HARNESS, build_profile_parser(), argv, make_specs, options=profile_options)


if __name__ == "__main__":
    main(sys.argv[1:])
