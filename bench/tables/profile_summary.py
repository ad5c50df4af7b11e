"""summary.html, written by bench.profile beside each spec's trace: the phase breakdown, the top
operators and memory over the profiled steps in one self-contained page (inline PNGs and HTML
tables, nothing fetched), so it opens offline where TensorBoard's profiler page, which loads Google
Charts from the internet, stays blank."""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path

from matplotlib.figure import Figure

from bench.spec import MIB

SUMMARY_FILE = "summary.html"


def memory_curve(trace: dict, device_type: int) -> dict:
    """'Total Allocated' over time from a trace's [memory] events on one device type (0 CPU,
    1 CUDA), in ms from the first profiled step's start, with each step's start."""
    events = trace.get("traceEvents", [])
    starts = sorted(
        float(e["ts"])
        for e in events
        if e.get("cat") == "user_annotation"
        and e.get("ph") == "X"
        and e["name"].startswith("ProfilerStep#")
    )
    points = sorted(
        (float(e["ts"]), int(e["args"].get("Total Allocated", 0)))
        for e in events
        if e.get("name") == "[memory]" and (e.get("args") or {}).get("Device Type") == device_type
    )
    zero = starts[0] if starts else (points[0][0] if points else 0.0)
    return {
        "ms": [(t - zero) / 1000 for t, _ in points],
        "mib": [b / MIB for _, b in points],
        "step_starts_ms": [(t - zero) / 1000 for t in starts],
    }


def png_tag(fig: Figure, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def phase_chart(shares: dict[str, float]) -> str:
    fig = Figure(figsize=(8, 0.4 * len(shares) + 1))
    ax = fig.subplots()
    names = list(shares)[::-1]  # the first phase on top
    ax.barh(names, [shares[n] for n in names], color="tab:blue")
    for y, name in enumerate(names):
        ax.text(shares[name], y, f" {shares[name]:.1f}%", va="center")
    ax.set_xlabel("share of the profiled step time (%)")
    ax.set_xlim(0, max(100.0, *shares.values()) * 1.1)
    return png_tag(fig, "phase breakdown")


def memory_chart(curves: list[dict], device: str) -> str:
    fig = Figure(figsize=(8, 3.5))
    ax = fig.subplots()
    for cycle, curve in enumerate(curves, 1):
        label = f"cycle {cycle}" if len(curves) > 1 else None
        ax.step(curve["ms"], curve["mib"], where="post", label=label)
    for start in curves[0]["step_starts_ms"]:  # step boundaries of the first cycle
        ax.axvline(start, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("time from the first profiled step's start (ms); dotted: step starts")
    ax.set_ylabel(f"Total Allocated on {device} (MiB)")
    if len(curves) > 1:
        ax.legend()
    return png_tag(fig, "memory over the profiled steps")


def table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def operator_table(path: Path, top: int) -> str:
    with open(path, newline="") as f:
        ops = list(csv.DictReader(f))[:top]
    device = any(float(op["self_device_ms"] or 0) > 0 for op in ops)
    header = ["operator", "calls per step", "self CPU ms per step", "self CPU %"]
    header += ["self device ms per step"] if device else []
    rows = [
        [
            op["name"],
            f"{float(op['calls_per_step']):g}",
            f"{float(op['self_cpu_ms']):.3f}",
            f"{float(op['self_cpu_pct']):.1f}",
        ]
        + ([f"{float(op['self_device_ms']):.3f}"] if device else [])
        for op in ops
    ]
    return table(header, rows)


def write_summary(
    folder: Path,
    name: str,
    figures: dict,
    phases: tuple[str, ...],
    operators: Path,
    curves: list[dict],
    device: str,
    top: int,
) -> Path:
    """The page for one spec; figures is the spec's row (step_ms, phase_*_pct, other_pct,
    peak_memory_mib), curves one memory_curve per trace file."""
    shares = {p: figures[f"phase_{p}_pct"] for p in phases} | {"other": figures["other_pct"]}
    phase_rows = [[p, f"{v:.1f}"] for p, v in shares.items()]
    memory = (
        memory_chart(curves, device)
        if any(c["ms"] for c in curves)
        else "<p>No memory events on this device in the trace.</p>"
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(name)}: profile summary</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}}
</style></head><body>
<h1>Profile summary: {html.escape(name)}</h1>
<p>{figures["profiled_steps"]} profiled steps, {figures["step_ms"]:.2f} ms per step (profiled, so
slower than unprofiled: take speeds from bench.throughput); peak 'Total Allocated' on {device}
{figures["peak_memory_mib"]:.2f} MiB. The traces beside this file hold the detail.</p>
<h2>Phase breakdown</h2>
{phase_chart(shares)}
{table(["phase", "% of step time"], phase_rows)}
<h2>Top operators by self CPU time</h2>
{operator_table(operators, top)}
<h2>Memory over the profiled steps</h2>
{memory}
</body></html>
"""
    path = Path(folder) / SUMMARY_FILE
    path.write_text(page)
    return path
