"""The optimizers a spec can train with (the --optimizer axis; their packages are checked by
bench.parsers.parse_optimizers before anything runs), each built as its library's recipe
builds it.

Learning rates: each follows the trainer's schedule (TrainConfig.lr, its warm-up), times its
group's "lr_scale" where the optimizer's own scale differs from Adam's: Prodigy runs at lr 1 (its
README: it estimates the step size itself), Lion at a third of Adam's (its paper: 3-10x smaller),
Adafactor at torch's default 1e-2 (the relative step's cap). SGD keeps momentum 0.9 at Adam's lr.

On fake tensors (the memory prediction) an optimizer whose step cannot run there is replaced by
the stand-in that allocates its state as its code does on CUDA (bench.models.optimizer_state)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.distributed.tensor import DTensor

from bench.models.optimizer_state import LAYOUTS, ModelledState
from ddpm.config import TrainConfig

ADAFACTOR_LR = 1e-2  # torch.optim.Adafactor's default
LION_LR_SCALE = 1 / 3
PRODIGY_LR = 1.0


def _adamw8bit(params, config: TrainConfig):
    import bitsandbytes as bnb

    return bnb.optim.AdamW8bit(
        params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )


def _torchao(bits: int):
    def build(params, config: TrainConfig):
        from torchao import optim

        cls = optim.AdamW8bit if bits == 8 else optim.AdamW4bit
        return cls(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)

    return build


def _adafactor(params, config: TrainConfig):
    return _scaled(
        torch.optim.Adafactor(params, lr=ADAFACTOR_LR, weight_decay=config.weight_decay),
        ADAFACTOR_LR / config.lr,
    )


def _sgd(params, config: TrainConfig):
    # foreach, as torch picks on CUDA (its default on the CPU is the per-tensor loop)
    return torch.optim.SGD(
        params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay, foreach=True
    )


def _lion(params, config: TrainConfig):
    from lion_pytorch import Lion

    return _scaled(
        Lion(params, lr=config.lr * LION_LR_SCALE, weight_decay=config.weight_decay),
        LION_LR_SCALE,
    )


def _prodigy(params, config: TrainConfig):
    from prodigyopt import Prodigy

    return _scaled(
        Prodigy(params, lr=PRODIGY_LR, betas=config.betas, weight_decay=config.weight_decay),
        PRODIGY_LR / config.lr,
    )


def _scaled(optimizer: torch.optim.Optimizer, scale: float) -> torch.optim.Optimizer:
    for group in optimizer.param_groups:
        group["lr_scale"] = scale  # read by the trainer's schedule (ddpm.train)
    return optimizer


BUILDERS: dict[str, Callable] = {
    "adamw8bit": _adamw8bit,
    "ao-adamw8bit": _torchao(8),
    "ao-adamw4bit": _torchao(4),
    "adafactor": _adafactor,
    "sgd": _sgd,
    "lion": _lion,
    "prodigy": _prodigy,
}


def modelled(name: str) -> bool:
    """Whether the prediction models this optimizer's state instead of tracing its step."""
    return name in LAYOUTS


def local(p: torch.Tensor) -> torch.Tensor:
    """A parameter's own values: under FSDP2 its rank's shard (a DTensor's local tensor)."""
    return p.to_local() if isinstance(p, DTensor) else p


def build_optimizer(name: str, params, config: TrainConfig) -> torch.optim.Optimizer | None:
    """The optimizer `name` over `params`; None for adamw, the trainer's (or the
    implementation's recipe's) own."""
    if name == "adamw":
        return None
    params = list(params)
    if modelled(name) and any(isinstance(local(p), FakeTensor) for p in params):
        return ModelledState(params, name, config.lr)
    return BUILDERS[name](params, config)
