"""operators.csv, beside each profiled spec's traces: every operator by self CPU time per profiled
step, written by the profile pass, and the top ones said below the profile table."""

from __future__ import annotations

import csv
from pathlib import Path

OPERATORS_FILE = "operators.csv"


def write_operators(ops: dict[str, dict], steps: int, path: Path) -> None:
    """Every operator, by self CPU time, per profiled step. `ops`: by operator name, its calls
    and microseconds over the `steps` profiled steps (calls, self_cpu_us, self_device_us,
    cpu_total_us), as the profile pass's Collector sums them."""
    total_us = sum(op["self_cpu_us"] for op in ops.values()) or 1.0
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
        for name, op in sorted(ops.items(), key=lambda kv: -kv[1]["self_cpu_us"]):
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


def top_operators(rows: list[dict], top: int) -> list[str]:
    """Each profiled spec's top operators by self CPU time (and self device time where there is
    a device), from the operators.csv its process wrote; printed and in profile.md."""
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
