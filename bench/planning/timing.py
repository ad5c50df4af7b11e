"""The step time of a plan's option: the time model's public prediction
(bench.predict.runtime.training_figures), asked at accumulation 1 and 2 and extended to any
accumulation, and kept on disk beside the traces (bench.predict.cache).

An optimizer step of accumulation a runs a micro-batches of the same work one after another,
then one optimizer update and EMA: T(a) = T(1) + (a - 1) (T(2) - T(1)), for the time and for
each end of its band. Asking the model at a itself would trace a micro-batches; two calls answer
every accumulation (tests/bench/planning/test_planner.py holds the line to the model at a = 4
and 5).

Nor does each micro-batch need a trace of its own: the kernels of a step, in order, are the same
at any batch from 2 on, and each one's FLOPs, bytes, GEMM shape and launches are whole numbers
on a line in the batch. So at each accumulation the step's kernels are traced at batches 2 and 3
(bench.predict.batches.PAIR_BATCHES), paired kernel for kernel (bench.predict.pairing), and every
other batch's kernels are read off the lines and played out on the card by the model's own
function (training_figures with those kernels): four traces time every split of an effective
batch. Batch 1 is traced (its step is not the others': bench.predict.batches), and where the
traces do not pair, or a third trace is off the lines (KernelLines.verify), each batch is traced."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

from bench.cards import Card
from bench.predict import cache
from bench.predict.batches import PAIR_BATCHES
from bench.predict.kernels import Kernel
from bench.predict.pairing import Unpaired, at, pair
from bench.predict.runtime import train_step_kernels, training_figures
from bench.spec import BenchSpec

log = logging.getLogger(__name__)
# A kernel's fields that grow with the batch; its others (what it is) must match exactly.
SIZES = ("flops", "bytes", "launches", "host_ops")


@dataclass(frozen=True)
class StepTime:
    """One optimizer step on a card, predicted: its seconds and their likely range."""

    step_s: float
    low_s: float
    high_s: float

    def extended(self, other: StepTime, accum: int) -> StepTime:
        """From this step at accumulation 1 and `other` at 2, the step at `accum`."""
        return StepTime(
            *(a + (accum - 1) * (b - a) for a, b in zip(self.astuple(), other.astuple()))
        )

    def astuple(self) -> tuple[float, float, float]:
        return (self.step_s, self.low_s, self.high_s)


class KernelLines:
    """The kernels of one spec's step (its batch aside) on one card, at any batch: lines =
    KernelLines(spec, card); lines.kernels(batch)."""

    def __init__(self, spec: BenchSpec, card: Card):
        self.spec, self.card = spec, card
        self.traced: dict[int, list[Kernel]] = {}
        self.lines: list | None = None
        self.unpaired: str | None = None  # why each batch is traced, where the lines failed

    def kernels(self, batch: int) -> list[Kernel]:
        if batch in self.traced or batch < PAIR_BATCHES[0]:
            return self._trace(batch)
        if self.lines is None and self.unpaired is None:
            first, second = (records(self._trace(b)) for b in PAIR_BATCHES)
            try:
                self.lines = pair(first, second, PAIR_BATCHES)
            except Unpaired as exc:
                self._unpair(f"the traces at batches {PAIR_BATCHES} do not pair ({exc})")
        if self.lines is None:
            return self._trace(batch)
        return [kernel(label, sizes) for label, sizes in at(self.lines, batch)]

    def verify(self, batch: int) -> bool:
        """Trace `batch` and compare its kernels with the lines; where they differ, the lines
        are dropped and each batch is traced from now on. True where the lines hold (or were
        never used)."""
        if self.lines is None or batch < PAIR_BATCHES[0] or batch in PAIR_BATCHES:
            return True  # traced, not read off the lines
        if records(self._trace(batch)) != at(self.lines, batch):
            self._unpair(f"the trace at batch {batch} is off the lines")
            return False
        return True

    def _unpair(self, reason: str) -> None:
        self.lines, self.unpaired = None, reason
        log.debug("%s: %s; tracing each batch", self.spec.name, reason)

    def _trace(self, batch: int) -> list[Kernel]:
        if batch not in self.traced:
            self.traced[batch] = train_step_kernels(self.spec.replace(batch=batch), self.card)
        return self.traced[batch]


def records(kernels: list[Kernel]) -> list:
    """Kernels as records to pair: what each is (its op, kind, dtype, where it runs, whether it
    has a GEMM shape) and its sizes (SIZES, then the GEMM shape)."""
    found = []
    for k in kernels:
        what = {f.name: getattr(k, f.name) for f in fields(k) if f.name not in (*SIZES, "gemm")}
        label = (tuple(what.items()), k.gemm is not None)
        found.append((label, (*(getattr(k, name) for name in SIZES), *(k.gemm or ()))))
    return found


def kernel(label, sizes: tuple[int, ...]) -> Kernel:
    """The kernel of a record (records)."""
    what, has_gemm = label
    gemm = tuple(sizes[len(SIZES) :]) if has_gemm else None
    return Kernel(**dict(what), **dict(zip(SIZES, sizes)), gemm=gemm)


_lines: dict = {}  # this process's KernelLines, by (spec but its batch, card)


def kernel_lines(spec: BenchSpec, card: Card) -> KernelLines:
    name = (spec.replace(batch=1), card.key)
    if name not in _lines:
        _lines[name] = KernelLines(spec, card)
    return _lines[name]


def _asked(spec: BenchSpec, card: Card, kept: bool = True) -> StepTime:
    """The model's own answer at spec's accumulation, from the disk where it was kept (`kept`;
    else predicted again, and kept anew)."""
    entry = cache.key(spec, card.capability)
    name = [entry, card.key, spec.batch, spec.accum]
    found = cache.load_answer("time", name) if kept and entry is not None else None
    if found is not None:
        try:
            return StepTime(*found)
        except TypeError:
            log.debug("time cache: %r is not a step time; predicted again", found)
    kernels = kernel_lines(spec, card).kernels(spec.batch)
    figures = training_figures(spec, card, kernels=kernels)
    found = StepTime(
        figures["predicted_step_s"],
        figures["predicted_step_s_low"],
        figures["predicted_step_s_high"],
    )
    if entry is not None:
        cache.save_answer("time", name, found.astuple())
    return found


def asked_accums(accum: int) -> tuple[int, ...]:
    """The accumulations the model is asked at for a step at `accum`."""
    return (accum,) if accum <= 2 else (1, 2)


def step_time(spec: BenchSpec, card: Card, kept: bool = True) -> StepTime:
    """spec's optimizer step on `card`: asked of the model up to accumulation 2, extended past
    (`kept`: answers kept on disk are taken; else each is predicted again)."""
    found = [_asked(spec.replace(accum=a), card, kept) for a in asked_accums(spec.accum)]
    return found[0] if len(found) == 1 else found[0].extended(found[1], spec.accum)


def verify(spec: BenchSpec, card: Card) -> bool:
    """Trace the kernels of spec's step at its batch, at each accumulation its time is asked at,
    and compare them with the lines they were read off (KernelLines.verify): False where one
    is off its lines, which are dropped."""
    return all(
        kernel_lines(spec.replace(accum=a), card).verify(spec.batch)
        for a in asked_accums(spec.accum)
    )
