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

With --card, each row also holds predictions for that card (--predict-only: these alone): the
step's time (bench.predict.runtime) and the sampling pass's memory (bench.predict.denoise), alone
or, with --train-batch, as ddpm.cli.train runs it after its last step next to its training state;
--find-max-batch searches the largest sampling batch that fits the card.

With --checkpoint (a ddpm.cli.train checkpoint of a model trained on digits, e.g. the default
`python -m ddpm.cli.train`), each spec also draws --quality-samples images with its full sampler
from the EMA weights, writes a grid of them, and reports the Frechet distance of their features
from real digits' under a small classifier (bench.measure.quality), next to the floor that as many
real held-out digits score."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.cards import CARDS
from bench.harnesses.sampling import HARNESS
from bench.models import guided_flags, guided_sampling
from bench.models.guided_flags import NAME as GUIDED
from bench.parsers import (
    ARCHITECTURE,
    SpecError,
    parse_attention,
    parse_choices,
    parse_int_list,
    parse_preset,
)
from bench.passes.sampling import default_schedule
from bench.predict.denoise import why_not_inside
from bench.spec import DEFAULT_CONTEXT_MIB, SAMPLERS, common_axes, group_axes, option_axes
from bench.sweep.cli import (
    add_predict_only,
    build_parser,
    check_predict_only,
    run_cli,
    specs_from_args,
)
from ddpm.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_weights,
    schedule_from,
    unet_config_from,
)
from ddpm.config import PRESETS, UNetConfig
from ddpm.errors import first_line
from ddpm.schedule import NoiseSchedule
from ddpm.unet import UNet

# --sampling-steps' default text: with --sampler ddpm alone it is not the user's to refuse.
DDIM_STEPS = next(f.metadata["option"].text for f in option_axes() if f.name == "sampling_steps")


def sampling_axes() -> tuple[str, ...]:
    """The axes this harness takes: every harness's but the ranks' and the training levers' (it
    trains nothing), and its own sampler and steps. --accum and --checkpointing are options so
    that a training command line reads, and are refused off 1 and off."""
    training = group_axes("ranks") + group_axes("levers")
    return (*(a for a in common_axes() if a not in training), "sampler", "sampling_steps")


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
    check_memory_options(args)
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
    samplers = parse_choices("--sampler", args.sampler, SAMPLERS)
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
    if "ddim" not in samplers and args.sampling_steps != DDIM_STEPS:
        raise SpecError(
            f"--sampling-steps {args.sampling_steps} sets the steps of --sampler ddim; ddpm "
            f"takes every one of {source}'s {T} timesteps: leave --sampling-steps out, or add "
            "ddim."
        )
    specs = []
    # The grid varies impl fastest, so implementations stay side by side as elsewhere.
    for spec in specs_from_args(args):
        if spec.impl == GUIDED:  # its --timestep_respacing from the sampler and its steps
            check_guided(spec, args.classes)
        else:
            for steps in ddim_steps:
                if steps > T:
                    raise SpecError(
                        f"--sampling-steps {steps} is more than {source}'s {T} timesteps: "
                        f"DDIM takes 1..{T} steps."
                    )
            if spec.sampler == "ddpm":  # ddpm always takes every timestep of the schedule
                spec = spec.replace(sampling_steps=T)
        if spec not in specs:
            specs.append(spec)
    if args.classes is not None and all(s.impl != GUIDED for s in specs):
        raise SpecError(
            f"--classes applies to a class-conditional --impl {GUIDED} model; this sweep has none."
        )
    other = next((s.impl for s in specs if s.impl != "ddpm"), None)
    if args.checkpoint is not None and other is not None:
        raise SpecError(f"--impl {other} cannot load --checkpoint: it holds ddpm's weights.")
    specs = [s.replace(predict_only=args.predict_only) for s in specs]
    check_predict_only(specs)
    if args.train_batch is not None:
        check_inside_training(specs)
    return specs


