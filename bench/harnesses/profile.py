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
import csv
import gzip
import json
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity

from bench.core import Harness, RunContext, rank_folder
from bench.harnesses.sampling import default_schedule, denoising_steps
from bench.measure import cuda
from bench.models.workload import build_model, train_step
from bench.spec import MIB, BenchSpec, SpecError, parse_choices
from bench.sweep.cli import build_parser, refuse_unused, run_cli, specs_from_args
from bench.tables.profile_summary import SUMMARY_FILE, memory_curve, write_summary
from bench.tables.results import format_value
from ddpm.device import synchronize
from ddpm.precision import SAMPLE_PHASES, TRAIN_PHASES, apply_matmul_precision

TARGETS = ("train", "sample")
# Training's ranges (Trainer.step) in the order they run, then sampling's (ddpm.cli.sample's loop).
PHASES = TRAIN_PHASES + tuple(p for p in SAMPLE_PHASES if p not in TRAIN_PHASES)
SAMPLE_SAMPLER, SAMPLE_STEPS = "ddim", 50
# Profiler options are not BenchSpec fields: they reach each spec in RunContext.options.
DEFAULT_OPTIONS = {
    "wait": 1,
    "repeat": 1,
    "with_stack": True,
    "with_flops": False,
    "memory_snapshot": False,
    "top": 15,
}
SNAPSHOT_ENTRIES = 100_000  # allocator events kept by --memory-snapshot (a ring buffer)
OPERATORS_FILE = "operators.csv"


def options(context: RunContext) -> dict:
    return {**DEFAULT_OPTIONS, **context.options}


def trace_dir(out: Path, spec: BenchSpec) -> Path:
    """One folder per spec, named by spec.name: TensorBoard lists it as one run (and each
    further rank's folder inside it as a run of its own)."""
    return rank_folder(Path(out) / "traces" / spec.name)


def target_of(spec: BenchSpec) -> str:
    return "train" if spec.sampler == "none" else "sample"


# ----- the table ---------------------------------------------------------------------------------


def top_operators(rows: list[dict], context: RunContext) -> list[str]:
    """Each profiled spec's top operators by self CPU time (and self device time where there is
    a device), from the operators.csv its process wrote; printed and in profile.md."""
    top = options(context)["top"]
    lines = []
    for row in rows:
        path = Path(row.get("trace_dir") or "") / OPERATORS_FILE
        if row["status"] != "ok" or not path.is_file():
            continue
        with open(path, newline="") as f:
            ops = list(csv.DictReader(f))[:top]
        device = any(float(op["self_device_ms"] or 0) > 0 for op in ops)
        parts = []
        for op in ops:
            text = (
                f"{op['name']} {float(op['self_cpu_ms']):.2f} ms ({float(op['self_cpu_pct']):.1f}%)"
            )
            if device:
                text += f" / device {float(op['self_device_ms']):.2f} ms"
            parts.append(text)
        lines.append(
            f"Top {len(ops)} operators of {row['spec_id']} ({target_of_row(row)}) by "
            f"self CPU time per step{' (and self device time)' if device else ''}: "
            + "; ".join(parts)
            + f". All operators: {path}."
        )
    return lines


def target_of_row(row: dict) -> str:
    return "train" if row["sampler"] == "none" else f"sample, {row['sampler']}"


def verdict(row: dict) -> str | None:
    if row["status"] != "ok":
        return f"{row['spec_id']}: {row['status']} ({row['error']})."
    phases = [(p, row.get(f"phase_{p}_pct")) for p in PHASES]
    shares = ", ".join(f"{p} {v:.1f}%" for p, v in phases if v is not None)
    return (
        f"{row['spec_id']}: {format_value(row['step_ms'])} ms per profiled step over "
        f"{row['profiled_steps']} steps: {shares}, other {row['other_pct']:.1f}%; peak "
        f"{format_value(row['peak_memory_mib'])} MiB. Trace: {row['trace_dir']}; offline "
        f"summary: {Path(row['trace_dir']) / SUMMARY_FILE}."
    )


# ----- one spec ----------------------------------------------------------------------------------


def step_function(spec: BenchSpec, device: torch.device):
    """One call = one step of the target, closed by a device sync so that the ProfilerStep range
    around it contains the step's device work."""
    if target_of(spec) == "train":
        step = train_step(spec, device)

        def train_and_sync() -> None:
            step()
            synchronize(device)

        return train_and_sync, torch.enable_grad

    model = build_model(spec).to(device)
    denoise = denoising_steps(model, default_schedule(), spec, device)

    def sample_step() -> None:
        denoise()  # one step of ddpm.cli.sample's loop, inside its own denoise_step range
        synchronize(device)

    return sample_step, torch.inference_mode


