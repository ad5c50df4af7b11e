"""The loss pass: a spec trained for --steps optimizer steps on real data, from the same seeded
weights and data order as every other spec; its loss curve written to CSV and TensorBoard, and
the held-out loss computed in fp32 on fixed draws, so specs compare."""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.core import RunContext, rank_folder
from bench.measure import cuda
from bench.models.workload import build_trainer
from bench.spec import BenchSpec
from ddpm.data import load_dataset
from ddpm.objective import Objective, held_out_draws, held_out_loss
from ddpm.schedule import NoiseSchedule

# Validation images are pushed through the model this many at a time, whatever the spec's batch:
# the same chunks for every spec, so the same weights give the same number bit for bit.
VAL_CHUNK = 32
# The validation draws come from their own generator, seeded apart from the trainer's (which is
# seeded with the spec's seed), so the validation noise is not a copy of a training draw.
VAL_SEED_OFFSET = 1_000_003


# Options that are not BenchSpec fields reach each spec's process in RunContext.options. Each
# row records them (data_root, lr, last_k, val_images, val_every, threads columns), and --resume
# refuses a CSV whose finished rows were trained with another lr, val_every, threads or root.
@dataclass(frozen=True)
class LossOptions:
    """What this harness needs beyond the spec; it reaches each spec in RunContext.options."""

    data_root: str = "data"
    lr: float = 1e-3  # AdamW; ddpm's 2e-4 is for 35M parameters and 800k steps, tiny learns faster
    last_k: int = 20
    val_images: int = 256
    val_every: int = 50
    threads: int = 1
    lr_warmup: int = 0  # learning-rate warm-up steps, linear from 0

    @classmethod
    def from_context(cls, context: RunContext) -> LossOptions:
        return cls(**context.options) if context.options else cls()


