"""The allocations and frees of one traced training step at one batch, in program order, and
what the CUDA caching allocator makes of them on a card.

A TensorTracker names an allocation by its storage's address, which a later one may reuse; here
each allocation is named by its rank in the step (0, 1, 2, ...), so two traces of the step at two
batches name the same allocation alike and pair record for record (bench.predict.pairing), and a
stream is plain data that the trace cache stores (bench.predict.cache)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from bench.measure.tracked import CATEGORIES, MemoryPeak, TensorTracker
from bench.predict.allocator import cublas_workspace_bytes, parse_alloc_conf, replay
from bench.predict.pairing import Record
from bench.spec import MIB


@dataclass(frozen=True)
class Prediction:
    """One steady-state step on a CUDA card of compute capability `target`."""

    # Live tensors at the peak, each rounded to 512 B, by category: from a trace at this very
    # batch; None where the batch was read off two others' lines (bench.predict.batches).
    tensors: MemoryPeak | None
    alloc_bytes: int  # the allocator's peak allocated: whole blocks, cuBLAS workspaces included
    reserved_bytes: int  # its peak reserved: the segments it took from the driver
    cublas_workspace_bytes: int  # both threads' workspaces together
    target: tuple[int, int]

    def mib(self, what: str) -> float:
        return getattr(self, f"{what}_bytes") / MIB


@dataclass(frozen=True)
class AllocationStream:
    """A step's ("alloc", n, nbytes, origin), ("free", n) and ("reset",) events, n the rank of
    the allocation in the step and origin the op that made it; `peak` is the tracker's live
    tensors at the step's peak (512 B blocks), by category."""

    batch: int
    events: tuple[tuple, ...]
    peak: MemoryPeak

    @classmethod
    def of(cls, tracker: TensorTracker, batch: int) -> AllocationStream:
        """The tracker's events, each allocation named by its rank in the step."""
        origins = iter(tracker.origins)
        ranks: dict = {}  # a live storage's address -> its allocation's rank
        events = []
        allocations = 0
        for event in tracker.events:
            if event[0] == "alloc":
                ranks[event[1]] = allocations
                events.append(("alloc", allocations, event[2], next(origins)))
                allocations += 1
            elif event[0] == "free":
                events.append(("free", ranks[event[1]]))
            else:
                events.append(event)
        return cls(batch, tuple(events), tracker.peak)

    def records(self) -> list[Record]:
        """The events as records to pair (bench.predict.pairing): an allocation's label is its
        origin, its one size its bytes; a free's label names the allocation it ends."""
        return [(("alloc", e[3]), (e[2],)) if e[0] == "alloc" else (e, ()) for e in self.events]

    @classmethod
    def from_records(cls, batch: int, records: list[Record]) -> AllocationStream:
        """A stream read off paired lines at `batch`: no tracker, so no peak by category."""
        events = []
        allocations = 0
        for label, sizes in records:
            if label[0] == "alloc":
                events.append(("alloc", allocations, sizes[0], label[1]))
                allocations += 1
            else:
                events.append(label)
        return cls(batch, tuple(events), None)

    def to_json(self) -> dict:
        """Plain JSON data; origins are kept once each, in a table."""
        table: dict[str, int] = {}
        events = []
        for e in self.events:
            if e[0] == "alloc":
                events.append([e[2], table.setdefault(e[3], len(table))])
            elif e[0] == "free":
                events.append(e[1])
            else:
                events.append("reset")
        return {
            "batch": self.batch,
            "origins": list(table),
            "events": events,
            "peak": {"total": self.peak.total, **self.peak.by_category},
        }

    @classmethod
    def from_json(cls, data: dict) -> AllocationStream:
        """The stream `to_json` wrote; ValueError (or a KeyError or TypeError from malformed
        data) where it is not one: a free of an allocation that is not live, a size that is not
        a whole number of bytes, a peak that is not every category's."""
        origins = [str(o) for o in data["origins"]]
        events = []
        live: set[int] = set()
        allocations = 0
        for e in data["events"]:
            if isinstance(e, list):
                nbytes, origin = e
                if not (isinstance(nbytes, int) and nbytes >= 0) or isinstance(nbytes, bool):
                    raise ValueError(f"allocation {allocations}: {nbytes!r} bytes")
                events.append(("alloc", allocations, nbytes, origins[origin]))
                live.add(allocations)
                allocations += 1
            elif isinstance(e, int) and e in live:
                live.remove(e)
                events.append(("free", e))
            elif e == "reset":
                events.append(("reset",))
            else:
                raise ValueError(f"event {len(events)}: {e!r}")
        peak = data["peak"]
        if set(peak) != {"total", *CATEGORIES}:
            raise ValueError(f"peak: {sorted(peak)}")
        by_category = {c: int(peak[c]) for c in CATEGORIES}
        batch = data["batch"]
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch {batch!r}")
        return cls(batch, tuple(events), MemoryPeak(int(peak["total"]), by_category))

    def predict(
        self,
        target: tuple[int, int],
        alloc_conf: str | None = None,
        threads: tuple[str, ...] = ("forward", "backward"),
    ) -> Prediction:
        """The step replayed through the caching allocator as PYTORCH_CUDA_ALLOC_CONF
        (`alloc_conf`, default: this process's) configures it. cuBLAS keeps one workspace per
        handle and stream, and handles are per thread: a training step's forward runs on this
        thread and its backward on autograd's device thread, so it holds two, taken first and
        kept; a sampling pass alone has no backward, and names its one `threads`. The
        workspaces do not depend on the batch: they are added here, never traced."""
        workspace = cublas_workspace_bytes(target)
        conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF") if alloc_conf is None else alloc_conf
        events = [("alloc", f"cublas-{thread}", workspace) for thread in threads]
        events += [e[:3] for e in self.events]
        allocator = replay(events, **parse_alloc_conf(conf))
        return Prediction(
            self.peak,
            allocator.peak_allocated,
            allocator.peak_reserved,
            len(threads) * workspace,
            target,
        )
