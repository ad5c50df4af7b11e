"""The host's share of an eager step: what dispatching one aten op costs the CPU, measured here.

Eager PyTorch runs a step's Python, and for every aten op the dispatcher, autograd's recording
(or its engine, in backward), the allocator and the launch, one op after another on one CPU
thread; a card runs ahead of it only while its kernels are longer than that. The cost is measured
on a model small enough that its kernels take next to nothing (the `tiny` preset at 8x8 pixels,
batch 1, one thread), as the least of `repeats` timings of a real training step and of a real
denoising step on this CPU, divided by the aten ops that the kernel recorder counts in the same
steps (bench.predict.kernels, so that the cost is per op as the step model counts ops). It is
this process's CPU time, not the wall clock's, so other work on a shared machine does not
count. The tiny CPU kernels stand in for the CUDA launch each op also makes.

The host's rate through its memory (`host_memory_gbs`: --ema cpu updates the EMA there) is
measured alike: the least CPU time of the EMA's own update, one foreach lerp over float32
tensors far larger than the CPU's caches, on one thread (torch's CPU foreach ops run tensor
by tensor; a host with more cores and memory channels runs it faster), against the bytes it
reads and writes (the shadow and the parameter read, the shadow written).

Figures of this project's CPU, not the user's: `python -m bench.predict.calibrate
--measure-host` measures them again."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch

from bench.cards import CARDS
from bench.models.workload import build_model, train_step
from bench.spec import BenchSpec
from ddpm.sample import DDPMSampler, sample_progressive
from ddpm.schedule import NoiseSchedule

# The model the cost is measured on: every block type of the UNet, kernels of microseconds.
SPEC = BenchSpec(
    preset="tiny",
    image_size=8,
    attention="8",
    batch=1,
    precision="fp32",
    device="cpu",
    sampler="ddpm",
    sampling_steps=1000,
)


def best_seconds(call: Callable[[], object], repeats: int) -> float:
    """The least CPU time of `repeats` calls after one warm-up: this process's own time, so
    that other processes sharing the CPU do not count in it."""
    call()
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        call()
        best = min(best, time.process_time() - start)
    return best


# The lerp measured: 8 tensors of 4M float32 values (16 MiB each) on each side.
LERP_TENSORS, LERP_VALUES = 8, 1 << 22


def memory_rate(repeats: int = 5) -> float:
    """The host's bytes per second (1e9) through memory in one thread's foreach lerp."""
    shadow = [torch.zeros(LERP_VALUES) for _ in range(LERP_TENSORS)]
    source = [torch.ones(LERP_VALUES) for _ in range(LERP_TENSORS)]
    moved = 3 * LERP_TENSORS * LERP_VALUES * 4
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seconds = best_seconds(lambda: torch._foreach_lerp_(shadow, source, 1e-4), repeats)
    finally:
        torch.set_num_threads(threads)
    return moved / seconds / 1e9


def measure(repeats: int = 60) -> dict[str, float]:
    """{"host_train_s": seconds per aten op of a training step, "host_inference_s": of a
    denoising step, "host_memory_gbs": memory_rate()}, on this CPU with one thread."""
    from bench.predict.runtime import denoising_step_kernels, train_step_kernels

    card = CARDS["rtx3070"]  # any: fp32 on one rank records the same ops on every card
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        step = train_step(SPEC, "cpu")
        train = best_seconds(step, repeats)
        model = build_model(SPEC, compiled=False)
        c = SPEC.unet_config()
        shape = (SPEC.batch, c.in_channels, c.image_size, c.image_size)
        sampler = DDPMSampler(NoiseSchedule.linear())
        with contextlib.closing(sample_progressive(model, sampler, shape)) as steps:
            denoise = best_seconds(lambda: next(steps), repeats)
    finally:
        torch.set_num_threads(threads)
    train_ops = sum(k.host_ops for k in train_step_kernels(SPEC, card))
    denoise_ops = sum(k.host_ops for k in denoising_step_kernels(SPEC, card))
    return {
        "host_train_s": train / train_ops,
        "host_inference_s": denoise / denoise_ops,
        "host_memory_gbs": memory_rate(),
    }
