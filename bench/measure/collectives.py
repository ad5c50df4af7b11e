"""What the collectives of one optimizer step cost: how many of each kind, the bytes they carry
and the share of the step's wall time spent inside them.

One step is run under torch.profiler (record_shapes) and read back from the profiler's event
tree:

- Kinds, counts and bytes from the c10d operators (c10d::allreduce_, c10d::_allgather_base_,
  ...). Every process-group call goes through them whatever the backend, DDP's C++ bucket
  all-reduces and FSDP2's all-gathers included, and the tree keeps each tensor argument's shape
  and dtype (the flat trace says only "TensorList" for a list of tensors). A functional
  collective (DTensor's, _c10d_functional::all_reduce) counts as the c10d operator it calls; a
  c10d operator called by another is part of that one.
- The time inside them from what the backend records as it executes each collective: gloo's
  "gloo:<op>" ranges on its worker threads, NCCL's kernels on the device. Their union within the
  step counts, so collectives running side by side count once. It includes waiting for the other
  ranks to arrive, and DDP overlaps its bucket all-reduces with the rest of backward: not all of
  it lengthens the step. Another backend records no such ranges: no share.

The profiled step is apart from the timed ones (the profiler slows a step); the share is of the
profiled step's own wall time, both taken under the same profiler."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from bench.measure.timing import synchronize

WINDOW = "bench.collectives.step"  # the profiler range around the measured step

# c10d operator -> (kind, the argument whose tensors are the message, whether that argument is
# one rank's part, to be multiplied by the ranks). The message is the whole tensor the
# collective is about: all-reduce and broadcast the tensor, all-gather the gathered output,
# reduce-scatter the input before it is scattered (nccl-tests' "size"). Where that whole is a
# list of lists, which the profiler does not record, it is one rank's part times the ranks.
# Barriers carry no message.
OPERATORS: dict[str, tuple[str, int | None, bool]] = {
    "c10d::allreduce_": ("all_reduce", 0, False),
    "c10d::allreduce_coalesced_": ("all_reduce", 0, False),
    "c10d::broadcast_": ("broadcast", 0, False),
    "c10d::reduce_": ("reduce", 0, False),
    "c10d::_allgather_base_": ("all_gather", 0, False),
    "c10d::allgather_into_tensor_coalesced_": ("all_gather", 0, False),
    "c10d::allgather_": ("all_gather", 1, True),
    "c10d::allgather_coalesced_": ("all_gather", 1, True),
    "c10d::_reduce_scatter_base_": ("reduce_scatter", 1, False),
    "c10d::reduce_scatter_tensor_coalesced_": ("reduce_scatter", 1, False),
    "c10d::reduce_scatter_": ("reduce_scatter", 0, True),
    "c10d::gather_": ("gather", 1, True),
    "c10d::gather_into_tensor_": ("gather", 1, True),
    "c10d::scatter_": ("scatter", 0, True),
    "c10d::alltoall_": ("all_to_all", 1, False),
    "c10d::alltoall_base_": ("all_to_all", 1, False),
    "c10d::send": ("send", 0, False),
    "c10d::recv_": ("recv", 0, False),
    "c10d::recv_any_source_": ("recv", 0, False),
    "c10d::barrier": ("barrier", None, False),
    "c10d::monitored_barrier_": ("barrier", None, False),
}
MIB = 2**20


@dataclass(frozen=True)
class Collective:
    kind: str  # all_reduce, all_gather, reduce_scatter, broadcast, ...
    nbytes: int  # the message (see OPERATORS)


@dataclass(frozen=True)
class StepCollectives:
    """The collectives of one optimizer step on this rank, in the order they were issued."""

    calls: tuple[Collective, ...]
    step_s: float  # the profiled step's wall time
    comm_s: float | None  # time inside collectives (union); None: the backend records none

    def counts(self) -> dict[str, int]:
        return dict(Counter(c.kind for c in self.calls))

    def bytes_by_kind(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for c in self.calls:
            total[c.kind] += c.nbytes
        return dict(total)

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.calls)

    def figures(self) -> dict:
        """The throughput harness's columns."""
        by_kind = self.bytes_by_kind()
        text = ", ".join(
            f"{kind} {n}: {by_kind[kind] / MIB:.3g} MiB"
            for kind, n in sorted(self.counts().items(), key=lambda kv: -kv[1])
        )
        share = None if self.comm_s is None else 100 * self.comm_s / self.step_s
        return {
            "collectives_per_step": len(self.calls),
            "comm_mib_per_step": self.nbytes / MIB,
            "comm_share_pct": share,
            "collectives": text or "none",
        }


def measure_step(step: Callable[[], object], device: torch.device, ranks: int) -> StepCollectives:
    """Run `step` once under the profiler and read its collectives back. Every rank of the
    group must call it at the same point: the step's collectives wait for all of them. `ranks`:
    the group size, for the operators whose whole message is one rank's part times the ranks."""
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    synchronize(device)
    with profile(activities=activities, record_shapes=True) as prof:
        with record_function(WINDOW):
            step()
            synchronize(device)  # the window ends when the device's work has
    result = prof.profiler.kineto_results
    tree = result.experimental_event_tree()
    events = list(_walk(tree))
    window = next(e for e in events if e.name == WINDOW)
    start, end = window.start_time_ns, window.end_time_ns
    spans = [(e.start_time_ns, e.end_time_ns) for e in events if e.name.startswith("gloo:")]
    spans += [
        (k.start_ns(), k.end_ns())
        for k in result.events()
        if k.device_type() != torch.autograd.DeviceType.CPU and k.name().lower().startswith("nccl")
    ]
    calls = tuple(_collectives(tree, ranks))
    comm_ns = busy_ns(spans, start, end) if spans or not calls else None
    return StepCollectives(
        calls=calls, step_s=(end - start) / 1e9, comm_s=None if comm_ns is None else comm_ns / 1e9
    )


def _walk(events) -> Iterator:
    for e in events:
        yield e
        yield from _walk(e.children)


def _collectives(events, ranks: int) -> Iterator[Collective]:
    """The outermost c10d operators, in the order they started."""
    found = []

    def visit(nodes) -> None:
        for e in nodes:
            if e.name in OPERATORS:
                found.append(e)  # a c10d operator it calls is part of the same collective
            elif not e.name.startswith("c10d::"):
                visit(e.children)

    visit(events)
    for e in sorted(found, key=lambda e: e.start_time_ns):
        kind, argument, per_rank = OPERATORS[e.name]
        nbytes = 0 if argument is None else _tensor_bytes(e.extra_fields.inputs[argument])
        yield Collective(kind, nbytes * (ranks if per_rank else 1))


def _tensor_bytes(value) -> int:
    """Bytes of a recorded tensor argument: one tensor's metadata, or a list of them."""
    if isinstance(value, list):
        return sum(_tensor_bytes(v) for v in value)
    if value is None or not hasattr(value, "sizes"):
        return 0
    numel = 1
    for size in value.sizes:
        numel *= size
    return numel * value.dtype.itemsize


def busy_ns(spans: Iterable[tuple[int, int]], start: int, end: int) -> int:
    """The length of the union of `spans`, clipped to [start, end]."""
    total, reached = 0, start
    for a, b in sorted(spans):
        a, b = max(a, reached), min(b, end)
        if b > a:
            total += b - a
            reached = b
    return total
