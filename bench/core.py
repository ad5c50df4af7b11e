"""The contract between the sweep loop, the report and each harness: what a harness declares
(`Harness`), and the axes every table can vary along, shown as columns or said once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bench.spec import BenchSpec
from bench.worker import RunContext


@dataclass
class Harness:
    name: str
    figure_columns: list[str]
    display_columns: list[str]
    notes: list[str] = field(default_factory=list)
    # One sentence per row that answers the harness's question in words (printed and in the .md).
    verdict: Callable[[dict], str | None] | None = None
    # Sentences that compare the finished rows (e.g. accumulation vs none), given the run's
    # context so a harness can read files its specs wrote; printed and in the .md.
    compare: Callable[[list[dict], RunContext], list[str]] | None = None
    # Figure columns that are not numbers: bool (True/False) or str (text). bench.report refuses
    # a cell of another kind, so a damaged CSV is never rendered as a result.
    figure_kinds: dict[str, type] = field(default_factory=dict)

    def kinds(self) -> dict[str, type]:
        return {c: self.figure_kinds.get(c, float) for c in self.figure_columns}


AXES = ("preset", "image_size", "batch", "accum", "precision", "attention", "compile",
        "checkpointing", "device", "impl", "dataset", "sampler", "sampling_steps", "repeat")


def display_columns(rows: list[dict], figures: list[str]) -> tuple[list[str], str]:
    """Axes that vary across the rows become columns; the others are said once, above."""
    # .get: rows read back from a CSV written before an axis existed lack its column.
    varying = [a for a in AXES if len({r.get(a) for r in rows}) > 1]
    # Axes of other harnesses at their defaults (dataset=synthetic in a memory table) say nothing.
    unused = {a for a in ("impl", "dataset", "sampler", "sampling_steps", "repeat")
              if a not in varying and rows[0].get(a) == getattr(BenchSpec, a)}
    fixed = ", ".join(f"{a}={rows[0].get(a)}" for a in AXES
                      if a not in varying and a not in unused)
    # A figure no row has (e.g. CUDA allocator peaks on a CPU) is left out of the display.
    shown = [c for c in figures if c not in varying and any(r.get(c) is not None for r in rows)]
    return varying + shown, fixed
