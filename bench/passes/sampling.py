"""The sampling pass: timed steps of ddpm.cli.sample's loop (one UNet call and the sampler's
update each), and with a checkpoint the quality pass: images drawn with the full sampler, their
Frechet distance to real digits (bench.measure.quality) and a grid of them."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch

from bench.core import RunContext
from bench.measure import cuda
from bench.measure.timing import time_calls
from bench.models import guided_sampling
from bench.models.guided_flags import NAME as GUIDED
from bench.models.workload import COMPILE_KWARGS, build_model, sampler_of
from ddpm.checkpoint import (
    load_checkpoint,
    load_weights,
    schedule_from,
)
from ddpm.precision import Phase, apply_matmul_precision, phase
from ddpm.sample import Step, sample_loop, sample_progressive
from ddpm.schedule import NoiseSchedule

QUALITY_CHUNK = 64  # images per sampling call in the quality pass: bounded memory, any N
GRID_IMAGES = 64


def default_schedule() -> NoiseSchedule:
    """Ho et al. 2020's linear schedule, T = 1000: what bench.models.workload trains with."""
    return NoiseSchedule.linear()


def denoising_steps(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    spec,
    device: torch.device,
    classes: list[int] | str | None = guided_sampling.RANDOM,
) -> Callable[[], Step]:
    """A function whose every call takes the next step of ddpm.cli.sample's loop and returns what
    the loop yields: (i, t, x_prev, x0_hat). Runs follow each other from one generator seeded
    with spec.seed: the call after a run's last step starts the next run from a fresh x_T, so
    any number of steps can be timed. guided-diffusion's model runs its own loop instead, with
    `classes` for a class-conditional one (bench.sampling's --classes; elsewhere random)."""
    c = model.config
    shape = (spec.batch, c.in_channels, c.image_size, c.image_size)
    generator = torch.Generator().manual_seed(spec.seed)
    if spec.impl == GUIDED:  # its own loop, over its respaced diffusion
        return guided_steps(model, spec, generator, device, classes)
    sampler = sampler_of(spec, schedule.to(device))
    run = iter(())

    def step() -> Step:
        nonlocal run
        try:
            return next(run)
        except StopIteration:
            run = sample_progressive(
                model, sampler, shape, generator=generator, device=device, precision=spec.precision
            )
            return next(run)

    return step


def guided_steps(model, spec, generator: torch.Generator, device, classes) -> Callable[[], dict]:
    """As denoising_steps, over guided-diffusion's own loop (bench.models.guided_sampling): each
    call one step, in the denoise_step range, runs following each other."""
    run = iter(())

    def step() -> dict:
        nonlocal run
        with phase(Phase.DENOISE_STEP, device):
            try:
                return next(run)
            except StopIteration:
                run = guided_sampling.progressive(model, spec, generator, device, classes)
                return next(run)

    return step


def timed_sampling(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    spec,
    device: torch.device,
    classes: list[int] | str | None = guided_sampling.RANDOM,
) -> dict:
    step = denoising_steps(model, schedule, spec, device, classes)
    if device.type == "cuda":
        cuda.reset_peaks(device)
    timing = time_calls(step, spec.measure_steps, spec.warmup_steps, device)
    step_s = timing.median_s
    full = step_s * spec.sampling_steps
    figures = {
        "measured_steps": spec.measure_steps,
        "step_s": step_s,
        "step_s_min": min(timing.times_s),
        "step_s_max": max(timing.times_s),
        "step_ms_per_image": step_s / spec.batch * 1000,
        "projected_full_run_s": full,
        "projected_s_per_image": full / spec.batch,
        "projected_img_per_s": spec.batch / full,
        "warmup_s": timing.warmup_s,
    }
    if device.type == "cuda":
        figures["peak_alloc_mib"], figures["peak_reserved_mib"] = cuda.peaks_mib(device)
    return figures


def generate(
    model: torch.nn.Module, schedule: NoiseSchedule, spec, device: torch.device, count: int
) -> torch.Tensor:
    """`count` images from the spec's complete sampler, in chunks, on the CPU as float32."""
    c = model.config
    sampler = sampler_of(spec, schedule)
    generator = torch.Generator().manual_seed(spec.seed)
    images = []
    for start in range(0, count, QUALITY_CHUNK):
        shape = (min(QUALITY_CHUNK, count - start), c.in_channels, c.image_size, c.image_size)
        x = sample_loop(
            model, sampler, shape, generator=generator, device=device, precision=spec.precision
        )
        images.append(x.float().cpu())
    return torch.cat(images)


def measured(spec, context: RunContext | None) -> dict:
    """The timed denoising steps; with a checkpoint in the options, its weights and schedule,
    and then the quality pass (Frechet distance to real digits, a grid of samples)."""
    device = cuda.resolve(spec.device)
    cuda.start(device, spec.precision)
    apply_matmul_precision(spec.precision, device)
    options = context.options if context is not None else {}
    checkpoint = options.get("checkpoint")
    if checkpoint is None:
        model = build_model(spec).to(device)
        classes = guided_sampling.parse_classes(options.get("classes"))
        return timed_sampling(model, default_schedule(), spec, device, classes)

    data = load_checkpoint(checkpoint)
    schedule = schedule_from(data)
    model = build_model(spec, compiled=False)
    load_weights(model, data)
    model.to(device)
    eager = copy.deepcopy(model) if spec.compile != "off" else model
    if spec.compile != "off":
        model.compile(**COMPILE_KWARGS[spec.compile])
    figures = timed_sampling(model, schedule, spec, device)
    del model

    from bench.measure.quality import DigitsJudge

    count = int(options.get("quality_samples", 256))
    images = generate(eager, schedule, spec, device, count)
    judge = DigitsJudge.build(eager.config.image_size, eager.config.in_channels)
    figures.update(
        {
            "quality_samples": count,
            "frechet_digits": judge.score(images),
            "frechet_digits_real": judge.floor(count),
        }
    )
    if context is not None:
        from ddpm.cli.output import grid_columns, save_grid

        folder = Path(context.out) / "sampling" / context.run_id
        folder.mkdir(parents=True, exist_ok=True)
        grid = images[:GRID_IMAGES]
        save_grid(grid, folder / f"{spec.name}.png", nrow=grid_columns(len(grid)))
    return figures
