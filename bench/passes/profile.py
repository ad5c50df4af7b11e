"""The profile pass: a spec's training (or sampling) steps under torch.profiler's schedule, each
cycle's trace written for TensorBoard, and what the row says read back from the trace itself:
the step time, each ddpm phase range's share, the peak memory, every operator."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity

from bench.core import RunContext, rank_folder
from bench.measure import cuda
from bench.models.workload import build_model, train_step
from bench.passes.sampling import default_schedule, denoising_steps
from bench.spec import MIB, BenchSpec
from bench.tables.operators import OPERATORS_FILE, write_operators
from bench.tables.profile_summary import memory_curve, write_summary
from ddpm.device import synchronize
from ddpm.precision import SAMPLE_PHASES, TRAIN_PHASES, apply_matmul_precision

# Training's ranges (Trainer.step) in the order they run, then sampling's (ddpm.cli.sample's loop).
PHASES = TRAIN_PHASES + tuple(p for p in SAMPLE_PHASES if p not in TRAIN_PHASES)

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


def options(context: RunContext) -> dict:
    return {**DEFAULT_OPTIONS, **context.options}


def trace_dir(out: Path, spec: BenchSpec) -> Path:
    """One folder per spec, named by spec.name: TensorBoard lists it as one run (and each
    further rank's folder inside it as a run of its own)."""
    return rank_folder(Path(out) / "traces" / spec.name)


def target_of(spec: BenchSpec) -> str:
    return "train" if spec.sampler == "none" else "sample"


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


def profiled(spec: BenchSpec, context: RunContext) -> dict:
    """The spec's steps under torch.profiler's schedule; the traces, operators.csv and
    summary.html in its trace folder, and the row's figures."""
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
    write_operators(collector.ops, steps, folder / OPERATORS_FILE)
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
