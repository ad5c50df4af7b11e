"""Two traces of one training step at two batches, paired record for record: what stays the
same and what grows as a line in the batch.

The ops of a training step, and the order of its allocations, do not depend on the batch; the
sizes of its tensors are whole numbers of bytes (or FLOPs) that grow by a whole number per image.
So two traces at batches b1 < b2 list the same records in the same order, each a label (what the
record is: an op, an allocation's origin, which allocation a free ends) and its sizes, and each
size is exact on the line size(b) = base + per_image x b through its two values. `pair` checks
that and returns the lines; `at` reads them at any batch, with no trace. Where the traces do not
pair (another op, another order, a size that is not on a line of whole numbers that never goes
below zero), `pair` raises Unpaired naming the first record that differs: that step must be
traced at each batch asked.

Two points always lie on a line: a size that is not affine in the batch (a batch-dependent
kernel choice, a workspace sized by a heuristic) can pass the pairing and be wrong elsewhere, so
a caller confirms the lines against a third trace where the answer matters
(bench.predict.batches: StepModel.verify). Any record list pairs this way: the memory model's
allocations, or the ops of a time model."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

# A record: (label, sizes). The label is compared as it is; the sizes are whole numbers.
Record = tuple[Hashable, tuple[int, ...]]


@dataclass(frozen=True)
class Line:
    """A size at any batch: base + per_image x batch, both whole and neither below zero."""

    base: int
    per_image: int

    def at(self, batch: int) -> int:
        return self.base + self.per_image * batch


class Unpaired(ValueError):
    """Two traces that are not the same step at two batches; `index` is the first record (or
    the record count) where they part."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"record {index}: {reason}")
        self.index = index
        self.reason = reason


def line(first: int, second: int, batches: tuple[int, int]) -> Line | None:
    """The line through (b1, first) and (b2, second), or None where it is not a line of whole
    numbers that stays at or above zero for every batch from 0 on."""
    b1, b2 = batches
    rise = second - first
    if rise % (b2 - b1):
        return None
    per_image = rise // (b2 - b1)
    base = first - per_image * b1
    if per_image < 0 or base < 0:
        return None
    return Line(base, per_image)


def pair(
    first: Sequence[Record], second: Sequence[Record], batches: tuple[int, int]
) -> list[tuple[Hashable, tuple[Line, ...]]]:
    """The records of two traces at batches (b1, b2), b1 < b2, as (label, lines): Unpaired where
    a label, the number of sizes or of records differs, or a size is off every such line."""
    b1, b2 = batches
    if not 0 < b1 < b2:
        raise ValueError(f"pair needs two batches 0 < b1 < b2, not {batches}")
    paired = []
    for index, ((label, sizes), (other_label, other_sizes)) in enumerate(zip(first, second)):
        if label != other_label or len(sizes) != len(other_sizes):
            raise Unpaired(index, f"{label!r} at batch {b1}, {other_label!r} at batch {b2}")
        lines = []
        for size, other in zip(sizes, other_sizes):
            found = line(size, other, batches)
            if found is None:
                raise Unpaired(
                    index, f"{label!r}: {size} at batch {b1}, {other} at batch {b2}: no line"
                )
            lines.append(found)
        paired.append((label, tuple(lines)))
    if len(first) != len(second):
        shorter = min(len(first), len(second))
        raise Unpaired(shorter, f"{len(first)} records at batch {b1}, {len(second)} at {b2}")
    return paired


def at(paired: Sequence[tuple[Hashable, tuple[Line, ...]]], batch: int) -> list[Record]:
    """The records at `batch`, read off the lines of `pair`."""
    return [(label, tuple(x.at(batch) for x in lines)) for label, lines in paired]
