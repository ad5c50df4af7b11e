"""What each optimizer's update launches on a CUDA card in the time prediction's trace
(bench.predict.runtime), where the memory prediction's stand-in (bench.models.optimizer_state)
launches nothing.

Traced (their own step runs on the fake tensors, so the recorder sees each of their kernels):
adamw, sgd and lion as in the memory prediction, and here also adafactor (torch's foreach
Adafactor, as torch picks it on CUDA) and prodigy (prodigyopt's per-tensor loop). Both read
norms and dot products with `.item()` in their step and divide by them; fake tensors have no
values, so inside their step the recorder answers 1 (each `.item()` still a synchronisation:
the host waits for the card there, as on CUDA). Neither takes a branch on those values in its
steady state but Prodigy's `d_denom == 0`, which a trained step does not take.

Modelled, from their code (their kernels cannot run on fake tensors):

- adamw8bit, bitsandbytes' AdamW8bit (optim/optimizer.py, Optimizer2State.update_step, then
  Optimizer8bit.step's sync_gpu): per tensor one kernel, then torch.cuda.synchronize(), so the
  host waits for the card after every tensor. A quantized tensor's kernel
  (kOptimizer8bit2StateBlockwise) reads the gradient, the parameter, both uint8 states and both
  absmax vectors, and writes the parameter, the states and the absmax vectors; a tensor under
  4,096 values runs the 32-bit kernel (kOptimizer32bit2State) over float32 states.
- ao-adamw8bit / ao-adamw4bit, torchao's AdamW8bit / AdamW4bit (optim/adam.py, step): per
  tensor the host adds 1 to its step counter (a host tensor) and calls single_param_adam,
  torch.compile'd: one fused kernel that reads the gradient, the parameter and each state's
  codes, scales and map, and writes the parameter and the codes and scales.

Each is a memory-bound kernel at the card's bandwidth (bench.predict.step_time), its bytes what
it reads and writes once. The quantization maps (2 KiB at most) are read through the caches and
not counted."""

from __future__ import annotations

import math

import torch

from bench.models.optimizer_state import LAYOUTS, Layout, ModelledState
from bench.models.optimizers import BUILDERS
from bench.predict.kernels import Kernel, KernelRecorder

# Built as the library's own optimizer in the time prediction's trace.
TRACED_STEPS = frozenset({"adafactor", "prodigy"})
MODELLED_STEPS = frozenset({"adamw8bit", "ao-adamw8bit", "ao-adamw4bit"})
READ_ONLY = "qmap"  # a quantization map: read through the caches, never written


def _state_bytes(layout: Layout) -> int:
    """Bytes of the state one update reads and writes (each once; the maps left out)."""
    return sum(
        math.prod(shape) * dtype.itemsize
        for key, (shape, dtype) in layout.items()
        if not key.endswith(READ_ONLY)
    )


def update_bytes(name: str, p: torch.Tensor) -> int:
    """The bytes one modelled update of `p` moves: the gradient read, the parameter read and
    written, its state read and written."""
    per_param, _ = LAYOUTS[name]
    param = p.numel() * p.element_size()
    return 3 * param + 2 * _state_bytes(per_param(p))


def update_kernels(name: str, params: list[torch.Tensor]) -> list[Kernel]:
    """The kernels of one steady-state step of the modelled optimizer `name`, in order."""
    found = []
    for p in params:
        moved = update_bytes(name, p)
        dtype = p.dtype
        if name == "adamw8bit":
            found.append(Kernel("bnb_optimizer_update", "memory", 0, moved, dtype, host_ops=1))
            found.append(Kernel("bnb_sync_gpu", "sync", launches=0))
        else:
            found.append(Kernel("torchao_step_add", "host", launches=0, host_ops=1))
            found.append(Kernel("torchao_single_param_adam", "memory", 0, moved, dtype, host_ops=1))
    return found


def attach(trainer, name: str, recorder: KernelRecorder) -> None:
    """Make the trainer's optimizer step show its update to `recorder`: the library's own
    optimizer (TRACED_STEPS), its `.item()`s answered 1, or the stand-in's step followed by the
    modelled kernels (MODELLED_STEPS). Others are traced as they are."""
    optimizer = trainer.optimizer
    if not isinstance(optimizer, ModelledState):
        return
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if name in TRACED_STEPS:
        optimizer = BUILDERS[name](params, trainer.config)
        trainer.optimizer = optimizer

        def answer_one(*_):
            recorder.item_value = 1

        def answer_zero(*_):
            recorder.item_value = 0

        optimizer.register_step_pre_hook(answer_one)
        optimizer.register_step_post_hook(answer_zero)
    elif name in MODELLED_STEPS:

        def modelled(*_):
            live = [p for p in params if p.grad is not None]
            recorder.extend(update_kernels(name, live))

        optimizer.register_step_post_hook(modelled)
