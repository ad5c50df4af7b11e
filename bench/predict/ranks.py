"""One rank of a data-parallel step, in one process: what bench.predict.trace traces when a spec
spreads its model over spec.ranks ranks (parallel ddp or fsdp).

No peer is needed to learn one rank's memory: a fake process group (torch's "fake" backend) of
spec.ranks answers every collective at once without moving data, while the model is wrapped by
the same ddpm.parallel.wrap as in training, so FSDP2 shards each parameter over spec.ranks and
DDP builds its gradient buckets. Rank 0 is traced: it holds the largest share (FSDP2 gives it a
whole chunk of every parameter; the last ranks hold the padding, which is not optimizer state).

DDP needs what the fake group and fake tensors lack in three places, each stood in for without
changing what a rank holds:
  - its gradient exchange waits on the group's future for the reduced bucket, and the fake
    group's future holds no tensor: a comm hook answers with the bucket itself, as NCCL's
    in-place all-reduce would, no copy (`answer_all_reduce`); the reducer then leaves each
    param.grad a view into the bucket (gradient_as_bucket_view, as training builds DDP), so
    the trace holds the same single copy of the gradients between steps as a real rank;
  - at construction it compares parameter shapes across ranks and broadcasts rank 0's weights,
    reading values fake tensors do not have; both run in place, so they are skipped
    (`fake_tensor_ddp`);
  - before its second forward it rebuilds its buckets in the order gradients arrived, agreeing
    on that order across ranks by value. Skipped too (`fake_tensor_ddp`), the first buckets
    stay: the same bytes, grouped in reverse definition order rather than arrival order.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from unittest import mock

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from bench.measure.tracked import storages
from bench.spec import BenchSpec


@contextlib.contextmanager
def rank_zero(spec: BenchSpec, fake_tensors: bool) -> Iterator:
    """The DeviceMesh the spec's model spreads over (None for one rank), in a process group.

    A process already in a group (a torchrun rank) measures in it, with real peers; otherwise a
    fake group of spec.ranks is made for the trace and destroyed after it, so one process can
    predict several specs in a row. Fake tensors cannot take part in a real group's collectives:
    they need a process of their own (bench.predict.trace.predict starts one)."""
    from torch.distributed.device_mesh import init_device_mesh

    if spec.parallel == "none":
        yield None
        return
    if dist.is_initialized():
        if fake_tensors:
            raise RuntimeError(
                "fake tensors need a process without a process group: the "
                "trace makes a fake group of its own"
            )
        if dist.get_world_size() != spec.ranks:
            raise RuntimeError(
                f"this process group has {dist.get_world_size()} ranks; the spec "
                f"asks for {spec.ranks}"
            )
        # On the spec's device type: FSDP2's default mesh is on the machine's accelerator.
        yield init_device_mesh(torch.device(spec.device).type, (spec.ranks,))
        return
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=spec.ranks)
    try:
        # Built before any FakeTensorMode: the mesh reads its rank table's values. On the CPU,
        # where the trace's tensors are (under CUDA's rules when predicting).
        yield init_device_mesh("cpu", (spec.ranks,))
    finally:
        dist.destroy_process_group()


def is_fake_group() -> bool:
    return dist.is_initialized() and dist.get_backend() == "fake"


def answer_all_reduce(model: torch.nn.Module) -> None:
    """Under the fake group, DDP's exchange gets its bucket back as the reduced bucket (see the
    module's docstring); any other model, or a real group, is left as it is."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel) and is_fake_group():
        model.register_comm_hook(None, _in_place_all_reduce)


def _in_place_all_reduce(_state, bucket):  # DDP refuses any return annotation but its own
    future = torch.futures.Future()
    future.set_result(bucket.buffer())
    return future


@contextlib.contextmanager
def fake_tensor_ddp() -> Iterator[None]:
    """DDP over fake tensors: its value-only steps skipped (see the module's docstring)."""
    import torch.nn.parallel.distributed as ddp

    with (
        mock.patch.object(ddp, "_verify_param_shape_across_processes", _nothing),
        mock.patch.object(ddp, "_sync_module_states", _nothing),
        mock.patch.object(dist.Reducer, "_rebuild_buckets", lambda _reducer: False),
    ):
        yield


def _nothing(*_args, **_kwargs) -> None:
    return None


class KeptStorages(TorchDispatchMode):
    """with KeptStorages() as born: build(); born.kept() -> the storages made inside the block
    that are still alive (DDP's gradient buckets, which its C++ reducer holds out of Python's
    sight), as (storage, device type) pairs for TensorTracker.hold."""

    def __init__(self):
        super().__init__()
        self._born: list[tuple[weakref.ref, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._born.extend((weakref.ref(st), device) for st, device in storages(tree_leaves(out)))
        return out

    def kept(self) -> list[tuple[torch.UntypedStorage, str]]:
        alive = [(ref(), device) for ref, device in self._born]
        return [(st, device) for st, device in alive if st is not None and st.nbytes()]
