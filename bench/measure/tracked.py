"""Live-tensor accounting: the peak bytes held by tensors during a region, by category.

A TorchDispatchMode sees every tensor an op returns; each new storage is counted until Python
frees it (a weakref callback on the storage, whose Python object lives as long as the storage).
It works on real tensors (the `tracked` figures) and on fake ones (the CUDA prediction, where
`round_to=512` applies the CUDA caching allocator's block rounding). It also keeps the ordered
stream of allocations and frees (raw sizes), which the prediction replays through a model of the
caching allocator.

Under data parallelism (bench.predict.ranks) a parameter may be a DTensor, which holds no memory
itself: its local shard does, so wrapper tensors are counted through the tensors inside them.
FSDP2 frees and refills its gathered parameters by resizing their storages, which no dispatch
mode sees; the tracker wraps UntypedStorage.resize_ while it is active to count those too.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_leaves

from bench.spec import MIB

CATEGORIES = ("parameters", "gradients", "optimizer_state", "ema", "activations", "temporaries")


def _dense(tensors):
    """The strided tensors that hold the memory: a wrapper subclass (a DTensor) reports its
    global shape and a storage of that size, but its memory is the tensors inside it (the
    rank's shard)."""
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        if is_traceable_wrapper_subclass(t):
            yield from _dense(getattr(t, name) for name in t.__tensor_flatten__()[0])
        elif t.layout == torch.strided:
            yield t


def storages(tensors):
    """(storage, device type) of each dense tensor; a fake tensor's storage reports "meta", so
    the device comes from the tensor."""
    for t in _dense(tensors):
        yield t.untyped_storage(), t.device.type


@dataclass
class MemoryPeak:
    """Bytes by category at the moment the total was highest."""

    total: int = 0
    by_category: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))

    def mib(self, category: str | None = None) -> float:
        return (self.total if category is None else self.by_category[category]) / MIB


