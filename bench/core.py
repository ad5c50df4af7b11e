"""The contract between the sweep loop, the report and each harness: what a harness declares
(`Harness`), what a spec's run may use (`RunContext`), and the columns every table has, derived
once from BenchSpec's fields."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import spec as spec_module
from bench.figure import Figure
from bench.spec import BenchSpec
from ddpm import parallel
from ddpm.errors import printable


@dataclass(frozen=True)
class RunContext:
    """Where a harness may write files of its own (curves, traces: out/<harness>/<run_id>/...),
    and the harness's own options that are not spec axes (validated by its command line)."""

    out: Path
    run_id: str
    options: dict = field(default_factory=dict)
    # Where say() writes in a worker process; the sweep shows each line as it arrives.
    messages: Path | None = None

    def say(self, line: str) -> None:
        """A line for the user while the spec still runs (e.g. the predicted verdict)."""
        if self.messages is None:
            print(printable(line), file=sys.stderr, flush=True)
            return
        with open(self.messages, "a") as f:
            f.write(printable(line) + "\n")


def rank_folder(folder: Path) -> Path:
    """Where this rank writes a spec's files: rank 0 in the spec's folder, rank r > 0 in
    folder/rank<r>, so no two ranks ever write one file."""
    rank = parallel.rank()
    return Path(folder) / f"rank{rank}" if rank else Path(folder)


@dataclass
class Harness:
    name: str
    # One spec measured in this process: its figures by column (a failure raises).
    measure: Callable[[BenchSpec, RunContext], dict]
    # Its figures (bench.figure), in the order of its CSV's columns: every list of columns below
    # is read from them.
    figures: Sequence[Figure]
    notes: list[str] = field(default_factory=list)
    # One sentence per row that answers the harness's question in words (printed and in the .md).
    verdict: Callable[[dict], str | None] | None = None
    # Sentences that compare the finished rows (e.g. accumulation vs none), given the run's
    # context so a harness can read files its specs wrote; printed and in the .md.
    compare: Callable[[list[dict], RunContext], list[str]] | None = None
    # Axes the displayed table shows before the status even where every row has one value
    # (sampling's sampler and steps); the others are columns only where they vary.
    key_axes: tuple[str, ...] = ()

    @property
    def module(self) -> str:
        """The module that defines this harness as HARNESS: how a fresh process finds it."""
        return self.measure.__module__

    @property
    def figure_columns(self) -> list[str]:
        return [f.name for f in self.figures]

    @property
    def display_columns(self) -> list[str]:
        return [*self.key_axes, "status", *(f.name for f in self.figures if f.shown)]

    @property
    def verdict_columns(self) -> list[str]:
        """The figures the verdict of an ok measured row reads."""
        return [f.name for f in self.figures if f.verdict in ("every row", "measured rows")]

    @property
    def predicted_verdict_columns(self) -> list[str]:
        """The figures the verdict of an ok --predict-only row reads."""
        return [f.name for f in self.figures if f.verdict in ("every row", "predicted rows")]

    @property
    def renamed(self) -> dict[str, str]:
        """Figure columns by their old names: a table written before a rename is read so."""
        return {old: f.name for f in self.figures for old in f.was}

    @property
    def signed_columns(self) -> list[str]:
        """Number figures that may be negative: bench.report refuses any other that is."""
        return [f.name for f in self.figures if f.signed]

    @property
    def unbounded_columns(self) -> list[str]:
        """Number figures that may be NaN or infinite: bench.report refuses any other that is."""
        return [f.name for f in self.figures if f.unbounded]

    def kinds(self) -> dict[str, type]:
        """Each figure column's kind: bench.report refuses a cell of another kind, so a damaged
        CSV is never rendered as a result."""
        return {f.name: f.kind for f in self.figures}

    def predict_only(self, row: dict) -> bool:
        """A row of --predict-only: a predicted figure has a value and no measured or projected
        one does (the run's settings are in every row)."""
        said = {f.source for f in self.figures if row.get(f.name) is not None}
        return said - {"setting"} == {"predicted"}


# ----- the columns of every table, from BenchSpec's axis fields ----------------------------------
# Read from bench.spec at each call, so a spec class with one more axis (a test's) is seen.


def _axis_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(spec_module.BenchSpec) if f.metadata.get("axis")]


def axes() -> list[str]:
    """The spec fields every table can vary along, in BenchSpec's order."""
    return [f.name for f in _axis_fields()]


def quiet_axes() -> dict[str, object]:
    """Axes of some harnesses only, with the default at which a table leaves them unsaid."""
    return {f.name: f.default for f in _axis_fields() if f.metadata["axis"] == "quiet"}


# Figures of the spec itself, beside its axes: the model's size (as the spec's process counted
# the model it built: empty when it built none) and the images of one step.
DERIVED = {"params": "Int64", "effective_batch": "int64"}
_TEXT = ("run_id", "timestamp", "spec_id")
_STATUS = ("status", "error")


def spec_columns() -> list[str]:
    return [*_TEXT, *axes(), *DERIVED, *_STATUS]


def column_dtypes() -> dict[str, str]:
    """pandas dtypes of the spec columns (results.read_csv); figure columns are float64."""
    kinds = {int: "int64", str: "string"}  # an axis is a number or a word, as its default
    return {
        **dict.fromkeys(_TEXT, "string"),
        **{f.name: kinds[type(f.default)] for f in _axis_fields()},
        **DERIVED,
        **dict.fromkeys(_STATUS, "string"),
    }


def display_columns(rows: list[dict], figures: list[str]) -> tuple[list[str], str]:
    """Axes that vary across the rows become columns; the others are said once, above."""
    # .get: rows read back from a CSV written before an axis existed lack its column.
    varying = [a for a in axes() if len({r.get(a) for r in rows}) > 1]
    # Axes of other harnesses at their defaults (dataset=synthetic in a memory table) say nothing.
    unused = {
        a for a, default in quiet_axes().items() if a not in varying and rows[0].get(a) == default
    }
    fixed = ", ".join(
        f"{a}={rows[0].get(a)}" for a in axes() if a not in varying and a not in unused
    )
    # A figure no row has (e.g. CUDA allocator peaks on a CPU) is left out of the display.
    shown = [c for c in figures if c not in varying and any(r.get(c) is not None for r in rows)]
    return varying + shown, fixed
