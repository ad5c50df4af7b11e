"""Every batch of one spec's step on one card, from two traces.

The ops of a training step and the order of its allocations do not depend on the batch (from two
images on: PAIR_BATCHES), and each allocation's size is a whole number of bytes that grows by a
whole number per image. So the step is traced at batches 2 and 3, the two traces are paired
allocation for allocation (bench.predict.pairing), and the step at any other batch is its
allocations' sizes read off their lines and replayed through the caching-allocator model:
milliseconds, no trace. The allocator's rounding (512 B blocks, the small and large pools, 2 MiB
segments) is applied to each batch's own sizes in the replay, never extrapolated; the cuBLAS
workspaces, which do not grow with the batch, are added there too (AllocationStream.predict).

What could break a line is covered three ways. Two traces that do not pair (another op, another
order, a size off every line: a kernel or workspace chosen by the batch) mean the step is traced
at each batch asked, as before, and `unpaired` says why. A size that is not affine but happens to
pair at 2 and 3 is caught by `verify`, which traces a third batch and compares it with the lines
(the largest-batch search verifies its answer so). And a batch traced already (in this process or
the trace cache, bench.predict.cache) is answered from its own trace, batch 1 always.

Nor does a step past two micro-batches need a trace of its own: the trace runs min(accum, 2)
micro-batches and holds the inputs of all of them, so the step at accumulation a > 2 is the one
at 2 with its input stand-ins grown to a micro-batches (bench.predict.trace.accumulated).

A StepModel serves one (spec but its batch, card) pair, and every accumulation from 2 on where
the spec's is; `step_model` keeps the recent ones of this process, so the specs of a sweep or a
plan that differ only in batch, accumulation past 1, budget or card of one compute capability
share their traces."""

from __future__ import annotations

import logging
from collections import OrderedDict

from bench.predict import cache
from bench.predict.pairing import Unpaired, at, pair
from bench.predict.stream import AllocationStream, Prediction
from bench.predict.trace import accumulated, allocation_stream, traced_accum
from bench.spec import BenchSpec

# The two batches whose traces give the lines. Not batch 1: its step is not the others' (a
# reshape of one image's permuted attention heads is a view, of two a copy), so it is traced
# whenever it is asked.
PAIR_BATCHES = (2, 3)
KEPT_MODELS = 8  # StepModels this process keeps (step_model)
log = logging.getLogger(__name__)


class StepModel:
    """model = StepModel(spec, target); model.prediction(batch) for any batch >= 1, at the
    spec's accumulation or, where it is 2 or more, at any other from 2 on (`accum`).

    `many`: the caller asks about many batches, so the two traces of the lines are taken at once
    (a search, a planner); otherwise a batch not yet traced or cached is traced alone, which is
    one trace instead of two."""

    def __init__(self, spec: BenchSpec, target: tuple[int, int], many: bool = False):
        self.spec = spec
        self.traced_spec = spec.replace(accum=traced_accum(spec))  # what its traces run
        self.target = target
        self.many = many
        self.key = cache.key(self.traced_spec, target)
        self.traced: dict[int, AllocationStream] = {}  # by batch, traced or read from the cache
        self.lines: list | None = None
        self.unpaired: str | None = None  # why each batch is traced, where the lines failed

    def prediction(
        self, batch: int, alloc_conf: str | None = None, accum: int | None = None
    ) -> Prediction:
        """The step at `batch` (and `accum`, default the spec's) on the card, replayed through
        the caching allocator."""
        return self.stream(batch, accum).predict(self.target, alloc_conf)

    def stream(self, batch: int, accum: int | None = None) -> AllocationStream:
        """The step's allocations at `batch` and `accum` (default the spec's): the step at the
        traced accumulation, its inputs grown past 2 micro-batches."""
        accum = self.spec.accum if accum is None else accum
        if traced_accum(self.spec.replace(accum=accum)) != self.traced_spec.accum:
            raise ValueError(
                f"accumulation {accum}: this model traces {self.traced_spec.accum} "
                "micro-batches (accumulation 1 answers 1 only, 2 answers 2 on)"
            )
        found = self._stream(batch)
        return accumulated(found, accum) if accum > self.traced_spec.accum else found

    def _stream(self, batch: int) -> AllocationStream:
        """The traced step's allocations at `batch`: its own trace where one is at hand, else
        read off the lines, else traced."""
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        if batch in self.traced:
            return self.traced[batch]
        if batch < PAIR_BATCHES[0]:
            return self._trace(batch)
        if self.lines is None and self.unpaired is None:
            if not (self.many or all(self._cached(b) for b in PAIR_BATCHES)):
                return self._trace(batch)
            self._pair()
        if self.lines is not None:
            return AllocationStream.from_records(batch, at(self.lines, batch))
        return self._trace(batch)

    def verify(self, batch: int) -> bool:
        """Trace `batch` (unless traced already) and compare it with the lines: the same
        allocations, each of the size its line gives. Where they differ, the lines are dropped
        and every batch is traced from now on. True where the lines hold (or were never used)."""
        if self.lines is None:
            return True
        traced = self._trace(batch)
        expected = at(self.lines, batch)
        found = traced.records()
        if found != expected:
            first = next(
                (i for i, (a, b) in enumerate(zip(found, expected)) if a != b),
                min(len(found), len(expected)),
            )
            self._unpair(f"the trace at batch {batch} is off the lines at record {first}")
            return False
        return True

    def _pair(self) -> None:
        first, second = (self._trace(b) for b in PAIR_BATCHES)
        try:
            self.lines = pair(first.records(), second.records(), PAIR_BATCHES)
        except Unpaired as exc:
            self._unpair(f"the traces at batches {PAIR_BATCHES} do not pair ({exc})")

    def _unpair(self, reason: str) -> None:
        self.lines = None
        self.unpaired = reason
        log.debug("%s: %s; tracing each batch", self.spec.name, reason)

    def _cached(self, batch: int) -> bool:
        if batch not in self.traced:
            found = cache.load(self.key, batch)
            if found is not None:
                self.traced[batch] = found
        return batch in self.traced

    def _trace(self, batch: int) -> AllocationStream:
        if not self._cached(batch):
            stream = allocation_stream(self.traced_spec.replace(batch=batch), self.target)
            cache.save(self.key, stream)
            self.traced[batch] = stream
        return self.traced[batch]


_models: OrderedDict = OrderedDict()


def step_model(spec: BenchSpec, target: tuple[int, int], many: bool = False) -> StepModel:
    """This process's StepModel of the spec (its batch, and its accumulation past 2, aside) for
    `target`, made on first use: ask it at the spec's accumulation (StepModel.prediction's
    `accum`). A model asked for with `many` takes its lines at once from then on."""
    anything = {f: _ANY[f] for f in _ANY}
    name = (spec.replace(**anything, accum=traced_accum(spec)), tuple(target))
    model = _models.pop(name, None) or StepModel(spec, target, many)
    model.many = model.many or many
    _models[name] = model
    while len(_models) > KEPT_MODELS:
        _models.popitem(last=False)
    return model


# The fields one StepModel answers for whatever their value (cache.UNKEYED's run settings), set
# to one value so that specs differing only in them share a model.
_ANY = {
    "batch": 1,
    "budget": None,
    "context_mib": 0.0,
    "card": "",
    "measure_steps": 1,
    "warmup_steps": 1,
    "repeat": 1,
    "find_max_batch": False,
    "predict_only": False,
}
