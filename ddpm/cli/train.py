"""`python -m ddpm.cli.train`: train a DDPM on a dataset, with a progress bar, TensorBoard scalars,
checkpoints, a held-out loss and a sample grid at the end.

    python -m ddpm.cli.train --preset tiny --dataset digits --steps 300 --batch 32 --accum 2 \\
        --precision bf16 --out runs/demo
    python -m ddpm.cli.train ... --steps 600 --resume      # continue runs/demo/last.pt to step 600

Writes <out>/last.pt (every --checkpoint-every steps and at the end), <out>/tb (TensorBoard),
<out>/samples.png (DDIM samples with the EMA weights). parse -> validate -> run: every check
happens before the first file is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from ddpm.checkpoint import (
    CheckpointError,
    load_checkpoint,
    remove_stale_temporaries,
    schedule_from,
    train_config_from,
)
from ddpm.cli.args import (
    ArgumentParser,
    UsageError,
    decay_value,
    device_arg,
    fail,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    seed_int,
)
from ddpm.cli.output import grid_columns, make_progress, prepare_output_dir, save_grid
from ddpm.cli.pipes import quiet_closed_pipes
from ddpm.cli.signals import exit_on_interrupt
from ddpm.config import PRECISIONS, PRESETS, TrainConfig, UNetConfig
from ddpm.data import DATASETS, DatasetError, ImageDataset, load_dataset
from ddpm.device import synchronize
from ddpm.errors import printable
from ddpm.objective import held_out_draws, held_out_loss
from ddpm.sample import ddim_sample
from ddpm.schedule import NoiseSchedule
from ddpm.train import Trainer
from ddpm.unet import UNet

SCHEDULES = ("linear", "cosine")
CHECKPOINT = "last.pt"
SAMPLES = "samples.png"
# The held-out loss uses at most this many images: enough for a steady estimate, and cheap
# enough to repeat every --val-every steps on a 5,000-image CIFAR-10 split.
VAL_IMAGES = 512
# TrainConfig field -> the option that sets it, to name options in messages.
FLAGS = {
    "batch_size": "--batch",
    "accum_steps": "--accum",
    "precision": "--precision",
    "lr": "--lr",
    "weight_decay": "--weight-decay",
    "lr_warmup_steps": "--lr-warmup-steps",
    "grad_clip": "--grad-clip",
    "ema_decay": "--ema-decay",
    "seed": "--seed",
}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m ddpm.cli.train", description=__doc__.split("\n\n")[0])
    model = p.add_argument_group("model and data")
    model.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    model.add_argument("--dataset", choices=DATASETS, default="digits")
    model.add_argument(
        "--data-root",
        type=Path,
        default=Path("data"),
        help="where mnist/cifar10 live, or the image folder (default: data)",
    )
    model.add_argument("--download", action="store_true", help="download mnist/cifar10 if missing")
    model.add_argument("--image-size", type=positive_int, help="default: the preset's")
    model.add_argument("--schedule", choices=SCHEDULES, default="linear")
    model.add_argument("--timesteps", type=positive_int, default=1000)

    opt = p.add_argument_group("optimization")
    opt.add_argument("--steps", type=positive_int, default=1000, help="optimizer steps in total")
    opt.add_argument("--batch", type=positive_int, default=32, help="micro-batch size")
    opt.add_argument(
        "--accum",
        type=positive_int,
        default=1,
        help="micro-batches per optimizer step (effective batch = batch * accum)",
    )
    opt.add_argument("--precision", choices=PRECISIONS, default="fp32")
    opt.add_argument("--lr", type=positive_float, default=2e-4)
    opt.add_argument("--weight-decay", type=non_negative_float, default=0.0)
    opt.add_argument(
        "--lr-warmup-steps",
        type=non_negative_int,
        default=0,
        help="learning-rate warm-up, linear from 0 (default %(default)s)",
    )
    opt.add_argument("--grad-clip", type=non_negative_float, default=1.0, help="0 turns it off")
    opt.add_argument("--ema-decay", type=decay_value, default=0.9999)
    opt.add_argument("--seed", type=seed_int, default=0)
    opt.add_argument("--device", type=device_arg, default="auto", help="auto, cpu, cuda, cuda:N")

    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, default=Path("runs/demo"))
    out.add_argument("--log-every", type=positive_int, default=10)
    out.add_argument("--val-every", type=positive_int, default=100)
    out.add_argument("--checkpoint-every", type=positive_int, default=100)
    out.add_argument("--samples", type=positive_int, default=64, help="images in the final grid")
    out.add_argument(
        "--sample-steps", type=positive_int, default=50, help="DDIM steps for the final grid"
    )
    out.add_argument("--resume", action="store_true", help=f"continue from <out>/{CHECKPOINT}")
    return p


@dataclass
class Run:
    """Everything validated, built and ready; nothing written yet."""

    args: argparse.Namespace
    trainer: Trainer
    data: ImageDataset
    start_step: int
    dataset: dict  # kept in each checkpoint: --resume refuses another dataset


def validate(args) -> Run:
    """Every check that can fail on bad input, in an order that writes nothing until the end."""
    preset = PRESETS[args.preset]
    try:
        unet_config = preset.replace(image_size=args.image_size or preset.image_size)
    except ValueError as exc:
        raise UsageError(
            f"--image-size {args.image_size} does not fit preset {args.preset}: {exc}"
        ) from None
    try:
        train_config = TrainConfig(
            batch_size=args.batch,
            accum_steps=args.accum,
            precision=args.precision,
            lr=args.lr,
            weight_decay=args.weight_decay,
            lr_warmup_steps=args.lr_warmup_steps,
            grad_clip=args.grad_clip or None,
            ema_decay=args.ema_decay,
            seed=args.seed,
        )
    except ValueError as exc:  # the dataclass names the field, the value and what is allowed
        raise UsageError(str(exc)) from None
    # One optimizer step holds its whole batch (and as much noise) in memory: refuse a batch
    # this machine cannot hold, rather than spend hours building it.
    images = train_config.effective_batch
    batch_bytes = 2 * images * unet_config.in_channels * unet_config.image_size**2 * 4
    memory = psutil.virtual_memory().total
    if batch_bytes > memory:
        raise UsageError(
            f"--batch {args.batch} x --accum {args.accum} = {images:,} images needs "
            f"{batch_bytes / 2**30:,.0f} GiB for the images and their noise alone, "
            f"more than this machine's {memory / 2**30:,.0f} GiB: choose a smaller "
            "--batch"
        )
    if args.sample_steps > args.timesteps:
        raise UsageError(
            f"--sample-steps {args.sample_steps} is more than the schedule's "
            f"{args.timesteps} timesteps: DDIM takes 1..{args.timesteps} steps"
        )
    schedule = getattr(NoiseSchedule, args.schedule)(timesteps=args.timesteps)

    checkpoint = args.out / CHECKPOINT
    start_step, trained_on = 0, None
    if args.resume:
        start_step, trained_on = check_resumable(checkpoint, args.steps, train_config, schedule)
    elif checkpoint.exists():
        # A fresh run would overwrite a trained model and mix two runs in one TensorBoard log.
        raise UsageError(
            f"--out {args.out} already holds {CHECKPOINT}: pass --resume to "
            "continue it, or choose another --out"
        )

    try:
        data = load_dataset(
            args.dataset,
            unet_config.image_size,
            unet_config.in_channels,
            root=args.data_root,
            download=args.download,
            seed=args.seed,
        )
    except DatasetError as exc:
        raise UsageError(str(exc)) from None
    dataset = {"name": args.dataset, "images": len(data) + len(data.validation())}
    # A checkpoint written before datasets were recorded has none to compare.
    if trained_on is not None and trained_on != dataset:
        raise UsageError(
            f"cannot resume: checkpoint {checkpoint} was trained on "
            f"{describe_dataset(trained_on)}, not {describe_dataset(dataset)}: pass "
            "the same --dataset and --data-root"
        )

    torch.manual_seed(args.seed)  # the UNet's initial weights come from the global generator
    trainer = Trainer(UNet(unet_config), schedule, train_config, device=args.device)
    if args.resume:
        try:
            trainer.load(checkpoint)  # also refuses a checkpoint of another model shape
        except CheckpointError as exc:
            raise UsageError(
                f"cannot resume: {exc} (pass the options it was trained with)"
            ) from None

    prepare_output_dir(args.out)  # last: the first thing that touches the disk
    # A save killed outright (kill -9, power loss) leaves its temporary file; this run saves the
    # same checkpoint, so what it finds of that name is stale.
    removed = remove_stale_temporaries(checkpoint)
    if removed:
        print(
            f"removed {len(removed)} temporary file(s) an interrupted save of {checkpoint} "
            f"left: {', '.join(p.name for p in removed)}",
            file=sys.stderr,
        )
    return Run(args, trainer, data, start_step, dataset)


def describe_dataset(dataset) -> str:
    try:
        return f"{dataset['name']} ({dataset['images']:,} images)"
    except (TypeError, KeyError, ValueError):
        return repr(dataset)


def check_resumable(
    path: Path, steps: int, config: TrainConfig, schedule: NoiseSchedule
) -> tuple[int, dict | None]:
    """The step to resume from and the dataset trained on (None in older checkpoints). The
    checkpoint is read here, before anything is built, to refuse a mismatch early; Trainer.load
    reads it again to restore the state (a second read, but it keeps state restoration in one
    place)."""
    try:
        data = load_checkpoint(path)
        stored = train_config_from(data)
        stored_schedule = schedule_from(data)
    except CheckpointError as exc:
        raise UsageError(f"cannot resume: {exc}") from None
    except (TypeError, ValueError, KeyError) as exc:
        raise UsageError(
            f"cannot resume: checkpoint {path} has an unreadable configuration ({exc})"
        ) from None
    # Continuing with other settings would not be a continuation: say which differ.
    mine, theirs = dataclasses.asdict(config), dataclasses.asdict(stored)
    diffs = [f"{FLAGS.get(k, k)} {theirs[k]} (now {mine[k]})" for k in mine if mine[k] != theirs[k]]
    if diffs:
        raise UsageError(
            f"cannot resume: checkpoint {path} was trained with "
            f"{', '.join(diffs)}: pass the same options"
        )
    if not torch.equal(stored_schedule.state_dict()["betas"], schedule.state_dict()["betas"]):
        raise UsageError(
            f"cannot resume: checkpoint {path} has another noise schedule "
            f"(T={stored_schedule.timesteps}): pass the same --schedule and "
            "--timesteps"
        )
    step = data["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise UsageError(
            f"cannot resume: checkpoint {path} has step {step!r}, not a count of optimizer steps"
        )
    if step >= steps:
        raise UsageError(
            f"--steps {steps} is not more than the {step} steps already in {path}: "
            f"pass --steps larger than {step} to continue"
        )
    return step, data.get("dataset")


# -- the run ---------------------------------------------------------------------------------------


class HeldOutLoss:
    """L_simple on held-out images with timesteps and noise fixed once, from a seeded generator:
    the same draws every time, so its changes are the model's, not the sampling's."""

    def __init__(self, trainer: Trainer, images: torch.Tensor, seed: int):
        images = images[:VAL_IMAGES]
        t, noise = held_out_draws(images, trainer.schedule.timesteps, seed)
        b, dev = trainer.config.batch_size, trainer.device
        # Micro-batches of the training size, which is known to fit; moved to the device once.
        self.batches = [
            tuple(v.to(dev) for v in part)
            for part in zip(images.split(b), t.split(b), noise.split(b), strict=True)
        ]
        self.trainer = trainer

    def __call__(self) -> float:
        trainer = self.trainer
        # The training precision: this is the loss the optimizer sees, on unseen images.
        return held_out_loss(
            trainer.model, trainer.schedule, self.batches, trainer.config.precision
        )


def train(run: Run) -> None:
    from rich.progress import TextColumn
    from torch.utils.tensorboard import SummaryWriter  # slow to import: not before validation

    args, trainer = run.args, run.trainer
    checkpoint, samples_path = args.out / CHECKPOINT, args.out / SAMPLES
    held_out = HeldOutLoss(trainer, run.data.validation(), args.seed)
    batches = run.data.batches(trainer.config.effective_batch, seed=args.seed)
    # Replay the batches already trained on: the same seed then gives the same batches as an
    # uninterrupted run, which bit-for-bit continuation needs.
    for _ in range(run.start_step):
        next(batches)
    # purge_step drops events logged after the checkpoint (step start_step, whose own events
    # stay) by a run that died before saving again: TensorBoard shows one history, not two.
    writer = SummaryWriter(
        str(args.out / "tb"), purge_step=run.start_step + 1 if run.start_step else None
    )

    window_loss = torch.zeros((), device=trainer.device)  # summed on the device: no sync per step
    window_steps = window_images = 0
    window_seconds = 0.0
    train_loss = val_loss = math.nan
    start = window_start = time.perf_counter()
    with make_progress("train", TextColumn("{task.fields[stats]}")) as progress:
        task = progress.add_task("train", total=args.steps, completed=run.start_step, stats="")
        for step in range(run.start_step + 1, args.steps + 1):
            stats = trainer.step(next(batches))
            window_loss += stats.loss
            window_steps += 1
            window_images += stats.images
            last = step == args.steps
            log = step % args.log_every == 0 or last
            validate_now = step % args.val_every == 0 or last
            save = step % args.checkpoint_every == 0 or last
            if log or validate_now or save:
                # Stop the window clock after the device finishes the training work: held-out
                # loss and saving wait for the device anyway, and their time is not training
                # time.
                synchronize(trainer.device)
                window_seconds += time.perf_counter() - window_start
            if log:
                # The one loss read per window (a host sync), not one per step.
                train_loss = float(window_loss) / window_steps
                images_per_s = window_images / window_seconds
                writer.add_scalar("train/loss", train_loss, step)  # mean over the window
                writer.add_scalar("train/grad_norm", float(stats.grad_norm), step)
                writer.add_scalar("train/lr", stats.lr, step)
                writer.add_scalar("train/images_per_s", images_per_s, step)
                writer.add_scalar("train/skipped_steps", trainer.skipped_steps, step)
                if stats.loss_scale is not None:
                    writer.add_scalar("train/loss_scale", stats.loss_scale, step)
                progress.update(task, stats=f"loss {train_loss:.4f}  {images_per_s:,.0f} img/s")
                window_loss.zero_()
                window_steps = window_images = 0
                window_seconds = 0.0
            if validate_now:
                val_loss = held_out()
                writer.add_scalar("val/loss", val_loss, step)
            if save:
                trainer.save(checkpoint, dataset=run.dataset)
            if log or validate_now or save:
                window_start = time.perf_counter()
            progress.update(task, advance=1)
    train_time = time.perf_counter() - start
    writer.close()

    with make_progress("sample") as progress:
        task = progress.add_task("sample", total=args.sample_steps)
        images = ddim_sample(
            trainer.model,
            trainer.schedule,
            (args.samples, *image_shape(trainer.model.config)),
            steps=args.sample_steps,
            generator=torch.Generator().manual_seed(args.seed),
            device=trainer.device,
            ema=trainer.ema,
            clip_x0=True,  # images live in [-1, 1]
            progress=lambda done, total: progress.update(task, completed=done),
        )
    save_grid(images, samples_path, nrow=grid_columns(args.samples))
    print(
        printable(
            f"done: {args.steps} steps ({args.steps - run.start_step} in this run, "
            f"{train_time:.1f} s), train loss {train_loss:.4f}, val loss {val_loss:.4f}; "
            f"checkpoint {checkpoint}, samples {samples_path}, TensorBoard {args.out / 'tb'}"
        )
    )


def image_shape(config: UNetConfig) -> tuple[int, int, int]:
    return config.in_channels, config.image_size, config.image_size


def main(argv: list[str] | None = None) -> None:
    # A reader that closes the pipe early (| head), --help's included, costs no file
    # and shows no traceback: ddpm.cli.pipes.
    with quiet_closed_pipes():
        _train_command(argv)


def _train_command(argv: list[str] | None) -> None:
    args = build_parser().parse_args(argv)
    run = None

    def interrupted(name: str) -> str:
        # Not bad input, but no traceback either: say what is on disk and how to go on.
        if run is None:
            return f"interrupted ({name}) before training started"
        checkpoint = args.out / CHECKPOINT
        then = (
            f"continue from {checkpoint} with --resume"
            if checkpoint.exists()
            else "no checkpoint was written yet"
        )
        return f"interrupted ({name}) at step {run.trainer.step_count}: {then}"

    with exit_on_interrupt(interrupted):
        try:
            run = validate(args)
        except UsageError as exc:
            fail(str(exc))
        train(run)


if __name__ == "__main__":
    main()
