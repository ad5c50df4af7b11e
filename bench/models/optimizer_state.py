"""Each optimizer's state on a CUDA card as its own code allocates it, for the optimizers whose
step cannot run on fake tensors, and the stand-in that allocates that state in the memory
prediction's trace (bench.predict.trace).

Traced, not modelled (their step runs on fake tensors, so the trace sees their state and their
temporaries as CUDA would): adamw (torch's fused AdamW), sgd (torch's foreach SGD), lion
(lion-pytorch's torch ops). Modelled here, from each library's code:

- adamw8bit, bitsandbytes' AdamW8bit (optim/optimizer.py, Optimizer2State.init_state): a tensor
  of 4,096 values or more keeps two uint8 states of its shape and two float32 absmax vectors of
  one value per 256-value block; a smaller one keeps two float32 states. One pair of 256-value
  float32 quantization maps (signed, unsigned) is shared by every tensor. Its step is one fused
  kernel that updates in place (a .item() in its CPU path stops the fake trace).
- ao-adamw8bit / ao-adamw4bit, torchao's AdamW8bit / AdamW4bit (optim/adam.py, _new_buffer): a
  tensor of 4,096 values or more whose size is a multiple of the block (256 / 128 values) keeps
  each of its two states as codes (uint8, one value per byte / two per byte), a float32 scale per
  block and a float32 quantization map of its own (256 / 16 values); any other tensor keeps two
  float32 states of its shape. Its step counter is a host tensor. Its step is torch.compile'd.
- adafactor, torch's Adafactor (optim/_adafactor.py): a tensor of 2 or more dims keeps a row
  factor (its shape, last dim 1) and a column factor (its shape, second-to-last dim 1); a vector
  keeps a full variance. Its step counter is a host tensor (a .item() stops the fake trace).
- prodigy, prodigyopt's Prodigy (prodigy.py): per tensor s and p0 (its values flattened), and
  exp_avg and exp_avg_sq (its shape). A tensor that is all zeros at the first step keeps a scalar
  p0 instead, which depends on values fake tensors lack: the model counts the full p0, an upper
  bound by those tensors' size.

The modelled optimizers' own temporaries (bitsandbytes' and torchao's fused steps have none of
size; Adafactor's and Prodigy's per-tensor loops hold a few tensors of one parameter's size) are
not in the prediction."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.distributed.tensor import DTensor

Layout = dict[str, tuple[tuple[int, ...], torch.dtype]]  # state name -> (shape, dtype)
F32, U8 = torch.float32, torch.uint8
QUANTIZED_MIN = 4096  # bitsandbytes' min_8bit_size; torchao follows it


def _blocks(n: int, block: int) -> int:
    return -(-n // block)


def bnb_adamw8bit(p: torch.Tensor) -> Layout:
    shape, n = tuple(p.shape), p.numel()
    if n < QUANTIZED_MIN:
        return {"state1": (shape, F32), "state2": (shape, F32)}
    absmax = ((_blocks(n, 256),), F32)
    return {"state1": (shape, U8), "state2": (shape, U8), "absmax1": absmax, "absmax2": absmax}


def bnb_shared(params: list[torch.Tensor]) -> Layout:
    if not any(p.numel() >= QUANTIZED_MIN for p in params):
        return {}
    return {"qmap1": ((256,), F32), "qmap2": ((256,), F32)}


def _torchao(block: int, values_per_byte: int, qmap: int) -> Callable[[torch.Tensor], Layout]:
    def layout(p: torch.Tensor) -> Layout:
        shape, n = tuple(p.shape), p.numel()
        if n < QUANTIZED_MIN or n % block:
            return {"exp_avg": (shape, p.dtype), "exp_avg_sq": (shape, p.dtype)}
        codes = (shape, U8) if values_per_byte == 1 else ((n // values_per_byte,), U8)
        state = {}
        for name in ("exp_avg", "exp_avg_sq"):
            state.update(
                {
                    f"{name}.codes": codes,
                    f"{name}.scale": ((n // block,), F32),
                    f"{name}.qmap": ((qmap,), F32),
                }
            )
        return state

    return layout


def adafactor(p: torch.Tensor) -> Layout:
    shape = tuple(p.shape)
    if p.dim() < 2:
        return {"variance": (shape, p.dtype)}
    row = (*shape[:-1], 1)
    col = (*shape[:-2], 1, shape[-1])
    return {"row_var": (row, p.dtype), "col_var": (col, p.dtype)}


def prodigy(p: torch.Tensor) -> Layout:
    flat = ((p.numel(),), p.dtype)
    shape = (tuple(p.shape), p.dtype)
    return {"s": flat, "p0": flat, "exp_avg": shape, "exp_avg_sq": shape}


def _none(params: list[torch.Tensor]) -> Layout:
    return {}


# name -> (each parameter's state, the state shared by all)
LAYOUTS: dict[str, tuple[Callable[[torch.Tensor], Layout], Callable[[list], Layout]]] = {
    "adamw8bit": (bnb_adamw8bit, bnb_shared),
    "ao-adamw8bit": (_torchao(256, 1, 256), _none),
    "ao-adamw4bit": (_torchao(128, 2, 16), _none),
    "adafactor": (adafactor, _none),
    "prodigy": (prodigy, _none),
}


def state_bytes(name: str, params: list[torch.Tensor], round_to: int = 1) -> int:
    """The modelled state's bytes on CUDA, each tensor rounded up to `round_to` bytes."""
    per_param, shared = LAYOUTS[name]
    layouts = [per_param(p) for p in params] + [shared(params)]
    return sum(
        -(-math.prod(shape) * dtype.itemsize // round_to) * round_to
        for layout in layouts
        for shape, dtype in layout.values()
    )


class ModelledState(torch.optim.Optimizer):
    """The stand-in of a modelled optimizer on fake tensors: its first step allocates each
    parameter's state as LAYOUTS says (on the parameter's device), and every step updates it in
    place, which allocates nothing. Under FSDP2 a parameter is a DTensor and each rank keeps the
    state of its own shard (its local tensor), as torchao's optimizers do on FSDP2."""

    def __init__(self, params, name: str, lr: float):
        super().__init__(params, {"lr": lr})
        self.name = name

    @torch.no_grad()
    def step(self, closure=None):
        per_param, shared = LAYOUTS[self.name]
        owners = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        values = [p.to_local() if isinstance(p, DTensor) else p for p in owners]
        for i, (owner, p) in enumerate(zip(owners, values)):
            state = self.state[owner]
            if state:
                continue
            layout = per_param(p) | (shared(values) if i == 0 else {})
            for key, (shape, dtype) in layout.items():
                state[key] = torch.zeros(shape, dtype=dtype, device=p.device)
        return None
