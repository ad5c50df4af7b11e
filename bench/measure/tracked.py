"""Live-tensor accounting: the peak bytes held by tensors during a region, by category.

A TorchDispatchMode sees every tensor an op returns; each new storage is counted until Python
frees it (a weakref callback on the storage, whose Python object lives as long as the storage).
It works on real tensors (the `tracked` figures) and on fake ones (the CUDA prediction, where
`round_to=512` applies the CUDA caching allocator's block rounding). It also keeps the ordered
stream of allocations and frees (raw sizes), which the prediction replays through a model of the
caching allocator. It needs no private API.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ddpm.precision import MIB

CATEGORIES = ("parameters", "gradients", "optimizer_state", "ema", "activations", "temporaries")


def _storages(tensors):
    """(storage, device type) of each dense tensor; a fake tensor's storage reports "meta", so
    the device comes from the tensor."""
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.layout == torch.strided:
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
    the optimizer and not kept as gradients or state)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 ema_tensors=(), round_to: int | None = None):
        super().__init__()
        self.model, self.optimizer, self.round_to = model, optimizer, round_to
        # Only the model's device counts: a CPU staging copy is not GPU memory.
        self.device_type = next(model.parameters()).device.type
        self._live: dict[int, tuple[str, int, weakref.ref]] = {}
        self._current = dict.fromkeys(CATEGORIES, 0)
        self._in_optimizer = False
        self.peak = MemoryPeak()
        # ("alloc", key, bytes), ("free", key) and ("reset",) in program order.
        self.events: list[tuple] = []
        self._hooks = []
        self._add(_storages(list(model.parameters()) + list(model.buffers())), "parameters")
        self._add(_storages(p.grad for p in model.parameters() if p.grad is not None), "gradients")
        self._add(_storages(ema_tensors), "ema")
        if optimizer is not None:
            self._add(_storages(tree_leaves(list(optimizer.state.values()))), "optimizer_state")

    # -- bookkeeping ----------------------------------------------------------------------------
    def _size(self, st) -> int:
        n = st.nbytes()
        if self.round_to and n:
            n = -(-n // self.round_to) * self.round_to
        return n

    def _add(self, storages, category: str) -> None:
        for st, device_type in storages:
            key = st._cdata
            if key in self._live or device_type != self.device_type:
                continue
            size = self._size(st)
            self._live[key] = (category, size, weakref.ref(st, lambda _, k=key: self._free(k)))
            self._current[category] += size
            self.events.append(("alloc", key, st.nbytes()))
        total = sum(self._current.values())
        if total > self.peak.total:
            self.peak = MemoryPeak(total, dict(self._current))

    def _free(self, key: int) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            self._current[entry[0]] -= entry[1]
            self.events.append(("free", key))

    @property
    def live_bytes(self) -> int:
        """Bytes held by tracked tensors now."""
        return sum(self._current.values())

    def reset_peak(self) -> None:
        """Start a new peak from what is live now, like torch.cuda.reset_peak_memory_stats."""
        self.peak = MemoryPeak(sum(self._current.values()), dict(self._current))
        self.events.append(("reset",))

    def _move(self, storages, category: str) -> None:
        for st, _ in storages:
            entry = self._live.get(st._cdata)
            if entry is not None and entry[0] != category:
                self._current[entry[0]] -= entry[1]
                self._current[category] += entry[1]
                self._live[st._cdata] = (category, entry[1], entry[2])

    # -- hooks that name what a new storage is --------------------------------------------------
    def __enter__(self):
        for p in self.model.parameters():
            if p.requires_grad:
                self._hooks.append(p.register_post_accumulate_grad_hook(
                    lambda q: self._move(_storages([q.grad]), "gradients")))
        if self.optimizer is not None:
            self._hooks.append(self.optimizer.register_step_pre_hook(self._opt_pre))
            self._hooks.append(self.optimizer.register_step_post_hook(self._opt_post))
        return super().__enter__()

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        return super().__exit__(*exc)

    def _opt_pre(self, *_):
        self._in_optimizer = True

    def _opt_post(self, *_):
        self._in_optimizer = False
        self._move(_storages(tree_leaves(list(self.optimizer.state.values()))), "optimizer_state")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self._in_optimizer or torch._C._current_graph_task_id() != -1:
            category = "temporaries"  # inside optimizer.step or the autograd engine (backward)
        else:
            category = "activations"
        self._add(_storages(tree_leaves(out)), category)
        return out