class Collector:
    """The on_trace_ready of each profiler cycle: writes the cycle's trace with
    tensorboard_trace_handler and keeps what the summary needs from it."""

    def __init__(self, folder: Path, worker: str, device: torch.device):
        self.folder, self.device = folder, device
        self.write = torch.profiler.tensorboard_trace_handler(str(folder), worker_name=worker)
        self.steps_us: list[float] = []
        self.phases_us: dict[str, float] = {}
        self.ops: dict[str, dict] = {}
        self.peak_bytes = 0
        self.curves: list[dict] = []  # memory over time, one per trace file, for summary.html

    def __call__(self, prof: torch.profiler.profile) -> None:
        before = set(self.folder.glob("*.pt.trace.json*"))
        self.write(prof)
        # Steps and phases from the trace file itself: what TensorBoard and Perfetto show.
        for path in set(self.folder.glob("*.pt.trace.json*")) - before:
            trace = read_trace(path)
            self.peak_bytes = max(self.peak_bytes, peak_allocated(trace, self.device))
            self.curves.append(memory_curve(trace, device_type(self.device)))
            for name, dur_us in ranges(trace):
                if name.startswith("ProfilerStep#"):
                    self.steps_us.append(dur_us)
                elif name in PHASES:
                    self.phases_us[name] = self.phases_us.get(name, 0.0) + dur_us
        for avg in prof.key_averages():
            if avg.key.startswith("ProfilerStep") or avg.key in PHASES:
                continue  # ranges, not operators: their self time is the Python between calls
            op = self.ops.setdefault(
                avg.key,
                {"calls": 0, "self_cpu_us": 0.0, "self_device_us": 0.0, "cpu_total_us": 0.0},
            )
            op["calls"] += avg.count
            op["self_cpu_us"] += avg.self_cpu_time_total
            op["self_device_us"] += getattr(avg, "self_device_time_total", 0.0)
            op["cpu_total_us"] += avg.cpu_time_total


def read_trace(path: Path) -> dict:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return json.load(f)


def ranges(trace: dict) -> list[tuple[str, float]]:
    """(name, microseconds) of the host-side record_function ranges in a Chrome trace."""
    return [
        (e["name"], float(e["dur"]))
        for e in trace.get("traceEvents", [])
        if e.get("cat") == "user_annotation" and e.get("ph") == "X"
    ]


def peak_allocated(trace: dict, device: torch.device) -> int:
    """The largest 'Total Allocated' among a trace's [memory] events on this device type
    (profile_memory's record of every allocation and free)."""
    kind, peak = device_type(device), 0
    for event in trace.get("traceEvents", []):
        args = event.get("args") or {}
        if event.get("name") == "[memory]" and args.get("Device Type") == kind:
            peak = max(peak, int(args.get("Total Allocated", 0)))
    return peak


def device_type(device: torch.device) -> int:
    """The trace's Device Type for this device: 0 CPU, 1 CUDA."""
    return 1 if device.type == "cuda" else 0


def write_operators(collector: Collector, steps: int, path: Path) -> None:
    """Every operator, by self CPU time, per profiled step."""
    total_us = sum(op["self_cpu_us"] for op in collector.ops.values()) or 1.0
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "name",
                "calls_per_step",
                "self_cpu_ms",
                "self_cpu_pct",
                "self_device_ms",
                "cpu_total_ms",
            ]
        )
        for name, op in sorted(collector.ops.items(), key=lambda kv: -kv[1]["self_cpu_us"]):
            per_step_ms = {
                k: op[k] / steps / 1000 for k in ("self_cpu_us", "self_device_us", "cpu_total_us")
            }
            writer.writerow(
                [
                    name,
                    op["calls"] / steps,
                    per_step_ms["self_cpu_us"],
                    100 * op["self_cpu_us"] / total_us,
                    per_step_ms["self_device_us"],
                    per_step_ms["cpu_total_us"],
                ]
            )


