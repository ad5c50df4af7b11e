"""One DDIM denoising step (a UNet call on the batch plus the update) under pytest-benchmark:
one step of ddpm.cli.sample's loop, as bench.sampling times it.

Pedantic mode: each round's setup starts a fresh run, so every timed call is the same first
step of a run and pytest-benchmark's extra calls never advance a shared state."""

from __future__ import annotations

import pytest

from bench.measure import cuda
from bench.models.workload import build_model
from bench.passes.sampling import default_schedule, denoising_steps
from ddpm.device import synchronize


def test_ddim_step(benchmark, sampling_spec, request):
    spec = sampling_spec.replace(sampler="ddim", sampling_steps=50)
    device = cuda.resolve(spec.device)
    try:
        cuda.start(device, spec.precision)
    except cuda.CapabilityError as exc:  # e.g. bf16 on a card that would only emulate it
        pytest.skip(str(exc))
    model = build_model(spec).to(device).eval()
    schedule = default_schedule()

    def setup():
        return (denoising_steps(model, schedule, spec, device),), {}

    def one_step(step):
        step()
        synchronize(device)

    benchmark.pedantic(
        one_step,
        setup=setup,
        rounds=request.config.getoption("--bench-rounds"),
        iterations=1,
        warmup_rounds=1,
    )
    benchmark.extra_info["images_per_step"] = spec.batch
    if benchmark.stats is not None:  # None under --benchmark-disable
        median = benchmark.stats.stats.median
        benchmark.extra_info["images_per_s_full_run"] = spec.batch / (median * 50)
