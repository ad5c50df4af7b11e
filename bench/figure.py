"""A figure: a column of a harness's table, declared once, the way an axis is (bench.axis).

A harness lists its figures (bench.core.Harness.figures) in the order of its CSV's columns, and
everything else is read from the declarations: the CSV's figure columns, the displayed table's
columns, the columns each row's verdict needs, the kind each cell is read back as, the names an
older table used, what marks a --predict-only row, and what the tests expect of a run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# Where a figure comes from: measured on this machine, predicted for a card (on any machine),
# projected from measured figures (sampling's full run from its timed steps), or a setting of
# the run recorded in its row (loss's learning rate).
SOURCES = ("measured", "predicted", "projected", "setting")
# Which ok rows' verdict reads a figure: every row's, a measured row's, or a --predict-only
# row's (bench.core.Harness.predict_only tells them apart). bench.report refuses a table whose
# row lacks one, in one line, rather than fail inside the sentence or print a hole in it.
VERDICT_ROWS = ("every row", "measured rows", "predicted rows")
KINDS = (float, bool, str)  # a number (an integer count too), True/False, or text


@dataclass(frozen=True)
class Figure:
    name: str  # the column: a word of lowercase letters, digits and "_", its unit's suffix
    unit: str  # "MiB" (2^20 bytes), "s", "ms", "h", "%", "img/s", "GFLOP", "TFLOP/s"; "": none
    kind: type = float
    source: str = "measured"
    shown: bool = False  # a column of the displayed table (the CSV holds every figure)
    verdict: str = ""  # the rows whose verdict needs it (VERDICT_ROWS); "": none
    cuda: bool = False  # only a CUDA run (or NVIDIA's NVML) gives it: empty elsewhere, never 0
    was: tuple[str, ...] = ()  # the names it had in tables written before it was renamed
    # A number that may be negative (a headroom, an error), or NaN or infinite (a diverged
    # loss): bench.report refuses any other number that is, so a damaged CSV is not rendered.
    signed: bool = False
    unbounded: bool = False

    def __post_init__(self):
        if self.kind not in KINDS or self.source not in SOURCES:
            raise ValueError(f"{self.name}: kind {self.kind}, source {self.source!r}")
        if self.verdict and self.verdict not in VERDICT_ROWS:
            raise ValueError(f"{self.name}: verdict {self.verdict!r}, not one of {VERDICT_ROWS}")

    def show(self) -> Figure:
        """This figure as a column of the displayed table too (a figure two harnesses share
        and one of them shows)."""
        return dataclasses.replace(self, shown=True)
