"""The profile harness: where do the time and memory of a training (or sampling) step go? Its
HARNESS: the figures of a row, the notes and the verdict; the pass is bench/passes/profile.py,
the command line bench/profile.py."""

from __future__ import annotations

from pathlib import Path

from bench.core import Harness, RunContext
from bench.figure import Figure
from bench.passes.profile import PHASES, options, profiled
from bench.spec import BenchSpec
from bench.tables.operators import top_operators
from bench.tables.profile_summary import SUMMARY_FILE
from bench.tables.results import format_value

FIGURES = (
    Figure("profiled_steps", "", shown=True, verdict="measured rows"),
    Figure("step_ms", "ms", shown=True, verdict="measured rows"),
    *(Figure(f"phase_{p}_pct", "%", shown=True) for p in PHASES),
    # Negative where the phases' ranges, timed apart, sum past the step.
    Figure("other_pct", "%", shown=True, verdict="measured rows", signed=True),
    Figure("peak_memory_mib", "MiB", shown=True, verdict="measured rows"),
    Figure("peak_alloc_mib", "MiB", shown=True, cuda=True),
    Figure("trace_dir", "", str, verdict="measured rows"),
    Figure("memory_snapshot", "", str, cuda=True),
)


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


def measure(spec: BenchSpec, context: RunContext) -> dict:
    return profiled(spec, context)


HARNESS = Harness(
    name="profile",
    figures=FIGURES,
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
    compare=lambda rows, context: top_operators(rows, options(context)["top"]),
    measure=measure,
)
