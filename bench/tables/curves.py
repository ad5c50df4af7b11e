"""Loss curves compared in one sweep, the sentences under the loss table: accumulation (or ranks)
against one micro-batch at the same effective batch, each precision against fp32, attention
against none, each optimizer against AdamW; each from the curve files the loss pass wrote."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from bench.core import RunContext, axes
from ddpm.config import PRESETS

# Accumulation (or ranks) must not change the curve beyond float rounding: they change only the
# order in which per-image gradients are summed. The relative tolerance per 200 steps, growing
# linearly with the steps, is 3x to 8x the worst split measured (docs/loss.md, "Tolerances").
ACCUM_TOLERANCE = {"fp32": 1e-4, "tf32": 1e-2, "fp16": 3e-2, "bf16": 3e-2}
TOLERANCE_STEPS = 200


def accum_tolerance(precision: str, device: str, steps: int) -> float:
    if precision == "tf32" and not device.startswith("cuda"):
        precision = "fp32"  # TF32 is a CUDA mode; elsewhere the trainer runs plain fp32
    return ACCUM_TOLERANCE[precision] * max(1.0, steps / TOLERANCE_STEPS)


def read_curve(path: str | Path) -> list[float]:
    with open(path, newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def max_relative_difference(a: list[float], b: list[float]) -> float:
    """max over steps of |a - b| / |a|, on the steps both curves have."""
    worst = 0.0
    for x, y in zip(a, b):
        if not (math.isfinite(x) and math.isfinite(y)):
            return math.inf  # a diverged step is no rounding difference
        worst = max(worst, abs(x - y) / abs(x) if x else (0.0 if y == 0 else math.inf))
    return worst


def _percent(value: float, reference: float) -> str:
    if not (math.isfinite(value) and math.isfinite(reference)) or reference == 0:
        return "n/a"
    return f"{(value - reference) / abs(reference) * 100:+.2f}%"


def _others(row: dict, varying: list[str], skip: tuple[str, ...]) -> str:
    """The row's other axes that vary in this run (the report says the fixed ones once)."""
    shown = ", ".join(f"{a} {row[a]}" for a in varying if a not in skip)
    return f" ({shown})" if shown else ""


def _against(ok: list[dict], axis: str, reference: str, varying: list[str]) -> list[str]:
    """Each row against the row with `axis` = reference and every other axis equal."""
    others = [a for a in axes() if a not in (axis, "repeat", "effective_batch")]
    groups: dict[tuple, list[dict]] = {}
    for r in ok:
        groups.setdefault(tuple(r.get(a) for a in others), []).append(r)
    sentences = []
    for group in groups.values():
        refs = [r for r in group if r.get(axis) == reference]  # a row before the axis: none
        if not refs:
            continue
        ref, ref_curve = refs[0], read_curve(refs[0]["curve_path"])
        for r in group:
            if r.get(axis) == reference:
                continue
            diff = max_relative_difference(ref_curve, read_curve(r["curve_path"]))
            skipped = f"; {r['skipped_steps']:g} skipped step(s)" if axis == "precision" else ""
            sentences.append(
                f"{axis} {r[axis]} vs {reference}{_others(r, varying, (axis,))}: final loss "
                f"{r['final_loss']:.6g} vs {ref['final_loss']:.6g} "
                f"({_percent(r['final_loss'], ref['final_loss'])}), val loss "
                f"{r['val_loss']:.6g} vs {ref['val_loss']:.6g} "
                f"({_percent(r['val_loss'], ref['val_loss'])}); max relative loss difference "
                f"{diff:.2e} over the curve{skipped}."
            )
    return sentences


# How one optimizer step's images are split: across ranks, into micro-batches, exchanged when.
SPLIT_AXES = ("ranks", "parallel", "grad_sync", "batch", "accum")


def _split(row: dict) -> str:
    ranks = "" if row["parallel"] == "none" else f"{row['ranks']} rank(s) {row['parallel']} x "
    sync = "" if row["grad_sync"] == "last" else f" (gradients synced {row['grad_sync']})"
    return f"{ranks}batch {row['batch']} x accum {row['accum']}{sync}"


def compare(rows: list[dict], context: RunContext) -> list[str]:
    ok = [r for r in rows if r["status"] == "ok" and r.get("curve_path")]
    varying = [a for a in axes() if len({r.get(a) for r in ok}) > 1]
    sentences = []
    # What is not an axis, said once: the options every spec of this run trained with.
    for setup in sorted({(r["dataset"], r["val_images"], r["lr"], r["threads"]) for r in ok}):
        # --optimizer: each optimizer at the schedule's lr times its own scale (docs/levers.md)
        scaled = any(r.get("optimizer", "adamw") != "adamw" for r in ok)
        sentences.append(
            f"Trained on {setup[0]} ({setup[1]:g} validation images) with AdamW "
            f"lr {setup[2]:g}{' (the others at their scale of it)' if scaled else ''}, "
            f"{setup[3]:g} CPU thread(s) per spec."
        )
    # 1. Accumulation: rows equal in every axis but how a step's images are split (SPLIT_AXES),
    # with the same effective batch.
    same = [a for a in axes() if a not in SPLIT_AXES] + ["effective_batch"]
    groups: dict[tuple, list[dict]] = {}
    for r in ok:
        groups.setdefault(tuple(r.get(a) for a in same), []).append(r)
    for group in groups.values():
        if len(group) < 2:
            continue
        # Reference: one rank if there is one, and the least accumulation.
        group = sorted(group, key=lambda r: (r["ranks"], r["accum"]))
        ref, ref_curve = group[0], read_curve(group[0]["curve_path"])
        dropout = (
            PRESETS[ref["preset"]].dropout
            if ref.get("dropout", "preset") == "preset"
            else float(ref["dropout"])
        )
        for r in group[1:]:
            curve = read_curve(r["curve_path"])
            steps = min(len(curve), len(ref_curve))
            tolerance = accum_tolerance(ref["precision"], ref["device"], steps)
            diff = max_relative_difference(ref_curve, curve)
            if diff <= tolerance and len(curve) == len(ref_curve):
                answer = "equal within float rounding"
            else:
                answer = "DIFFERENT: accumulation changed the loss curve"
                if dropout:  # the masks are drawn per micro-batch from the global generator
                    answer += (
                        f" (expected here: {ref['preset']} trains with dropout {dropout:g}, "
                        "whose masks differ with the micro-batch split; --dropout 0 or "
                        "--preset tiny has none)"
                    )
            lengths = (
                ""
                if len(curve) == len(ref_curve)
                else f" (one curve stops early: {len(ref_curve)} vs {len(curve)} steps)"
            )
            split = (
                "Accumulation"
                if ref["ranks"] == r["ranks"] == 1 and ref["parallel"] == r["parallel"]
                else "Ranks and accumulation"
            )
            sentences.append(
                f"{split}, effective batch {ref['effective_batch']}"
                f"{_others(ref, varying, SPLIT_AXES)}: {_split(r)} vs {_split(ref)}: max relative "
                f"loss difference {diff:.2e} over {steps} steps{lengths} — {answer} (tolerance "
                f"{tolerance:.2g} for {ref['precision']} at {steps} steps); final loss "
                f"{r['final_loss']:.6g} vs {ref['final_loss']:.6g}, val loss "
                f"{r['val_loss']:.6g} vs {ref['val_loss']:.6g}."
            )
    # 2. Precision against fp32, 3. attention against none: rows equal in every other axis.
    sentences += _against(ok, "precision", "fp32", varying)
    sentences += _against(ok, "attention", "none", varying)
    sentences += _against(ok, "optimizer", "adamw", varying)
    return sentences