def validation_draws(
    images: torch.Tensor, timesteps: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps and noise for the held-out images (ddpm.objective.held_out_draws), the same for
    every spec with this seed."""
    return held_out_draws(images, timesteps, seed + VAL_SEED_OFFSET)


def validation_loss(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    images: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    device: torch.device,
    objective: Objective | None = None,
) -> float:
    """The training objective (L_simple, or the implementation's own: the Trainer's) on fixed
    (images, t, noise) (ddpm.objective.held_out_loss), in fp32 whatever the training precision,
    in chunks of VAL_CHUNK: the same weights give the same number."""
    chunks = zip(images.split(VAL_CHUNK), t.split(VAL_CHUNK), noise.split(VAL_CHUNK))
    return held_out_loss(
        model,
        schedule.to(device),
        ((x0.to(device), tt.to(device), eps.to(device)) for x0, tt, eps in chunks),
        precision="fp32",
        objective=objective,
    )


def is_diverged(loss: float) -> bool:
    """NaN or inf: the run has left the numbers; nothing after it means anything."""
    return not math.isfinite(loss)


def final_loss(losses: list[float], last_k: int) -> float:
    tail = losses[-last_k:]
    return sum(tail) / len(tail) if tail else math.nan


def curve_dir(spec: BenchSpec, context: RunContext) -> Path:
    return rank_folder(Path(context.out) / "loss" / context.run_id / spec.name)


class CurveLog:
    """A spec's loss curve as it trains, in its curve folder: curve.csv, a row per optimizer step
    (the held-out loss where one was taken), and the same scalars for TensorBoard."""

    HEADER = ["step", "loss", "grad_norm", "lr", "skipped", "val_loss"]

    def __init__(self, folder: Path):
        from torch.utils.tensorboard import SummaryWriter  # slow to import: only where used

        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "curve.csv"
        self.board = SummaryWriter(log_dir=str(folder))
        self.file = self.rows = None

    def begin(self, val_start: float) -> None:
        """The held-out loss before the first step, and the CSV's header."""
        self.validation(0, val_start)
        self.file = self.path.open("w", newline="")
        self.rows = csv.writer(self.file)
        self.rows.writerow(self.HEADER)

    def validation(self, step: int, loss: float) -> None:
        self.board.add_scalar("val/loss", loss, step)

    def step(self, step: int, loss: float, grad_norm: float, stats, val: float | None) -> None:
        """One optimizer step's row: its loss, gradient norm, learning rate and whether fp16's
        scaler skipped it, and the held-out loss `val` if one was taken after it."""
        held_out = "" if val is None else repr(val)
        skipped = int(stats.skipped)
        self.rows.writerow([step, repr(loss), repr(grad_norm), repr(stats.lr), skipped, held_out])
        for tag, value in (
            ("train/loss", loss),
            ("train/grad_norm", grad_norm),
            ("train/lr", stats.lr),
            ("train/skipped", skipped),
        ):
            self.board.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.board.close()


def train(spec: BenchSpec, context: RunContext, options: LossOptions | None = None) -> dict:
    """The spec trained for its measure_steps optimizer steps from its seeded weights, on its
    dataset in its seeded order; the curve (CurveLog) in curve_dir, the held-out loss at the
    start, every val_every steps and at the end. Training stops at a divergence."""
    opts = options or LossOptions.from_context(context)
    torch.set_num_threads(opts.threads)
    device = cuda.resolve(spec.device)
    cuda.start(device, spec.precision)
    unet = spec.unet_config()
    data = load_dataset(
        spec.dataset, unet.image_size, unet.in_channels, root=opts.data_root, seed=spec.seed
    )
    schedule = NoiseSchedule.linear()
    # The spec's own TrainConfig (grad_sync included), with this harness's learning rate.
    trainer = build_trainer(
        spec, device, schedule=schedule, lr=opts.lr, lr_warmup_steps=opts.lr_warmup
    )
    val_images = data.validation()[: opts.val_images]
    # Over the trainer's own schedule (guided-diffusion's is its diffusion's, T of its flags).
    val_t, val_noise = validation_draws(val_images, trainer.schedule.timesteps, spec.seed)

    def validate() -> float:
        return validation_loss(
            trainer.model, trainer.schedule, val_images, val_t, val_noise, device, trainer.objective
        )

    losses: list[float] = []
    diverged_step = None
    train_s = 0.0
    log = CurveLog(curve_dir(spec, context))
    try:
        val_start = val_end = validate()
        log.begin(val_start)
        batches = data.batches(spec.effective_batch, seed=spec.seed)
        for step in range(1, spec.measure_steps + 1):
            x0 = next(batches)
            start = time.perf_counter()
            stats = trainer.step(x0)
            loss, grad_norm = float(stats.loss), float(stats.grad_norm)  # syncs the device
            train_s += time.perf_counter() - start
            losses.append(loss)
            diverged = is_diverged(loss)
            val = None
            if (
                step == spec.measure_steps
                or diverged
                or (opts.val_every and step % opts.val_every == 0)
            ):
                val = val_end = validate()
                log.validation(step, val)
                diverged = diverged or is_diverged(val)
            log.step(step, loss, grad_norm, stats, val)
            if diverged:
                diverged_step = step
                break
    finally:
        log.close()
    k = min(opts.last_k, len(losses))
    return {
        "data_root": opts.data_root,
        "lr": opts.lr,
        "last_k": k,
        "val_images": val_images.shape[0],
        "val_every": opts.val_every,
        "threads": opts.threads,
        "lr_warmup": opts.lr_warmup,
        "steps_done": len(losses),
        "final_loss": final_loss(losses, k),
        "val_loss": val_end,
        "val_loss_start": val_start,
        "skipped_steps": trainer.skipped_steps,
        "diverged": diverged_step is not None,
        "diverged_step": diverged_step,
        "train_s": train_s,
        "img_per_s": spec.effective_batch * len(losses) / train_s if train_s else None,
        "curve_path": str(log.path),
    }
