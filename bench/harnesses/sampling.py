"""python -m bench.sampling: how fast does the model sample, per denoising step, per image and per
complete run, with DDPM's ancestral sampler (all T timesteps) and with DDIM at fewer steps?

    python -m bench.sampling                                  # ddpm and ddim 10,50,100, batch 16
    python -m bench.sampling --batch 1,16,64 --precision fp32,bf16 --sampler ddim
    python -m bench.sampling --checkpoint runs/demo/last.pt   # speed and quality side by side

One denoising step is one step of ddpm.cli.sample's loop (sample_progressive), the very code the
samplers run: one UNet call on the whole batch (under autocast for bf16/fp16) and the sampler's
update (ddpm_step, or ddim_step with eta = 0), in inference mode with the model in eval mode. A
complete DDPM run is T = 1000 such steps, which takes long on a CPU, so each spec times
--measure-steps steps of the real timestep sequence after --warmup steps (compilation lands
there), each step bracketed by a device sync, and the full run is reported as a PROJECTION,
step_s x sampling_steps, in columns named so.

With --checkpoint (a ddpm.cli.train checkpoint of a model trained on digits, e.g. the default
`python -m ddpm.cli.train`), each spec also draws --quality-samples images with its full sampler
from the EMA weights, writes a grid of them, and reports the Frechet distance of their features
from real digits' under a small classifier (bench.measure.quality), next to the floor that as many
real held-out digits score."""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from bench.cards import CARDS
from bench.core import Harness, RunContext
from bench.harnesses.throughput import add_predict_only, check_predict_only
from bench.measure import cuda
from bench.measure.timing import time_calls
from bench.models.workload import COMPILE_KWARGS, build_model
from bench.predict.runtime import sampling_figures
from bench.spec import (
    ARCHITECTURE,
    SpecError,
    parse_attention,
    parse_choices,
    parse_int_list,
    parse_preset,
)
from bench.sweep.cli import build_parser, run_cli, specs_from_args
from bench.tables.ratios import impl_ratios
from bench.tables.results import format_value
from ddpm.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_weights,
    schedule_from,
    unet_config_from,
)
from ddpm.config import PRESETS, UNetConfig
from ddpm.errors import first_line
from ddpm.precision import apply_matmul_precision
from ddpm.sample import DDIMSampler, DDPMSampler, Sampler, Step, sample_loop, sample_progressive
from ddpm.schedule import NoiseSchedule
from ddpm.unet import UNet

# The axes this harness takes (it trains nothing: no ranks). --accum and --checkpointing are
# options so that a training command line reads, and are refused off 1 and off.
AXES = (
    "preset",
    *ARCHITECTURE,
    "image_size",
    "batch",
    "accum",
    "precision",
    "attention",
    "compile",
    "checkpointing",
    "device",
    "impl",
    "model_config",
    "sampler",
    "sampling_steps",
    "card",
)
# BenchSpec has no field for a checkpoint: the parent validates it and hands it to the spec
# processes (which inherit the environment) through these variables.
QUALITY_CHUNK = 64  # images per sampling call in the quality pass: bounded memory, any N
GRID_IMAGES = 64


def default_schedule() -> NoiseSchedule:
    """Ho et al. 2020's linear schedule, T = 1000: what bench.models.workload trains with."""
    return NoiseSchedule.linear()


# ----- the table ---------------------------------------------------------------------------------


def verdict(row: dict) -> str | None:
    if row["status"] != "ok":
        return f"{row['spec_id']}: {row['status']} ({row['error']})."
    name = "DDPM" if row["sampler"] == "ddpm" else "DDIM"
    if row.get("impl", "ddpm") != "ddpm":
        name = f"{name} ({row['impl']} UNet)"
    v = {k: format_value(row.get(k)) for k in row}
    if row.get("step_s") is None:  # --predict-only
        likely = ""
        if row.get("predicted_full_run_s_low") is not None:
            likely = f", likely {v['predicted_full_run_s_low']}-{v['predicted_full_run_s_high']} s"
        return (
            f"{name} {row['sampling_steps']} steps, batch {row['batch']}, {row['precision']} "
            f"on {CARDS[row['card']].name}: PREDICTED {v['predicted_step_s']} s per denoising "
            f"step, a full run {v['predicted_full_run_s']} s{likely}, "
            f"{v['predicted_img_per_s']} images/s (nothing measured)."
        )
    text = (
        f"{name} {row['sampling_steps']} steps, batch {row['batch']}, {row['precision']}, "
        f"compile {row['compile']}: {v['step_s']} s per denoising step "
        f"({v['step_ms_per_image']} ms per image); a full run is projected at "
        f"{v['projected_full_run_s']} s, {v['projected_s_per_image']} s per image, "
        f"{v['projected_img_per_s']} images/s (from {row['measured_steps']} timed steps)."
    )
    if row.get("frechet_digits") is not None:
        text += (
            f" Frechet distance to real digits over {row['quality_samples']} samples: "
            f"{v['frechet_digits']} (as many real held-out digits: "
            f"{v['frechet_digits_real']})."
        )
    return text


