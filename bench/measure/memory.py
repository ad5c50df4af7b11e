"""Tensor-level memory of one optimizer step: tracked on the real device, or predicted for CUDA
by running the same step on fake tensors (no memory, no compute) with CUDA's block rounding."""

from __future__ import annotations

import contextlib

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from bench.measure.tracked import MemoryPeak, TensorTracker
from bench.spec import BenchSpec
from bench.workload import build_trainer, synthetic_images
from ddpm.schedule import NoiseSchedule

CUDA_BLOCK_BYTES = 512  # the caching allocator rounds every allocation up to a multiple of this


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


def step_peak(spec: BenchSpec, fake: bool, full_trace: bool = False) -> MemoryPeak:
    """Peak live-tensor bytes of a steady-state optimizer step (optimizer state already made).

    fake=True: the prediction for CUDA: fake tensors, every storage rounded up to 512 bytes, and
    fp16 traced as bf16 (the same 2-byte autocast; GradScaler's step needs real values, and its
    own memory is a few scalars). Autocast follows this machine's rules for the device type."""
    accum = spec.accum if full_trace else traced_accum(spec)
    precision = "bf16" if fake and spec.precision == "fp16" else spec.precision
    schedule = NoiseSchedule.linear()  # built outside fake mode: its validation reads values
    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()
    device = "cpu" if fake else spec.device
    with mode:
        trainer = build_trainer(spec, device=device, accum=accum, precision=precision,
                                compiled=False, schedule=schedule)
        trainer.step(synthetic_images(spec, spec.batch * accum))  # creates optimizer state
        round_to = CUDA_BLOCK_BYTES if fake else None
        with TensorTracker(trainer.model, trainer.optimizer, trainer.ema.params,
                           round_to=round_to) as tracker:
            # Inputs of the untraced micro-batches: held for the whole step, never touched.
            untraced = torch.empty(_input_bytes(spec, spec.batch * (spec.accum - accum)),
                                   dtype=torch.uint8, device=device)
            images = synthetic_images(spec, spec.batch * accum).to(device)
            trainer.step(images)
            del untraced, images
    return tracker.peak