def check_memory_options(args: argparse.Namespace) -> None:
    """The options of the memory prediction: --budget, --cuda-context-mib, --train-batch and
    --find-max-batch weigh a --card's predicted memory, so they need one; the search is
    predicted (no card is searched here), so it needs --predict-only."""
    if not args.card:
        for flag, given in (
            ("--budget", args.budget is not None),
            ("--cuda-context-mib", args.cuda_context_mib != DEFAULT_CONTEXT_MIB),
            ("--train-batch", args.train_batch is not None),
            ("--find-max-batch", args.find_max_batch),
        ):
            if given:
                raise SpecError(
                    f"{flag} applies to the predicted memory on a --card: add --card "
                    f"({', '.join(CARDS)})."
                )
    if args.find_max_batch and not args.predict_only:
        raise SpecError(
            "--find-max-batch searches the largest sampling batch a --card holds, predicted: "
            "add --predict-only (nothing is measured in the search)."
        )
    if args.train_batch is not None and args.train_batch < 1:
        raise SpecError(f"--train-batch {args.train_batch} is not allowed: it must be >= 1.")
    if args.train_batch is not None and args.resume:
        # The training batch is an option, not an axis: a spec's id does not tell the pass
        # inside training from the pass alone, so --resume could take one's row for the other's.
        raise SpecError(
            "--resume cannot tell a --train-batch row from the pass alone's row of the same "
            "spec: run the --train-batch command again without --resume."
        )


def check_inside_training(specs: list) -> None:
    """--train-batch models the sampling pass ddpm.cli.train runs: DDIM, with our model."""
    for spec in specs:
        why = why_not_inside(spec.impl)
        if why is not None:
            raise SpecError(
                f"--train-batch is not predicted for --impl {spec.impl}: {why}; "
                "leave --train-batch out for its sampling alone."
            )
        if spec.sampler != "ddim":
            raise SpecError(
                "--train-batch models ddpm.cli.train's sampling pass, which is DDIM "
                "(its --sample-steps): pass --sampler ddim."
            )


def check_guided(spec, classes: str | None) -> None:
    """A guided-diffusion spec samples with its loop over `--timestep_respacing` of its sampler
    and steps (ddim25, or 250 for ancestral sampling), which its space_timesteps must accept,
    and a class-conditional model with --classes: each fault one line."""
    flags = guided_flags.flags_of(spec)
    steps = flags.model["diffusion_steps"]
    respacing = guided_flags.sampling_respacing(spec)
    from guided_diffusion.respace import space_timesteps

    try:
        space_timesteps(steps, respacing)
    except ValueError as exc:
        raise SpecError(
            f"--sampler {spec.sampler} --sampling-steps {spec.sampling_steps} is its "
            f"--timestep_respacing {respacing}, which its {steps} diffusion steps refuse ({exc})."
        ) from None
    model = guided_flags.source_words(spec)
    if flags.class_cond and classes is None:
        raise SpecError(
            f"{model} is class-conditional (--class_cond True): give the classes it samples, "
            "--classes random (uniform, as its image_sample.py draws them) or class indices, "
            "e.g. --classes 207,360."
        )
    if not flags.class_cond and classes is not None:
        raise SpecError(f"--classes {classes}: {model} is not class-conditional.")
    try:
        guided_sampling.parse_classes(classes)
    except ValueError as exc:
        raise SpecError(str(exc)) from None


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
            **dict.fromkeys(("accum", "checkpointing"), training_only),
            "find_max_batch": "with --card and --predict-only: search the largest sampling "
            "batch that fits the card's budget, predicted (--batch is ignored)",
        },
        axes=sampling_axes(),
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
    g.add_argument(
        "--classes",
        default=None,
        help="--impl guided-diffusion's class-conditional models: the classes sampled, "
        "random (uniform over its 1000, seeded) or indices joined by commas, cycled over "
        "the batch (e.g. 207,360)",
    )
    g.add_argument(
        "--train-batch",
        type=int,
        default=None,
        help="with --card: predict the sampling pass ddpm.cli.train runs after its last step "
        "(DDIM from the EMA weights, --batch its --samples), next to the training state it "
        "keeps on the card at this training batch, instead of the sampling alone",
    )
    add_predict_only(
        parser,
        "with --card: the predicted time and memory alone, in seconds, nothing measured "
        "(the measured columns stay empty)",
    )
    return parser


def sampling_options(args: argparse.Namespace) -> dict:
    """The checkpoint (an absolute path: workers may run elsewhere) and the quality sample
    count; a guided-diffusion model's --classes; the training batch of --train-batch."""
    options = {} if args.train_batch is None else {"train_batch": args.train_batch}
    if args.checkpoint is None:
        return options if args.classes is None else {**options, "classes": args.classes}
    return {
        **options,
        "checkpoint": str(Path(args.checkpoint).resolve()),
        "quality_samples": args.quality_samples,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = build_sampling_parser()
    return run_cli(HARNESS, parser, argv, make_specs, options=sampling_options)


if __name__ == "__main__":
    main(sys.argv[1:])
