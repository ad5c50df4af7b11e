"""`python -m ddpm.cli.sample`: draw a grid of samples from a training checkpoint.

    python -m ddpm.cli.sample --checkpoint runs/demo/last.pt --sampler ddim --steps 50 -n 64 \\
        --out samples.png
    python -m ddpm.cli.sample --checkpoint runs/demo/last.pt --sampler ddpm --x0-every 100 \\
        --out ddpm.png                # also ddpm_x0.png: the model's x0 estimate as it denoises

The model and noise schedule are rebuilt from the checkpoint alone; the EMA weights are used
unless --no-ema. parse -> validate -> run: every check happens before the first file is written.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ddpm.checkpoint import (
    CheckpointError,
    ema_from,
    load_checkpoint,
    schedule_from,
    unet_config_from,
)
from ddpm.cli.args import (
    ArgumentParser,
    UsageError,
    device_arg,
    fail,
    positive_int,
    seed_int,
    unit_interval,
)
from ddpm.cli.output import (
    check_image_path,
    grid_columns,
    make_progress,
    prepare_output_dir,
    save_grid,
)
from ddpm.cli.pipes import quiet_closed_pipes
from ddpm.cli.signals import exit_on_interrupt
from ddpm.device import synchronize
from ddpm.ema import EMA
from ddpm.errors import first_line, printable
from ddpm.sample import VARIANCES, ddim_sample, ddpm_sample
from ddpm.schedule import NoiseSchedule
from ddpm.state import load_model_state
from ddpm.unet import UNet

SAMPLERS = ("ddpm", "ddim")
# The x0 strip shows this many images per row: enough to see the trend, small enough to read.
STRIP_IMAGES = 8


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m ddpm.cli.sample", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a last.pt from ddpm.cli.train")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim")
    p.add_argument(
        "--steps",
        type=positive_int,
        default=50,
        help="DDIM steps, at most the checkpoint's timesteps (ddpm always uses all T)",
    )
    p.add_argument(
        "--eta",
        type=unit_interval,
        default=0.0,
        help="DDIM noise: 0 deterministic, 1 DDPM-like (DDIM eq. 16)",
    )
    p.add_argument(
        "--variance",
        choices=VARIANCES,
        default="posterior",
        help="ddpm: sigma_t^2 = posterior beta tilde or beta (Ho et al. section 3.2)",
    )
    p.add_argument(
        "--no-clip",
        action="store_true",
        help="do not clamp each x0 estimate to [-1, 1] (clamped by default)",
    )
    p.add_argument("-n", type=positive_int, default=64, help="images to draw")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--device", type=device_arg, default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    p.add_argument(
        "--x0-every",
        type=positive_int,
        metavar="K",
        help="ddpm: also write <out stem>_x0.png, the x0 estimate every K steps",
    )
    p.add_argument("--out", type=Path, default=Path("samples.png"))
    return p


@dataclass
class Job:
    """A validated request: the model on its device, ready to sample; nothing written yet."""

    args: argparse.Namespace
    model: UNet
    ema: EMA | None
    schedule: NoiseSchedule
    x0_path: Path | None
    written: list[Path] = field(default_factory=list)


def validate(args) -> Job:
    if args.x0_every is not None and args.sampler != "ddpm":
        raise UsageError(
            f"--x0-every {args.x0_every} needs --sampler ddpm (got "
            f"{args.sampler}): DDIM has no per-step strip"
        )
    check_image_path(args.out)
    if args.checkpoint.is_dir():
        raise UsageError(
            f"--checkpoint {args.checkpoint} is a folder: pass the checkpoint file "
            f"in it (e.g. {args.checkpoint / 'last.pt'})"
        )
    try:
        data = load_checkpoint(args.checkpoint)
        schedule = schedule_from(data)
        model = UNet(unet_config_from(data))
        load_model_state(model, data["model"])
        ema = None if args.no_ema else ema_from(data, model)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        # A file in the right format whose contents do not build a model (edited, or from
        # another version): name the file and the first line of the reason.
        raise UsageError(
            f"checkpoint {args.checkpoint} does not hold a usable model ({first_line(exc)})"
        ) from None
    T = schedule.timesteps
    if args.sampler == "ddim" and args.steps > T:
        raise UsageError(
            f"--steps {args.steps} is more than the {T} timesteps of "
            f"{args.checkpoint}: DDIM takes 1..{T} steps"
        )
    x0_path = None
    if args.x0_every is not None:
        x0_path = args.out.with_name(f"{args.out.stem}_x0.png")
    for path in (args.out, x0_path):
        if path is not None and path.is_dir():  # found now, not after the sampling
            raise UsageError(
                f"--out {args.out}: {path} is a folder where an image would be "
                "written; choose another --out"
            )
    prepare_output_dir(args.out.parent, "--out folder")  # last: the first thing that writes
    model.to(args.device)
    if ema is not None:
        ema.to(args.device)
    return Job(args, model, ema, schedule, x0_path)


def sample(job: Job) -> None:
    args, model = job.args, job.model
    shape = (args.n, model.config.in_channels, model.config.image_size, model.config.image_size)
    # A CPU generator: the same seed gives the same samples on any device (ddpm.cli.sample).
    common = dict(
        generator=torch.Generator().manual_seed(args.seed),
        device=args.device,
        ema=job.ema,
        clip_x0=not args.no_clip,
    )
    total = job.schedule.timesteps if args.sampler == "ddpm" else args.steps
    trajectory = None
    start = time.perf_counter()
    with make_progress(args.sampler) as progress:
        task = progress.add_task(args.sampler, total=total)
        common["progress"] = lambda done, _: progress.update(task, completed=done)
        if args.sampler == "ddim":
            images = ddim_sample(
                model, job.schedule, shape, steps=args.steps, eta=args.eta, **common
            )
        else:
            result = ddpm_sample(
                model,
                job.schedule,
                shape,
                variance=args.variance,
                return_x0_every=args.x0_every,
                **common,
            )
            images, trajectory = result if args.x0_every is not None else (result, None)
    synchronize(args.device)  # the clock is read after the device finished
    seconds = time.perf_counter() - start

    save_grid(images, args.out, nrow=grid_columns(args.n))
    job.written.append(args.out)
    weights = "raw" if job.ema is None else "EMA"
    line = (
        f"wrote {args.n} {args.sampler} samples ({total} steps, {weights} weights, "
        f"{seconds:.1f} s) to {args.out}"
    )
    if trajectory is not None:
        # One row per x0 estimate, noisiest first, over the first few images: how the model's
        # guess of the final image sharpens as t falls.
        k = min(args.n, STRIP_IMAGES)
        strip = torch.cat([x0[:k].cpu() for _, x0 in trajectory])
        save_grid(strip, job.x0_path, nrow=k)
        job.written.append(job.x0_path)
        line += f"; x0 estimates at t = {', '.join(str(t) for t, _ in trajectory)} to {job.x0_path}"
    print(printable(line))


def main(argv: list[str] | None = None) -> None:
    # A reader that closes the pipe early (| head), --help's included, costs no file
    # and shows no traceback: ddpm.cli.pipes.
    with quiet_closed_pipes():
        _sample_command(argv)


def _sample_command(argv: list[str] | None) -> None:
    args = build_parser().parse_args(argv)
    job = None

    def interrupted(name: str) -> str:
        written = ", ".join(map(str, job.written)) if job and job.written else "nothing"
        return f"interrupted ({name}): wrote {written}"

    with exit_on_interrupt(interrupted):
        try:
            job = validate(args)
        except UsageError as exc:
            fail(str(exc))
        sample(job)


if __name__ == "__main__":
    main()