# ----- one spec ----------------------------------------------------------------------------------


def sampler_of(spec, schedule: NoiseSchedule) -> Sampler:
    """The spec's complete sampler: ddpm over all T timesteps, or ddim with eta 0 over
    spec.sampling_steps, as ddpm_sample / ddim_sample run them."""
    if spec.sampler == "ddpm":
        return DDPMSampler(schedule)
    return DDIMSampler(schedule, spec.sampling_steps)


def denoising_steps(
    model: torch.nn.Module, schedule: NoiseSchedule, spec, device: torch.device
) -> Callable[[], Step]:
    """A function whose every call takes the next step of ddpm.cli.sample's loop and returns what
    the loop yields: (i, t, x_prev, x0_hat). Runs follow each other from one generator seeded
    with spec.seed: the call after a run's last step starts the next run from a fresh x_T, so
    any number of steps can be timed."""
    sampler = sampler_of(spec, schedule.to(device))
    c = model.config
    shape = (spec.batch, c.in_channels, c.image_size, c.image_size)
    generator = torch.Generator().manual_seed(spec.seed)
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


def timed_sampling(
    model: torch.nn.Module, schedule: NoiseSchedule, spec, device: torch.device
) -> dict:
    step = denoising_steps(model, schedule, spec, device)
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


# The time prediction for the row's --card (bench.predict.runtime); never a measurement. The
# verdict reads the first three (rows written before the band have no _low/_high).
PREDICTED = ["predicted_step_s", "predicted_full_run_s", "predicted_img_per_s"]
PREDICTED_BAND = ["predicted_full_run_s_low", "predicted_full_run_s_high"]


def measure(spec, context: RunContext | None = None) -> dict:
    key = spec.card
    prediction = sampling_figures(spec, CARDS[key]) if key else {}
    if spec.predict_only:
        return prediction
    return {**measured(spec, context), **prediction}


def measured(spec, context: RunContext | None) -> dict:
    device = cuda.resolve(spec.device)
    cuda.start(device, spec.precision)
    apply_matmul_precision(spec.precision, device)
    options = context.options if context is not None else {}
    checkpoint = options.get("checkpoint")
    if checkpoint is None:
        model = build_model(spec).to(device)
        return timed_sampling(model, default_schedule(), spec, device)

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


# ----- the command line --------------------------------------------------------------------------


def preset_of(config: UNetConfig) -> str | None:
    """The preset this configuration is, up to the axes a spec sets (size, attention)."""
    for name, preset in PRESETS.items():
        try:
            candidate = preset.replace(
                image_size=config.image_size,
                attention_resolutions=config.attention_resolutions,
                gradient_checkpointing=config.gradient_checkpointing,
            )
        except ValueError:
            continue
        if candidate == config:
            return name
    return None


def read_checkpoint(args: argparse.Namespace) -> NoiseSchedule:
    """Check --checkpoint and fill --preset, --image-size and --attention from it (or check
    that the ones given agree). Returns its schedule."""
    path = Path(args.checkpoint)
    if path.is_dir():
        raise SpecError(
            f"--checkpoint {path} is a folder: pass the checkpoint file in it "
            f"(e.g. {path / 'last.pt'})."
        )
    try:
        data = load_checkpoint(path)
        schedule = schedule_from(data)
        config = unet_config_from(data)
        load_weights(UNet(config), data)
    except CheckpointError as exc:
        raise SpecError(f"--checkpoint: {exc}") from None
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise SpecError(
            f"--checkpoint {path} does not hold a usable model ({first_line(exc)})."
        ) from None
    overridden = [name for name in ARCHITECTURE if getattr(args, name) != "preset"]
    if overridden:
        flag = "--" + overridden[0].replace("_", "-")
        raise SpecError(
            f"{flag} does not apply with --checkpoint {path}: its model's architecture is "
            "the checkpoint's own; leave it out."
        )
    preset = preset_of(config)
    if preset is None:
        raise SpecError(
            f"--checkpoint {path} holds a model that is none of the presets "
            f"({', '.join(PRESETS)}) at any size or attention placement."
        )
    if args.preset is not None and args.preset != preset:
        raise SpecError(
            f"--preset {args.preset} does not match --checkpoint {path}, which holds "
            f"a {preset} model: leave --preset out or pass {preset}."
        )
    if args.image_size is not None and args.image_size != config.image_size:
        raise SpecError(
            f"--image-size {args.image_size} does not match --checkpoint {path}, "
            f"which holds a {config.image_size}px model."
        )
    own = "+".join(map(str, config.attention_resolutions)) or "none"
    given = parse_attention(args.attention, preset, config.image_size)
    if args.attention != "preset" and given != [own]:
        raise SpecError(
            f"--attention {args.attention} does not match --checkpoint {path}, "
            f"whose model has attention {own}."
        )
    args.preset, args.image_size, args.attention = preset, config.image_size, own
    return schedule