def measure(spec: BenchSpec, context: RunContext) -> dict:
    opts = options(context)
    device = cuda.resolve(spec.device)
    cuda.start(device, spec.precision)
    apply_matmul_precision(spec.precision, device)
    folder = trace_dir(context.out, spec)
    folder.mkdir(parents=True, exist_ok=True)
    step, grad_mode = step_function(spec, device)

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    schedule = torch.profiler.schedule(
        wait=opts["wait"],
        warmup=spec.warmup_steps,
        active=spec.measure_steps,
        repeat=opts["repeat"],
    )
    collector = Collector(folder, spec.name, device)
    snapshot = folder / f"{spec.name}.memory_snapshot.pickle" if opts["memory_snapshot"] else None
    if snapshot is not None:  # allocator history of every profiled step, for memory_viz
        torch.cuda.memory._record_memory_history(max_entries=SNAPSHOT_ENTRIES)
    if device.type == "cuda":
        cuda.reset_peaks(device)
    # with_stack records Python frames and nn.Module events (the plugin's Module view); verbose
    # copies each operator's stack into its trace event, which the plugin's View CallStack reads.
    stacks = (
        {
            "with_stack": True,
            "experimental_config": torch.profiler._ExperimentalConfig(verbose=True),
        }
        if opts["with_stack"]
        else {}
    )
    try:
        with (
            grad_mode(),
            torch.profiler.profile(
                activities=activities,
                schedule=schedule,
                on_trace_ready=collector,
                record_shapes=True,
                profile_memory=True,
                with_flops=opts["with_flops"],
                **stacks,
            ) as prof,
        ):
            cycle = opts["wait"] + spec.warmup_steps + spec.measure_steps
            for _ in range(cycle * opts["repeat"]):
                step()
                prof.step()
        if snapshot is not None:
            torch.cuda.memory._dump_snapshot(str(snapshot))
    finally:
        if snapshot is not None:
            torch.cuda.memory._record_memory_history(enabled=None)

    steps = len(collector.steps_us)
    if steps == 0:
        raise RuntimeError("the profiler recorded no step; check --steps and --repeat")
    step_us = sum(collector.steps_us)
    phases = TRAIN_PHASES if target_of(spec) == "train" else SAMPLE_PHASES
    shares = {p: 100 * collector.phases_us.get(p, 0.0) / step_us for p in phases}
    write_operators(collector, steps, folder / OPERATORS_FILE)
    figures = {
        "profiled_steps": steps,
        "step_ms": step_us / steps / 1000,
        **{f"phase_{p}_pct": v for p, v in shares.items()},
        "other_pct": 100 - sum(shares.values()),
        "peak_memory_mib": collector.peak_bytes / MIB,
        "trace_dir": str(folder),
        "memory_snapshot": str(snapshot) if snapshot is not None else None,
    }
    if device.type == "cuda":
        figures["peak_alloc_mib"] = cuda.peaks_mib(device)[0]
    write_summary(
        folder,
        spec.name,
        figures,
        phases,
        folder / OPERATORS_FILE,
        collector.curves,
        device.type.upper(),
        opts["top"],
    )
    return figures


# ----- the command line --------------------------------------------------------------------------


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


HARNESS = Harness(
    name="profile",
    figure_columns=[
        "profiled_steps",
        "step_ms",
        *[f"phase_{p}_pct" for p in PHASES],
        "other_pct",
        "peak_memory_mib",
        "peak_alloc_mib",
        "trace_dir",
        "memory_snapshot",
    ],
    display_columns=[
        "status",
        "profiled_steps",
        "step_ms",
        *[f"phase_{p}_pct" for p in PHASES],
        "other_pct",
        "peak_memory_mib",
        "peak_alloc_mib",
    ],
    notes=[
        "Profiled, not benchmarked: the profiler records every operator, so step_ms (mean "
        "length of the ProfilerStep ranges over the active steps, a device sync closing each "
        "step) runs slower than bench.throughput's step_s.",
        "phase_<name>_pct: the CPU time of the ddpm range <name> as a share of step_ms "
        "(training: data, forward, loss, backward, unscale_clip, optimizer, ema; sampling: "
        "denoise_step around one DDIM-50 step); other_pct: the rest (model.train(), "
        "zero_grad, the sync, the profiler's own bookkeeping). On CUDA the ranges time the "
        "host side: kernels still running when a range closes are paid for later, mostly in "
        "other_pct's sync.",
        "peak_memory_mib: the largest 'Total Allocated' on the spec's device among the "
        "profiler's memory events of the active steps (MiB = 2^20 bytes). On CUDA that is "
        "the caching allocator's total; on CPU the profiler counts only what was allocated "
        "while it ran, so tensors alive before (weights, optimizer state, EMA copy) are "
        "left out: read it as what the steps allocate (gradients, activations, "
        "temporaries). peak_alloc_mib: "
        "the CUDA caching allocator's peak over all profiled steps (empty on CPU).",
        "Traces (one file per profiler cycle): tensorboard --logdir <out>/traces, or "
        "ui.perfetto.dev, or Holistic Trace Analysis; see docs/profile.md.",
    ],
    verdict=verdict,
    verdict_columns=["step_ms", "profiled_steps", "other_pct", "peak_memory_mib", "trace_dir"],
    compare=top_operators,
    figure_kinds={"trace_dir": str, "memory_snapshot": str},
    signed_columns=["other_pct"],  # the phases' ranges, timed apart, may sum past the step
    measure=measure,
    options=profile_options,
)


def main(argv: list[str] | None = None) -> list[dict]:
    return run_cli(HARNESS, build_profile_parser(), argv, make_specs)


if __name__ == "__main__":
    main(sys.argv[1:])
