"""Fake tensors as every pass that builds a model without memory uses them (the model check, the
memory and time predictions, the FLOP count): torch's FakeTensorMode, which also knows the values
of small tensors made from Python numbers alone.

A model may read values while it is built: timm's and DiT's drop-path rates are
[x.item() for x in torch.linspace(0, rate, depth)]. A fake tensor has no values, so that model
failed on fake tensors (DataDependentOutputException) though it runs on real ones. Here a tensor
of at most CONSTANT_LIMIT elements that a factory function (linspace, arange, zeros, full, ...)
makes from numbers alone is computed for real and kept as the fake tensor's constant, as torch
keeps one for torch.tensor(3.0): reading it gives its value, and what is computed from constants
alone stays constant. Weights and activations are never constants: they are made by empty() and
random fills, or from fake tensors."""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._mode_utils import no_dispatch
from torch.utils._pytree import tree_leaves

# Elements of a tensor whose values are kept: a schedule or a table of rates, never a layer.
CONSTANT_LIMIT = 4096


class FakeMode(FakeTensorMode):
    """FakeTensorMode that keeps the values of small tensors made from numbers alone."""

    def may_turn_const(self, t: torch.Tensor) -> bool:
        return (
            t.numel() <= CONSTANT_LIMIT
            and t.layout == torch.strided
            and not self.is_our_fake(t)
            and t.device.type != "meta"
        )

    def dispatch(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = super().dispatch(func, types, args, kwargs)
        if _made_from_numbers(func, args, kwargs) and self._small_fake(out):
            with no_dispatch():
                real = func(*args, **kwargs)
            return self.fake_tensor_converter.from_real_tensor(self, real, make_constant=True)
        return out

    def _small_fake(self, out) -> bool:
        return (
            type(out) is not torch.Tensor
            and self.is_our_fake(out)
            and out.constant is None
            and out.device.type == "cpu"
            and out.numel() <= CONSTANT_LIMIT
        )


def _made_from_numbers(func, args, kwargs) -> bool:
    """A deterministic factory function given no tensor: its values follow from its arguments
    (empty()'s are whatever memory held, the random ones' the generator's)."""
    return (
        isinstance(func, torch._ops.OpOverload)
        and torch.Tag.nondeterministic_seeded not in func.tags
        and not func.overloadpacket.__name__.startswith("empty")
        and not any(isinstance(a, torch.Tensor) for a in tree_leaves((args, kwargs)))
    )


def fake_mode(allow_non_fake_inputs: bool = True) -> FakeMode:
    return FakeMode(allow_non_fake_inputs=allow_non_fake_inputs)
