"""Memory of one steady-state optimizer step: tracked on the real device, or predicted for a CUDA
card on any machine.

The prediction runs the same step on fake tensors (no memory, no compute) under CUDA's rules
(bench.measure.cuda_rules), then replays its ordered allocations and frees through a model of
the CUDA caching allocator (bench.measure.allocator): what the card's allocator would report as
allocated and reserved, the cuBLAS workspace among them."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from bench.measure.allocator import cublas_workspace_bytes, parse_alloc_conf, replay
from bench.measure.cuda_rules import CudaRules
from bench.measure.tracked import MemoryPeak, TensorTracker
from bench.spec import BenchSpec
from bench.workload import build_trainer, synthetic_images
from ddpm.precision import MIB
from ddpm.schedule import NoiseSchedule

CUDA_BLOCK_BYTES = 512  # the caching allocator rounds every allocation up to a multiple of this
# The card the prediction is for unless told otherwise: the 8 GB GeForce cards (RTX 3060 Ti,
# 3070: sm86; RTX 4060: sm89, under the same rules here).
DEFAULT_TARGET = (8, 6)


@dataclass(frozen=True)
class Prediction:
    """One steady-state step on a CUDA card of compute capability `target`."""

    tensors: MemoryPeak  # live tensors at the peak, each rounded to 512 B, by category
    alloc_bytes: int  # the allocator's peak allocated: whole blocks, cuBLAS workspaces included
    reserved_bytes: int  # its peak reserved: the segments it took from the driver
    cublas_workspace_bytes: int  # both threads' workspaces together
    target: tuple[int, int]

    def mib(self, what: str) -> float:
        return getattr(self, f"{what}_bytes") / MIB


def traced_accum(spec: BenchSpec) -> int:
    """Micro-batches to trace. From the second micro-batch on, each one starts from the same
    state (weights, gradients, optimizer state, EMA, inputs) and runs the same ops, so its peak
    repeats; tracing two and holding the untraced inputs gives the full step's peak exactly
    (tests/test_bench_memory.py checks this against a full trace)."""
    return min(spec.accum, 2)


def _input_bytes(spec: BenchSpec, images: int) -> int:
    c = spec.unet_config()
    # x0 and its noise in float32, and one int64 timestep per image.
    return images * (2 * 4 * c.in_channels * c.image_size**2 + 8)


def _trace(spec: BenchSpec, fake: bool, full_trace: bool = False,
           target: tuple[int, int] = DEFAULT_TARGET) -> TensorTracker:
    """A warm-up step (it creates the optimizer state), then a measured step, under a tracker
    whose peak is reset between the two, so its peak is the steady state's.

    fake=True is the CUDA prediction: fake tensors, storages rounded to 512 B, CUDA's rules,
    and fp16 traced as bf16 (the same 2-byte autocast lists; GradScaler's step needs real
    values, and its own memory is a few scalars)."""
    accum = spec.accum if full_trace else traced_accum(spec)
    precision = "bf16" if fake and spec.precision == "fp16" else spec.precision
    schedule = NoiseSchedule.linear()  # built outside fake mode: its validation reads values
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()
    rules = CudaRules(target) if fake else contextlib.nullcontext()
    device = "cpu" if fake else spec.device
    with fake_mode, rules:
        trainer = build_trainer(spec, device=device, accum=accum, precision=precision,
                                compiled=False, schedule=schedule)
        round_to = CUDA_BLOCK_BYTES if fake else None
        with TensorTracker(trainer.model, trainer.optimizer, trainer.ema.params,
                           round_to=round_to) as tracker:
            trainer.step(synthetic_images(spec, spec.batch * accum))  # creates optimizer state
            tracker.reset_peak()
            # Inputs of the untraced micro-batches: held for the whole step, never touched.
            untraced = torch.empty(_input_bytes(spec, spec.batch * (spec.accum - accum)),
                                   dtype=torch.uint8, device=device)
            images = synthetic_images(spec, spec.batch * accum).to(device)
            trainer.step(images)
            del untraced, images
    return tracker


def step_peak(spec: BenchSpec, fake: bool, full_trace: bool = False,
              target: tuple[int, int] = DEFAULT_TARGET) -> MemoryPeak:
    """Peak live-tensor bytes of a steady-state optimizer step, by category (fake: under CUDA's
    rules for `target`, each storage rounded to 512 B)."""
    return _trace(spec, fake, full_trace, target).peak


def predict(spec: BenchSpec, target: tuple[int, int] = DEFAULT_TARGET,
            alloc_conf: str | None = None) -> Prediction:
    """The step's allocations replayed through the caching allocator as PYTORCH_CUDA_ALLOC_CONF
    (`alloc_conf`, default: this process's) configures it. cuBLAS keeps one workspace per
    handle and stream, and handles are per thread: the forward runs on this thread and the
    backward on autograd's device thread, so a step holds two, taken first and kept."""
    tracker = _trace(spec, fake=True, target=target)
    workspace = cublas_workspace_bytes(target)
    conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF") if alloc_conf is None else alloc_conf
    events = [("alloc", f"cublas-{thread}", workspace) for thread in ("forward", "backward")]
    allocator = replay(events + tracker.events, **parse_alloc_conf(conf))
    return Prediction(tracker.peak, allocator.peak_allocated, allocator.peak_reserved,
                      2 * workspace, target)