class TensorTracker(TorchDispatchMode):
    """with TensorTracker(model, optimizer, ema_tensors) as tr: ...; tr.peak.

    Categories: parameters (and buffers), gradients (param.grad), optimizer_state (tensors in
    optimizer.state), ema (the EMA shadow copy), activations (made outside backward and outside
    the optimizer: the forward pass and the step's inputs), temporaries (made in backward or in
    the optimizer and not kept as gradients or state). Under FSDP2, parameters are this rank's
    shards; the gathered whole parameters are activations in the forward and temporaries in the
    backward, like any other working copy."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        ema_tensors=(),
        round_to: int | None = None,
    ):
        super().__init__()
        self.model, self.optimizer, self.round_to = model, optimizer, round_to
        # Only the model's device counts: a CPU staging copy is not GPU memory.
        self.device_type = next(model.parameters()).device.type
        self._live: dict[int, tuple[str, int, weakref.ref]] = {}
        self._current = dict.fromkeys(CATEGORIES, 0)
        self._in_optimizer = False
        self.peak = MemoryPeak()
        # ("alloc", key, bytes), ("free", key) and ("reset",) in program order, and the op that
        # made each allocation (its aten overload; "held" for what the tracker was handed).
        self.events: list[tuple] = []
        self.origins: list[str] = []
        self._origin = "held"
        self._label: str | None = None  # the origin of what is made now, where a caller names it
        self._hooks = []
        # Parameters whose .grad someone other than autograd may set: FSDP2 assigns each shard's
        # gradient after its reduce-scatter, in backward. So after a backward has run, these are
        # read when the next new peak is taken.
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._after_backward = False
        # id -> parameter, for as long as the parameter lives (tensors compare by value, so no
        # set of tensors).
        self._grad_hooked: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        # Storages resized to nothing (FSDP2's freed gathers), by key: their device type, since a
        # fake storage reports "meta" and its tensor is not at hand when it grows again.
        self._parked: dict[int, str] = {}
        self._resize = None
        # Storages never counted, views of them included: key -> weak reference to the storage.
        self._ignored: dict[int, weakref.ref] = {}
        self._paused = False
        self._add(storages(list(model.parameters()) + list(model.buffers())), "parameters")
        self._add(storages(p.grad for p in model.parameters() if p.grad is not None), "gradients")
        self._add(storages(ema_tensors), "ema")
        if optimizer is not None:
            self._add(storages(tree_leaves(list(optimizer.state.values()))), "optimizer_state")

    # -- bookkeeping ----------------------------------------------------------------------------
    def _size(self, st) -> int:
        n = st.nbytes()
        if self.round_to and n:
            n = -(-n // self.round_to) * self.round_to
        return n

    def _add(self, pairs, category: str) -> None:
        for st, device_type in pairs:
            key = st._cdata
            if key in self._live or key in self._ignored or device_type != self.device_type:
                continue
            size = self._size(st)
            self._live[key] = (category, size, weakref.ref(st, lambda _, k=key: self._free(k)))
            self._current[category] += size
            self.events.append(("alloc", key, st.nbytes()))
            self.origins.append(self._origin)
        total = sum(self._current.values())
        if total > self.peak.total:
            if self._after_backward:
                self._move(
                    storages(p.grad for p in self._params if p.grad is not None), "gradients"
                )
                self._after_backward = False
            self.peak = MemoryPeak(total, dict(self._current))

    def _free(self, key: int) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            self._current[entry[0]] -= entry[1]
            self.events.append(("free", key))

    def hold(self, pairs, category: str) -> None:
        """Name (storage, device type) pairs that are kept but that no hook names (DDP's gradient
        buckets): those made before tracking began are counted, those counted as a step's
        working memory (activations, temporaries) are renamed; parameters, gradients, optimizer
        state and EMA keep their names."""
        pairs = list(pairs)
        self._add(pairs, category)
        working = ("activations", "temporaries")
        self._move(
            [
                (st, device)
                for st, device in pairs
                if self._live.get(st._cdata, ("",))[0] in working
            ],
            category,
        )

    def ignore(self, tensors) -> None:
        """Never count these tensors' storages, nor any view of them: host-side tensors, when
        the trace stands for a card that holds only their copies."""
        for st, _ in storages(tensors):
            key = st._cdata
            self._ignored[key] = weakref.ref(st, lambda _, k=key: self._ignored.pop(k, None))

    @contextlib.contextmanager
    def untracked(self):
        """Ignore what this block makes (see `ignore`)."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    @contextlib.contextmanager
    def labelled(self, origin: str):
        """Give what this block allocates the origin `origin` instead of the op that made it: a
        stand-in that a caller finds again by its name (bench.predict.trace's step inputs)."""
        self._label = origin
        try:
            yield
        finally:
            self._label = None

    @property
    def live_bytes(self) -> int:
        """Bytes held by tracked tensors now."""
        return sum(self._current.values())

    @property
    def live(self) -> MemoryPeak:
        """Bytes held by tracked tensors now, by category."""
        return MemoryPeak(sum(self._current.values()), dict(self._current))

    def reset_peak(self) -> None:
        """Start a new peak from what is live now, like torch.cuda.reset_peak_memory_stats."""
        self.peak = MemoryPeak(sum(self._current.values()), dict(self._current))
        self.events.append(("reset",))

    def _move(self, pairs, category: str) -> None:
        for st, _ in pairs:
            entry = self._live.get(st._cdata)
            if entry is not None and entry[0] != category:
                self._current[entry[0]] -= entry[1]
                self._current[category] += entry[1]
                self._live[st._cdata] = (category, entry[1], entry[2])

    def _resized(self, st) -> None:
        """A storage resized in place: to the CUDA caching allocator, a free of its old block
        and an allocation of the new size (resizing a CUDA storage moves it to a new block)."""
        key = st._cdata
        device_type = self._parked.pop(key, None)
        if key in self._live:
            device_type = self.device_type  # counted, so on the model's device
            self._free(key)
        if device_type is None:  # never counted here: a real storage knows its device
            device_type = st.device.type
        if st.nbytes() == 0:
            self._parked[key] = device_type
        else:
            self._origin = "resize_"
            self._add([(st, device_type)], self._category())
            self._origin = "held"

    # -- hooks that name what a new storage is --------------------------------------------------
    def __enter__(self):
        for p in self.model.parameters():
            self._hook_grad(p)
        # FSDP2 swaps each unit's whole parameters in before it runs: hooked as they appear, so
        # the gradients autograd accumulates into them (all of them while a rank accumulates
        # without syncing) count as gradients.
        for module in self.model.modules():
            self._hooks.append(module.register_forward_pre_hook(self._hook_module))
        if self.optimizer is not None:
            self._hooks.append(self.optimizer.register_step_pre_hook(self._opt_pre))
            self._hooks.append(self.optimizer.register_step_post_hook(self._opt_post))
        self._resize = torch.UntypedStorage.resize_
        torch.UntypedStorage.resize_ = _counted_resize(self._resize, self._resized)
        return super().__enter__()

    def __exit__(self, *exc):
        torch.UntypedStorage.resize_ = self._resize
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        return super().__exit__(*exc)

    def _hook_grad(self, p: torch.Tensor) -> None:
        if p.requires_grad and self._grad_hooked.get(id(p)) is not p:
            self._grad_hooked[id(p)] = p
            self._hooks.append(
                p.register_post_accumulate_grad_hook(
                    lambda q: self._move(storages([q.grad]), "gradients")
                )
            )

    def _hook_module(self, module, _args) -> None:
        for p in module.parameters(recurse=False):
            self._hook_grad(p)

    def _opt_pre(self, *_):
        self._in_optimizer = True

    def _opt_post(self, *_):
        self._in_optimizer = False
        state = list(storages(tree_leaves(list(self.optimizer.state.values()))))
        # State made before tracking began and taken in by this step (bitsandbytes' shared
        # quantization maps, built with the optimizer) counts as well.
        self._add(state, "optimizer_state")
        self._move(state, "optimizer_state")

    def _category(self) -> str:
        """What a storage made now is, unless a hook renames it later."""
        if torch._C._current_graph_task_id() != -1:
            self._after_backward = True
            return "temporaries"  # inside the autograd engine (backward)
        return "temporaries" if self._in_optimizer else "activations"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self._paused:
            self.ignore(tree_leaves(out))
        else:
            self._origin = self._label or str(func)
            self._add(storages(tree_leaves(out)), self._category())
            self._origin = "held"
        return out


def _counted_resize(resize, resized):
    """UntypedStorage.resize_ that also tells the tracker."""

    def resize_(storage, size):
        out = resize(storage, size)
        resized(storage)
        return out

    return resize_