def make_specs(args: argparse.Namespace) -> list:
    """Validate the sampling options, then one spec per (other axes, sampler, sampling steps):
    ddpm always takes every timestep of the schedule; ddim takes each --sampling-steps."""
    if args.steps < 1:
        raise SpecError(f"--measure-steps {args.steps} is not allowed: it must be >= 1.")
    if args.find_max_batch:
        raise SpecError(
            "--find-max-batch searches a training batch (python -m bench.memory); "
            "sampling takes --batch."
        )
    if parse_int_list("--accum", args.accum) != [1]:
        raise SpecError(
            f"--accum {args.accum} is not allowed: sampling has no gradient "
            "accumulation; leave it at 1."
        )
    if parse_choices("--checkpointing", args.checkpointing, ("off", "on")) != ["off"]:
        raise SpecError(
            f"--checkpointing {args.checkpointing} is not allowed: it saves memory "
            "for backward, and sampling has none; leave it off."
        )
    ddim_steps = parse_int_list("--sampling-steps", args.sampling_steps)
    if args.quality_samples < 2:
        raise SpecError(
            f"--quality-samples {args.quality_samples} is not allowed: a covariance "
            "needs at least 2 images."
        )
    if args.checkpoint is not None:
        schedule = read_checkpoint(args)
        source = f"--checkpoint {args.checkpoint}'s schedule"
    else:
        args.preset = parse_preset(args.preset or "ddpm-cifar10")
        schedule = default_schedule()
        source = "the schedule"
    T = schedule.timesteps
    for steps in ddim_steps:
        if steps > T:
            raise SpecError(
                f"--sampling-steps {steps} is more than {source}'s {T} timesteps: "
                f"DDIM takes 1..{T} steps."
            )
    specs = []
    # The grid varies impl fastest, so implementations stay side by side as elsewhere.
    for spec in specs_from_args(args):
        if spec.sampler == "ddpm":  # ddpm always takes every timestep of the schedule
            spec = spec.replace(sampling_steps=T)
        if spec not in specs:
            specs.append(spec)
    other = next((s.impl for s in specs if s.impl != "ddpm"), None)
    if args.checkpoint is not None and other is not None:
        raise SpecError(f"--impl {other} cannot load --checkpoint: it holds ddpm's weights.")
    specs = [s.replace(predict_only=args.predict_only) for s in specs]
    check_predict_only(specs)
    return specs


def build_sampling_parser() -> argparse.ArgumentParser:
    training_only = "training only; not used by sampling"
    parser = build_parser(
        "python -m bench.sampling",
        __doc__,
        defaults={"batch": "16", "precision": "fp32", "steps": 5, "warmup": 2},
        # The shared options are worded for training; say what they do here.
        helps={
            "preset": f"{', '.join(PRESETS)} (default ddpm-cifar10, or the --checkpoint's own)",
            "steps": "same as --measure-steps",
            "warmup": "denoising steps run before the timed ones, timed apart as warmup_s "
            "(compilation lands there; default %(default)s)",
            **dict.fromkeys(
                ("accum", "checkpointing", "find_max_batch", "budget", "cuda_context_mib"),
                training_only,
            ),
        },
        axes=AXES,
    )
    # Validated against the checkpoint when one is given: None means "the default or its own".
    parser.set_defaults(preset=None)
    g = parser.add_argument_group("sampling")
    g.add_argument(
        "--measure-steps",
        dest="steps",
        type=int,
        default=5,
        help="denoising steps timed per spec after the warm-up; the full run is "
        "projected from them (default %(default)s)",
    )
    g.add_argument(
        "--checkpoint",
        default=None,
        help="a ddpm.cli.train checkpoint of a model trained on digits: sample with its "
        "EMA weights and schedule, and report frechet_digits "
        "(bench.measure.quality)",
    )
    g.add_argument(
        "--quality-samples",
        type=int,
        default=256,
        help="with --checkpoint: images drawn per spec with its complete sampler "
        "for frechet_digits; ddpm costs quality-samples x T UNet evaluations "
        "per spec (default %(default)s)",
    )
    add_predict_only(parser)
    return parser


