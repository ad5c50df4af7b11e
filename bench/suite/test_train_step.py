"""One optimizer step (batch x accum images) under pytest-benchmark.

Pedantic mode: each round's setup builds a fresh trainer and takes one warm step, so the timed
call is a steady-state step and pytest-benchmark's own calls never run on mutated state."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.measure import cuda
from bench.measure.flops import training_step_flops
from bench.models.workload import train_step
from bench.passes.peak import peak_flops
from bench.predict.trace import predict
from ddpm.device import synchronize


def test_train_step(benchmark, spec, request):
    device = cuda.resolve(spec.device)
    try:
        cuda.start(device, spec.precision)
    except cuda.CapabilityError as exc:  # e.g. bf16 on a card that would only emulate it
        pytest.skip(str(exc))

    def setup():
        step = train_step(spec, device)
        step()  # optimizer state exists: the timed step is a steady-state one
        synchronize(device)
        return (step,), {}

    def one_step(step):
        step()
        synchronize(device)  # the clock stops when the device is done, not when it was asked

    benchmark.pedantic(
        one_step, setup=setup, rounds=request.config.getoption("--bench-rounds"), iterations=1
    )
    info = benchmark.extra_info
    info["images_per_step"] = spec.effective_batch
    predicted = predict(spec, cuda.capability(device) if device.type == "cuda" else spec.target)
    info["predicted_alloc_mib"] = predicted.mib("alloc")
    info["predicted_reserved_mib"] = predicted.mib("reserved")
    if device.type == "cuda":
        info["peak_alloc_mib"], info["peak_reserved_mib"] = cuda.peaks_mib(device)
    if benchmark.stats is not None:  # None under --benchmark-disable
        median = benchmark.stats.stats.median
        flops = training_step_flops(spec)
        cache = Path(request.config.rootpath) / ".benchmarks" / "peak_flops.json"
        peak = peak_flops(device, spec.precision, cache)["peak_flops"]
        info["images_per_s"] = spec.effective_batch / median
        info["gflop_per_step"] = flops / 1e9
        info["mfu"] = flops / median / peak
        info["peak_tflops"] = peak / 1e12
