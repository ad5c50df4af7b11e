"""Exponential moving average of a model's parameters for sampling (Ho et al. 2020: decay 0.9999).

Buffers are copied from the model, never averaged: an averaged running statistic or a schedule
table stored as a buffer drifts away from what the weights were trained with (black samples).

A model sharded by FSDP2 has DTensor parameters: each shadow is then a DTensor sharded alike, so
a rank keeps only its own shard, and every update is local (no exchange between ranks).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ddpm.parallel import local_shards
from ddpm.state import mismatch


class EMA:
    """Shadow copy of `model`'s parameters (averaged) and buffers (copied)."""

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.9999,
        warmup: bool = True,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        """`device`: where the shadow lives (default: each parameter's own; "cpu" keeps it in
        host memory, updated there from copies of the parameters). `dtype`: the shadow's
        floating dtype (default: the parameter's, at least float32; a bfloat16 shadow, as some
        recipes keep, moves only while (1 - decay) * difference is above its resolution)."""
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay <= 1:
            raise ValueError(f"decay must be a number in [0, 1], got {decay!r}.")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.param_names = [n for n, _ in model.named_parameters()]
        self.buffer_names = [n for n, _ in model.named_buffers()]
        # At least float32: with a bf16 shadow, a step of (1 - 0.9999) * difference is below
        # bf16 resolution and the average would never move.
        self.params = shadow_of(list(model.parameters()), device, dtype)
        self.buffers = [b.detach().to(device=device, copy=True) for b in model.buffers()]

    def current_decay(self) -> float:
        """The decay the next update uses.

        Warm-up min(decay, (1 + n) / (10 + n)) is tf.train.ExponentialMovingAverage's num_updates
        rule (also diffusers' EMAModel): early on the shadow follows the model instead of staying
        near the random initialisation for ~1/(1 - decay) steps.
        """
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shadow <- decay * shadow + (1 - decay) * param for every parameter; buffers copied."""
        params = self._matching(list(model.parameters()), self.params, "parameters")
        weight = 1.0 - self.current_decay()
        if params:
            src = sources_for(params, self.params)  # one foreach call updates all
            # Plain tensors (a DTensor's shard) for the foreach kernels: torch has no DTensor
            # rule for some of them (_foreach_copy_).
            torch._foreach_lerp_(local_shards(self.params), local_shards(src), weight)
        buffers = self._matching(list(model.buffers()), self.buffers, "buffers")
        if buffers:
            torch._foreach_copy_(self.buffers, buffers)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the shadow parameters and buffers into `model`, cast to its dtype and device."""
        params = self._matching(list(model.parameters()), self.params, "parameters")
        buffers = self._matching(list(model.buffers()), self.buffers, "buffers")
        if params:
            torch._foreach_copy_(local_shards(params), local_shards(self.params))
        if buffers:
            torch._foreach_copy_(buffers, self.buffers)

    @contextlib.contextmanager
    def swap_into(self, model: nn.Module):
        """Run a block with the EMA weights in `model`; its own weights come back afterwards."""
        with torch.no_grad():
            saved_p = [p.detach().clone() for p in model.parameters()]
            saved_b = [b.detach().clone() for b in model.buffers()]
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for dst, src in zip(model.parameters(), saved_p, strict=True):
                    dst.copy_(src)
                for dst, src in zip(model.buffers(), saved_b, strict=True):
                    dst.copy_(src)

    def to(self, device) -> EMA:
        """Move the shadow copy (e.g. to the CPU to spare accelerator memory); returns self."""
        self.params = [p.to(device) for p in self.params]
        self.buffers = [b.to(device) for b in self.buffers]
        return self

    def state_dict(self) -> dict:
        """Settings, update count and shadow tensors (references, like nn.Module.state_dict)."""
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "params": dict(zip(self.param_names, self.params, strict=True)),
            "buffers": dict(zip(self.buffer_names, self.buffers, strict=True)),
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Restore from state_dict(); names and shapes must match this EMA's model."""
        missing = {"decay", "warmup", "num_updates", "params", "buffers"} - set(state)
        if missing:
            raise ValueError(f"EMA state dict lacks {sorted(missing)}.")
        for kind, names, tensors in (
            ("params", self.param_names, self.params),
            ("buffers", self.buffer_names, self.buffers),
        ):
            problem = mismatch(state[kind], dict(zip(names, tensors, strict=True)))
            if problem:
                raise ValueError(
                    f"EMA state dict {kind} do not fit the model: {problem} (a checkpoint from "
                    "a different model?)."
                )
        for kind, names, tensors in (
            ("params", self.param_names, self.params),
            ("buffers", self.buffer_names, self.buffers),
        ):
            for name, dst in zip(names, tensors, strict=True):
                dst.copy_(state[kind][name])
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])

    @staticmethod
    def _matching(model_tensors: list, shadow: list, kind: str) -> list:
        if len(model_tensors) != len(shadow):
            raise ValueError(
                f"model has {len(model_tensors)} {kind} but the EMA holds {len(shadow)}; "
                f"pass the model the EMA was built from."
            )
        return model_tensors


class NoEMA:
    """No EMA (a trainer's ema "off"): nothing kept, nothing updated. Its state is empty, and
    loading a checkpoint's EMA into it keeps nothing."""

    def __init__(self):
        self.params: list[torch.Tensor] = []
        self.buffers: list[torch.Tensor] = []

    def update(self, model: nn.Module) -> None:
        pass

    def state_dict(self) -> dict:
        return {"off": True, "params": {}, "buffers": {}}

    def load_state_dict(self, state: dict) -> None:
        pass


def shadow_of(
    tensors: list[torch.Tensor],
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> list[torch.Tensor]:
    """Shadow copies of `tensors`: on `device` (default each tensor's own; "cpu" keeps them in
    host memory) in `dtype` for the floating ones (default the tensor's, at least float32)."""
    return [
        t.detach().to(device=device, dtype=dtype or _shadow_dtype(t.dtype), copy=True)
        if t.dtype.is_floating_point
        else t.detach().to(device=device, copy=True)
        for t in tensors
    ]


def sources_for(tensors: list[torch.Tensor], shadow: list[torch.Tensor]) -> list[torch.Tensor]:
    """`tensors` where their shadow lives and in its dtype, what an update reads: a host
    shadow's copies of the weights; the weights themselves (.to copies nothing) where device
    and dtype already match."""
    return [
        t.detach().to(device=e.device, dtype=e.dtype) for t, e in zip(tensors, shadow, strict=True)
    ]


def _shadow_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32) if dtype.is_floating_point else dtype