def sampling_options(args: argparse.Namespace) -> dict:
    """The checkpoint (an absolute path: workers may run elsewhere) and the quality sample count."""
    if args.checkpoint is None:
        return {}
    return {
        "checkpoint": str(Path(args.checkpoint).resolve()),
        "quality_samples": args.quality_samples,
    }


HARNESS = Harness(
    name="sampling",
    figure_columns=[
        "measured_steps",
        "step_s",
        "step_s_min",
        "step_s_max",
        "step_ms_per_image",
        "projected_full_run_s",
        "projected_s_per_image",
        "projected_img_per_s",
        "warmup_s",
        "peak_alloc_mib",
        "peak_reserved_mib",
        "quality_samples",
        "frechet_digits",
        "frechet_digits_real",
        *PREDICTED,
        *PREDICTED_BAND,
    ],
    display_columns=[
        "sampler",
        "sampling_steps",
        "status",
        "measured_steps",
        "step_s",
        "step_ms_per_image",
        "projected_full_run_s",
        "projected_s_per_image",
        "projected_img_per_s",
        "warmup_s",
        "peak_alloc_mib",
        "frechet_digits",
        "frechet_digits_real",
        *PREDICTED,
        *PREDICTED_BAND,
    ],
    notes=[
        "One denoising step = one UNet call on the whole batch + the sampler's update "
        "(ddpm_step, or ddim_step with eta 0), in inference mode. step_s: median seconds of "
        "the measured_steps steps timed (step_s_min/max in the CSV), each after a device "
        "sync; warmup_s: the warm-up steps together, compilation included. "
        "step_ms_per_image = 1000 x step_s / batch.",
        "PROJECTED, not measured: projected_full_run_s = step_s x sampling_steps (one "
        "complete run for the batch; ddpm: all T timesteps; a step costs the same at every "
        "t); projected_s_per_image = projected_full_run_s / batch; projected_img_per_s = "
        "batch / projected_full_run_s, images per second of complete sampling.",
        "bf16/fp16: autocast around the UNet call, the sampler's update in fp32; tf32: TF32 "
        "matmuls on CUDA, plain fp32 elsewhere. peak_alloc_mib / peak_reserved_mib: CUDA "
        "caching allocator peaks over the timed steps, MiB = 2^20 bytes (empty on CPU).",
        "frechet_digits (only with --checkpoint, a model trained on digits): Frechet distance "
        "between features of quality_samples images drawn with the full sampler and of real "
        "digits, under a small MLP trained on scikit-learn's digits (bench.measure.quality; "
        "lower is better; not comparable with published FIDs); frechet_digits_real: what as "
        "many real held-out digits score (a finite sample's floor). The quality pass runs "
        "eager and after the timed one; it writes a grid per spec under "
        "<out>/sampling/<run_id>/.",
        "PREDICTED, not measured (with --card; --predict-only: these alone): "
        "predicted_step_s for one denoising step on that card, the step-time model over the "
        "step's traced kernels (bench.predict.runtime, docs/throughput.md); "
        "predicted_full_run_s = predicted_step_s x sampling_steps, likely between "
        "predicted_full_run_s_low and _high (the public training runs' leave-one-out "
        "error range); predicted_img_per_s = batch / predicted_full_run_s, finished images "
        "per second of complete runs.",
    ],
    verdict=verdict,
    verdict_columns=[
        "step_s",
        "step_ms_per_image",
        "projected_full_run_s",
        "projected_s_per_image",
        "projected_img_per_s",
        "measured_steps",
    ],
    predicted_verdict_columns=PREDICTED,
    compare=lambda rows, context: impl_ratios(rows, "projected_img_per_s", "img/s"),
    measure=measure,
    options=sampling_options,
)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = build_sampling_parser()
    return run_cli(HARNESS, parser, argv, make_specs)


if __name__ == "__main__":
    main(sys.argv[1:])
