"""The pytest-benchmark suite's options and parametrization.

pytest bench --benchmark-save               # small CPU defaults: tiny preset, batches 2 and 8
pytest bench --benchmark-save=baseline      # ... saved under a name of yours
pytest bench --bench-preset ddpm-cifar10 --bench-batch 1,2,4 --bench-device cuda
pytest bench --benchmark-disable            # every benchmark once (the CI smoke test)
pytest bench --bench-impl lucidrains --bench-model-config unet.toml   # the model you train
pytest bench --bench-impl guided-diffusion --bench-model-config my.flags --bench-precision fp32,fp16
pytest bench --bench-optimizer adamw,adamw8bit --bench-ema device,cpu --bench-checkpointing on
torchrun --standalone --nproc-per-node 2 -m pytest bench --bench-parallel fsdp  # 2 ranks
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys

import pytest

from bench.models import impl
from bench.parsers import (
    SpecError,
    parse_choices,
    parse_device,
    parse_image_size,
    parse_impls,
    parse_int_list,
    parse_model_config,
    parse_preset,
)
from bench.spec import BenchSpec, expand_grid
from bench.sweep.cli import check_impl, check_levers
from ddpm import parallel
from ddpm.config import PRECISIONS, PRESETS
from ddpm.parallel import PARALLEL

# The memory levers of training and checkpointing (docs/levers.md): axes of the suite as of every
# training harness, each --bench-NAME with the harness option's help, default and parser.
LEVERS = [
    (f, f.metadata["option"])
    for f in dataclasses.fields(BenchSpec)
    if "option" in f.metadata
    and (f.metadata["option"].group == "levers" or f.name == "checkpointing")
]


def pytest_addoption(parser):
    group = parser.getgroup("ddpm-bench", "ddpm-bench benchmark axes (comma lists)")
    group.addoption("--bench-preset", default="tiny", help=f"{', '.join(PRESETS)} (default tiny)")
    group.addoption("--bench-device", default="cpu", help="auto, cpu, cuda, cuda:N (default cpu)")
    group.addoption("--bench-batch", default="2,8", help="micro-batch sizes (default 2,8)")
    group.addoption("--bench-accum", default="1", help="accumulation steps (default 1)")
    group.addoption(
        "--bench-precision",
        default="fp32,bf16",
        help=f"{', '.join(PRECISIONS)} (default fp32,bf16)",
    )
    group.addoption(
        "--bench-parallel",
        default="none",
        help=f"{', '.join(PARALLEL)}: under torchrun, its ranks train one model (default none)",
    )
    group.addoption(
        "--bench-impl",
        default="ddpm",
        help="ddpm, diffusers, lucidrains, guided-diffusion or package.module:callable, as "
        "--impl (default ddpm)",
    )
    group.addoption(
        "--bench-model-config",
        default=None,
        help="a JSON or TOML file of the model's keyword arguments (guided-diffusion: also its "
        "flag text, or a named config), as --model-config",
    )
    for field, option in LEVERS:
        flag = "--bench-" + option.flag(field.name).removeprefix("--")
        group.addoption(flag, default=option.text, help=option.help)
    group.addoption(
        "--bench-rounds",
        type=int,
        default=3,
        help="timed rounds per benchmark, each on freshly built state (default 3)",
    )


# The specs, built and checked once in pytest_configure: before collection, so a bad option is
# one line before any test runs, not a collection error per test file.
SPECS = pytest.StashKey[list]()
# The shared parsers name the harnesses' options; the suite's are these, prefixed.
SHARED_OPTIONS = re.compile(
    r"(?<![\w-])--("
    + "|".join(
        ["impl", "model-config", "preset", "device", "image-size", "batch", "precision"]
        + [option.flag(field.name).removeprefix("--") for field, option in LEVERS]
    )
    + r")\b"
)


def bench_specs(config):
    try:
        rounds = config.getoption("--bench-rounds")
        if rounds < 1:
            raise SpecError(f"--bench-rounds {rounds} is not allowed: it must be >= 1.")
        preset = parse_preset(config.getoption("--bench-preset"))
        size = parse_image_size(None, preset)
        (mode,) = parse_choices("--bench-parallel", config.getoption("--bench-parallel"), PARALLEL)
        if parallel.launched() and mode == "none":
            raise SpecError(
                "under torchrun, give --bench-parallel ddp or fsdp: how the ranks share the model."
            )
        base = BenchSpec(
            preset=preset,
            image_size=size,
            attention="+".join(map(str, PRESETS[preset].attention_resolutions)) or "none",
            device=parse_device(config.getoption("--bench-device")),
            ranks=int(os.environ.get("WORLD_SIZE", 1)),
            parallel=mode,
            model_config=parse_model_config(config.getoption("--bench-model-config")),
        )
        impls = parse_impls(config.getoption("--bench-impl"))
        if base.config_file and len(impls) > 1:
            raise SpecError("--bench-model-config holds one implementation's arguments.")
        grid = expand_grid(
            base,
            impl=impls,
            batch=parse_int_list("--bench-batch", config.getoption("--bench-batch")),
            accum=parse_int_list("--bench-accum", config.getoption("--bench-accum")),
            precision=parse_choices(
                "--bench-precision", config.getoption("--bench-precision"), PRECISIONS
            ),
            **{field.name: lever_values(config, field, option) for field, option in LEVERS},
        )
        # guided-diffusion's image size and attention are its flags' (no option gives them)
        grid = [impl.settle(s, False, False) for s in grid]
        # Each model run on fake tensors as its specs call it (a factory in a process of its
        # own): a bad one is one line.
        check_impl(grid)
        check_levers(grid, predict_only=False)
        return grid
    except SpecError as exc:
        raise pytest.UsageError(SHARED_OPTIONS.sub(r"--bench-\1", str(exc))) from None


def lever_values(config, field, option) -> list:
    flag = option.flag(field.name)
    return option.parse(flag, config.getoption("--bench-" + flag.removeprefix("--")), None)


def test_id(spec) -> str:
    """b2x1-fp32, then the implementation and each lever off its default: b2x1-fp32-ema-cpu."""
    words = [f"b{spec.batch}x{spec.accum}-{spec.precision}"]
    if spec.impl != "ddpm":
        words.append(spec.impl)
    for field, _ in LEVERS:
        value = getattr(spec, field.name)
        if value != field.default:
            words.append(f"{field.name.replace('_', '-')}-{value}")
    return "-".join(words)


def pytest_configure(config):
    """Every option checked, and the specs built, before collection. Under torchrun every rank
    runs the suite and joins the group; rank 0 alone saves."""
    try:
        config.stash[SPECS] = bench_specs(config)
    except KeyboardInterrupt:  # the user's, or raised by a factory's code: no INTERNALERROR
        print("Interrupted while the suite's models were checked: no test ran.", file=sys.stderr)
        sys.stderr.flush()
        os._exit(130)
    if parallel.launched():
        parallel.init(parse_device(config.getoption("--bench-device")))
        if parallel.rank() != 0:
            config.option.benchmark_save = config.option.benchmark_autosave = None


def pytest_unconfigure(config):
    parallel.teardown()


def pytest_generate_tests(metafunc):
    """`spec`: every spec of the grid (a training step). `sampling_spec`: the grid without what
    only training reads (accumulation, the levers), each once (a denoising step)."""
    specs = metafunc.config.stash[SPECS]
    if "sampling_spec" in metafunc.fixturenames:
        specs = list(dict.fromkeys(sampling_spec(s) for s in specs))
        metafunc.parametrize("sampling_spec", specs, ids=[test_id(s) for s in specs])
    elif "spec" in metafunc.fixturenames:
        metafunc.parametrize("spec", specs, ids=[test_id(s) for s in specs])


def sampling_spec(spec: BenchSpec) -> BenchSpec:
    return spec.replace(accum=1, **{field.name: field.default for field, _ in LEVERS})


def pytest_benchmark_update_machine_info(config, machine_info):
    """torch, CUDA, cuDNN, GPU name and memory, driver and CPU beside pytest-benchmark's own."""
    from bench.tables.env import environment

    machine_info["ddpm_bench"] = environment(parse_device(config.getoption("--bench-device")))
