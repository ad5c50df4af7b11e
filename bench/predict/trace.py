"""Memory of one steady-state optimizer step: tracked on the real device, or predicted for a CUDA
card on any machine.

The prediction runs the same step on fake tensors (no memory, no compute) under CUDA's rules
(bench.predict.cuda_rules), then replays its ordered allocations and frees through a model of
the CUDA caching allocator (bench.predict.allocator): what the card's allocator would report as
allocated and reserved, the cuBLAS workspace among them.

A spec spread over ranks (parallel ddp or fsdp) is traced as its rank 0, in a fake process group
of spec.ranks (bench.predict.ranks): the figures are per card, from one process and no card."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import multiprocessing
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from bench import lifeline
from bench.cards import DEFAULT_TARGET
from bench.measure.tracked import MemoryPeak, TensorTracker
from bench.models.fake import fake_mode
from bench.models.workload import build_trainer, synthetic_images, traced_precision
from bench.predict.cuda_rules import CudaRules
from bench.predict.ranks import KeptStorages, answer_all_reduce, fake_tensor_ddp, rank_zero
from bench.predict.stream import AllocationStream, Prediction
from bench.spec import BenchSpec
from ddpm import parallel
from ddpm.schedule import NoiseSchedule

CUDA_BLOCK_BYTES = 512  # the caching allocator rounds every allocation up to a multiple of this
# Test-only: set, the prediction child of a rank sleeps instead of predicting, so that a test can
# stop a sweep (or let it time out) while rank 0 waits for its prediction.
HANG_ENV = "DDPM_BENCH_HANG_PREDICTION"
# The origins of the fake trace's stand-ins of a step's inputs on the device (held_inputs):
# INPUTS are sized for every image of the optimizer step (batch x accumulation), MICRO_INPUTS for
# one micro-batch.
INPUTS = "inputs"
MICRO_INPUTS = "micro-batch inputs"


@dataclass(frozen=True)
class StepMemory:
    """Live tensors of one steady-state optimizer step, by category."""

    peak: MemoryPeak  # at the step's highest moment
    kept: MemoryPeak  # after it: what a rank keeps from step to step (weights, gradients,
    # optimizer state, EMA and, under DDP, its gradient buckets)


def traced_accum(spec: BenchSpec) -> int:
    """Micro-batches to trace. From the second micro-batch on, each one starts from the same
    state (weights, gradients, optimizer state, EMA, inputs) and runs the same ops, so its peak
    repeats; tracing two and holding the untraced inputs gives the full step's peak exactly
    (tests/bench/harnesses/test_memory.py checks this against a full trace)."""
    return min(spec.accum, 2)


def _inputs(spec: BenchSpec, images: int, device: str) -> list[torch.Tensor]:
    """Stand-ins of a step's inputs on the device: x0 and its noise in float32, one int64
    timestep per image."""
    c = spec.unet_config()
    shape = (images, c.in_channels, c.image_size, c.image_size)
    return [
        torch.empty(shape, device=device),
        torch.empty(shape, device=device),
        torch.empty(images, dtype=torch.int64, device=device),
    ]


def held_inputs(
    trainer, spec: BenchSpec, images: int, device: str, tracker: TensorTracker
) -> list[torch.Tensor]:
    """Stand-ins of the device copies of a step's inputs for `images` images: our Trainer copies
    its whole share first (origin INPUTS); a trainer that copies one micro-batch at a time as it
    comes (guided-diffusion's loop) says what it holds at once (`inputs_held`, origin
    MICRO_INPUTS), and holds nothing of micro-batches it has not reached."""
    held = getattr(trainer, "inputs_held", None)
    if held is None:
        with tracker.labelled(INPUTS):
            return _inputs(spec, images, device)
    if images != spec.batch * spec.accum:
        return []
    with tracker.labelled(MICRO_INPUTS):
        return held(device)


def _trace(
    spec: BenchSpec, fake: bool, full_trace: bool = False, target: tuple[int, int] = DEFAULT_TARGET
) -> tuple[TensorTracker, MemoryPeak]:
    """A warm-up step (it creates the optimizer state), then a measured step, under a tracker
    whose peak is reset between the two, so its peak is the steady state's. With more than one
    rank, rank 0's step (bench.predict.ranks).

    fake=True is the CUDA prediction: fake tensors, storages rounded to 512 B, CUDA's rules,
    and our recipes' fp16 traced as bf16 (bench.models.workload.traced_precision: the same
    2-byte autocast lists; GradScaler's step needs real values, and its own memory is a few
    scalars)."""
    accum = spec.accum if full_trace else traced_accum(spec)
    precision = traced_precision(spec) if fake else spec.precision
    schedule = NoiseSchedule.linear()  # built outside fake mode: its validation reads values
    device = "cpu" if fake else spec.device
    with rank_zero(spec, fake_tensors=fake) as mesh, contextlib.ExitStack() as stack:
        if fake:
            stack.enter_context(fake_mode())
            stack.enter_context(CudaRules(target))
            if spec.parallel == "ddp":
                stack.enter_context(fake_tensor_ddp())
        born = KeptStorages()
        with born:
            trainer = build_trainer(
                spec.replace(accum=accum, precision=precision),
                device=device,
                compiled=False,
                schedule=schedule,
                mesh=mesh,
            )
        answer_all_reduce(trainer.model)
        # trainer.step takes the global batch, every rank's images (the same on every rank).
        images = trainer.world * spec.batch * accum
        host = synthetic_images(spec, images)
        round_to = CUDA_BLOCK_BYTES if fake else None
        # --ema cpu: the shadow is host memory, never the card's (on a CPU device too, so that
        # the tracked figures stand for the card's).
        on_card = spec.ema != "cpu"
        with TensorTracker(
            trainer.model, trainer.optimizer, trainer.ema.params if on_card else (), round_to
        ) as tracker:
            if not on_card:
                tracker.ignore(trainer.ema.params + trainer.ema.buffers)
            if fake:
                on_the_host(trainer, tracker, host)
            trainer.step(host)  # creates optimizer state
            ddp = parallel.kind(trainer.model) == "ddp"
            if ddp and not fake:
                # DDP rebuilds its buckets before its second forward, in the order gradients
                # arrived (not over fake tensors: bench.predict.ranks), so a real DDP step is
                # steady from the third on.
                with born:
                    trainer.step(host)
            if ddp:
                # DDP's buckets: every gradient flat, for the exchange (after it, param.grad
                # is a view into them: gradient_as_bucket_view).
                tracker.hold(born.kept(), "gradients")
            tracker.reset_peak()
            if fake:
                inputs = held_inputs(trainer, spec, spec.batch * spec.accum, device, tracker)
            else:
                # Inputs of the untraced micro-batches: held for the whole step, never touched.
                inputs = held_inputs(
                    trainer, spec, spec.batch * (spec.accum - accum), device, tracker
                )
                host = synthetic_images(spec, images)  # the trainer copies its share over
            trainer.step(host)
            del inputs, host
            kept = tracker.live
    return tracker, kept


def accumulated(stream: AllocationStream, accum: int) -> AllocationStream:
    """The fake trace's step at accumulation `accum` >= 2 from its trace at accumulation 2, the
    same batch. The trace runs min(accum, 2) micro-batches (traced_accum) and holds the device
    inputs of the whole step (held_inputs): past accumulation 2 the ops, their order and their sizes
    are the same, only the INPUTS stand-ins hold batch x accum images instead of batch x 2. So
    each of their sizes is scaled by accum / 2, and the peak by category grows by the difference
    of their 512 B blocks in its activations (the stand-ins are live from the peak's reset to
    the step's end, so the peak is the same moment). MICRO_INPUTS hold one micro-batch at any
    accumulation and stay as they are."""
    if accum < 2:
        raise ValueError(f"accumulation {accum}: a trace at accumulation 2 answers 2 on")
    events = []
    grown = 0
    for event in stream.events:
        if event[0] == "alloc" and event[3] == INPUTS:
            traced = event[2]
            if traced % 2:
                raise ValueError(f"{INPUTS} of {traced} bytes: not two micro-batches' worth")
            nbytes = traced // 2 * accum
            grown += _blocks(nbytes) - _blocks(traced)
            event = (*event[:2], nbytes, event[3])
        events.append(event)
    peak = stream.peak
    if peak is not None:
        by_category = dict(peak.by_category)
        by_category["activations"] += grown
        peak = MemoryPeak(peak.total + grown, by_category)
    return AllocationStream(stream.batch, tuple(events), peak)


def _blocks(nbytes: int) -> int:
    """Bytes in whole CUDA blocks, as the fake trace's tracker counts a storage."""
    return -(-nbytes // CUDA_BLOCK_BYTES) * CUDA_BLOCK_BYTES


def on_the_host(trainer, tracker: TensorTracker, images: torch.Tensor) -> None:
    """On a card, a step's images, their draws (timesteps, noise) and this rank's share of them
    are host tensors, and only the share's copies take device memory. In the fake trace all are
    on the CPU: what the images and the trainer's host-side methods make goes uncounted, and
    stand-ins of the copies are held instead (_inputs)."""
    tracker.ignore([images])
    for name in ("draw", "share"):
        setattr(trainer, name, functools.partial(_untracked, tracker, getattr(trainer, name)))


def _untracked(tracker: TensorTracker, method, *args):
    with tracker.untracked():
        return method(*args)


def step_memory(
    spec: BenchSpec, fake: bool, full_trace: bool = False, target: tuple[int, int] = DEFAULT_TARGET
) -> StepMemory:
    """A steady-state optimizer step's live-tensor bytes by category, at its peak and after it
    (fake: under CUDA's rules for `target`, each storage rounded to 512 B)."""
    tracker, kept = _trace(spec, fake, full_trace, target)
    return StepMemory(tracker.peak, kept)


def step_peak(
    spec: BenchSpec, fake: bool, full_trace: bool = False, target: tuple[int, int] = DEFAULT_TARGET
) -> MemoryPeak:
    """Peak live-tensor bytes of a steady-state optimizer step, by category (fake: under CUDA's
    rules for `target`, each storage rounded to 512 B)."""
    return step_memory(spec, fake, full_trace, target).peak


def predict(
    spec: BenchSpec, target: tuple[int, int] = DEFAULT_TARGET, alloc_conf: str | None = None
) -> Prediction:
    """The step traced at spec.batch and replayed through the caching allocator as
    PYTORCH_CUDA_ALLOC_CONF (`alloc_conf`, default: this process's) configures it
    (AllocationStream.predict). One trace, no cache: bench.predict.batches answers any batch of
    a spec from two traces, kept on disk."""
    return allocation_stream(spec, target).predict(target, alloc_conf)


def allocation_stream(
    spec: BenchSpec, target: tuple[int, int] = DEFAULT_TARGET
) -> AllocationStream:
    """The allocations and frees of a steady-state step at spec.batch, traced for `target`.

    In a rank of a real process group (under torchrun), a spec across ranks is traced in a
    process of its own: its trace needs a fake group."""
    if spec.parallel != "none" and dist.is_initialized():
        spawn = multiprocessing.get_context("spawn")
        # torchrun starts each rank in a session of its own, so the sweep's stop of the worker's
        # group misses this child: it holds on to the rank that started it (bench.lifeline).
        with concurrent.futures.ProcessPoolExecutor(
            1, mp_context=spawn, initializer=lifeline.hold, initargs=((os.getpid(),),)
        ) as pool:
            return pool.submit(_stream_in_child, spec, target).result()
    tracker, _ = _trace(spec, fake=True, target=target)
    return AllocationStream.of(tracker, spec.batch)


def _stream_in_child(spec: BenchSpec, target: tuple[int, int]) -> AllocationStream:
    if os.environ.get(HANG_ENV):
        time.sleep(3600)
    return allocation_stream(spec, target)
