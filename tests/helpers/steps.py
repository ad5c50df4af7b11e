"""Stand-ins for the fake-tensor trace of a step (bench.predict.trace.allocation_stream): a
step whose allocations are sizes chosen by the test, so that a search's answer is computed by
hand."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from bench.measure.tracked import MemoryPeak
from bench.predict import batches, cache
from bench.predict.stream import AllocationStream

MiB = 1 << 20


def synthetic_steps(monkeypatch, activations: Callable[[int], int]) -> list[int]:
    """From now on a step holds 1 MiB of weights and, at batch n, one tensor of
    activations(n) bytes. Returns the list of batches traced, filled as they are. The trace
    cache is off and this process's step models are new: the stand-in is not the spec's step."""
    monkeypatch.setenv(cache.CACHE_ENV, "off")
    monkeypatch.setattr(batches, "_models", OrderedDict())
    traced: list[int] = []

    def allocation_stream(spec, target):
        traced.append(spec.batch)
        events = (
            ("alloc", 0, MiB, "held"),
            ("reset",),
            ("alloc", 1, activations(spec.batch), "aten.empty.memory_format"),
            ("free", 1),
        )
        return AllocationStream(spec.batch, events, MemoryPeak())

    monkeypatch.setattr(batches, "allocation_stream", allocation_stream)
    return traced
