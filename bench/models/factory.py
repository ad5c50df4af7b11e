"""`--impl package.module:callable`: the model a user trains, from their own factory.

The factory is any callable on the user's path returning an nn.Module called as model(x_t, t)
that returns the noise prediction: a tensor, or an object with `.sample` (diffusers' outputs).
`--model-config` gives its keyword arguments. It trains with our recipe (L_simple, fused AdamW,
our EMA). bench.sweep.cli imports and checks it in the parent before anything runs
(bench.models.impl.check)."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch import nn

from bench import model_config
from ddpm.config import UNetConfig
from ddpm.errors import first_line


class FactoryError(ValueError):
    """The factory cannot be used; the message is the one line the user reads."""


def resolve(name: str) -> Callable:
    """The callable `package.module:callable` names (its attribute path may be dotted)."""
    module_name, _, attribute = name.partition(":")
    try:
        target = importlib.import_module(module_name)
    except Exception as exc:  # whatever the user's module raises on import
        raise FactoryError(
            f"--impl {name}: module {module_name!r} does not import "
            f"({type(exc).__name__}: {first_line(exc)})."
        ) from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise FactoryError(f"--impl {name}: {module_name!r} has no attribute {attribute!r}.")
        target = getattr(target, part)
    if not callable(target):
        raise FactoryError(f"--impl {name}: {attribute!r} is not callable.")
    return target


class FactoryModel(nn.Module):
    """The user's module behind our calling convention: eps = model(x_t, t), a tensor."""

    def __init__(self, name: str, path: str = "", config: UNetConfig | None = None):
        super().__init__()
        # The input it takes, the preset's channels at --image-size (what a sampler reads).
        self.config = config
        factory = resolve(name)
        kwargs = model_config.load(path) if path else {}
        try:
            net = factory(**kwargs)
        except TypeError as exc:  # an unknown or missing keyword argument
            raise FactoryError(
                f"--impl {name} rejects its arguments"
                + (f" from --model-config {path}" if path else "")
                + f": {first_line(exc)}"
            ) from None
        if not isinstance(net, nn.Module):
            raise FactoryError(
                f"--impl {name} returned a {type(net).__name__}, not a torch.nn.Module."
            )
        self.net = net

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.net(x, t)
        return getattr(out, "sample", out)
