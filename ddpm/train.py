"""One optimizer step of DDPM training (Ho et al. 2020, Algorithm 1) under a precision policy,
with exact gradient accumulation, clipping, warm-up, EMA and checkpoints."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import torch

# schedule_from, unet_config_from, train_config_from, AUTOCAST_DTYPES, apply_matmul_precision
# and phase are imported here too, for code that imported them from ddpm.train.
from ddpm.checkpoint import (  # noqa: F401
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    schedule_from,
    train_config_from,
    unet_config_from,
)
from ddpm.cli_common import first_line
from ddpm.config import TrainConfig, UNetConfig
from ddpm.ema import EMA
from ddpm.objective import l_simple
from ddpm.precision import (  # noqa: F401
    AUTOCAST_DTYPES,
    Phase,
    apply_matmul_precision,
    autocast,
    phase,
)
from ddpm.schedule import NoiseSchedule


@dataclass(frozen=True)
class StepStats:
    """What one optimizer step did. loss and grad_norm stay 0-dim device tensors, so a training
    loop reads them (a host sync) only when it logs: float(stats.loss)."""

    loss: torch.Tensor  # mean over the whole effective batch
    grad_norm: torch.Tensor  # global L2 norm before clipping (inf/nan when fp16 overflowed)
    lr: float
    images: int
    skipped: bool  # fp16 only: the scaler found inf/NaN gradients and skipped the update
    loss_scale: float | None  # fp16 only


class Trainer:
    def __init__(self, model: torch.nn.Module, schedule: NoiseSchedule, config: TrainConfig,
                 device: str | torch.device = "cpu", optimizer: torch.optim.Optimizer | None = None,
                 ema: EMA | None = None):
        """`optimizer` and `ema` default to ours (fused AdamW, foreach EMA); another recipe (the
        benchmarks' diffusers baseline) passes its own: anything with .step()/.update(model)."""
        self.device = torch.device(device)
        self.config = config
        # Move only when needed: a model already in place (fake tensors, too) stays untouched.
        if next(model.parameters()).device != self.device:
            model.to(self.device)
        self.model = model
        self.schedule = schedule.to(self.device)
        apply_matmul_precision(config.precision, self.device)
        # A CPU generator: every image's timestep and noise are the same draws on every device
        # and for every split into micro-batches.
        self.generator = torch.Generator().manual_seed(config.seed)
        # Fused: one kernel updates every parameter (CPU and CUDA), 8x faster than the per-tensor
        # loop on a 2-core CPU for the CIFAR model, with the same update (bench/PERF.md).
        self.optimizer = optimizer or torch.optim.AdamW(
            model.parameters(), lr=config.lr, betas=config.betas,
            weight_decay=config.weight_decay, fused=True)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.ema = ema or EMA(self.model, decay=config.ema_decay, warmup=config.ema_warmup)
        self.step_count = 0
        self.skipped_steps = 0

    def autocast(self):
        return autocast(self.config.precision, self.device)

    def lr_at(self, step: int) -> float:
        warmup = self.config.warmup_steps
        return self.config.lr * (min(1.0, (step + 1) / warmup) if warmup else 1.0)

    def draw(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps (uniform over 0..T-1) and noise for every image of the effective batch."""
        t = torch.randint(0, self.schedule.timesteps, (x0.shape[0],), generator=self.generator)
        noise = torch.randn(x0.shape, generator=self.generator, dtype=torch.float32)
        return t, noise

    def step(self, x0: torch.Tensor) -> StepStats:
        cfg, dev = self.config, self.device
        n, b = cfg.effective_batch, cfg.batch_size
        if x0.shape[0] != n:
            raise ValueError(f"trainer.step got {x0.shape[0]} images; one optimizer step takes "
                             f"batch_size*accum_steps = {b}*{cfg.accum_steps} = {n}.")
        self.model.train()
        with phase(Phase.DATA, dev):
            t, noise = self.draw(x0)
            x0, t, noise = (v.to(dev, non_blocking=True) for v in (x0.float(), t, noise))
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=dev)
        for i in range(cfg.accum_steps):
            part = slice(i * b, (i + 1) * b)
            # L_simple (eq. 14) in fp32, in the forward and loss ranges. Each micro-batch's mean
            # is weighted by b/n, so the summed gradient equals the full batch's: accumulation
            # changes no math.
            loss = l_simple(self.model, self.schedule, x0[part], t[part], noise[part],
                            cfg.precision)
            with phase(Phase.BACKWARD, dev):
                self.scaler.scale(loss / cfg.accum_steps).backward()
            loss_sum += loss.detach()
        with phase(Phase.UNSCALE_CLIP, dev):
            self.scaler.unscale_(self.optimizer)
            max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        lr = self.lr_at(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with phase(Phase.OPTIMIZER, dev):
            scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
            self.scaler.step(self.optimizer)  # skips the update when fp16 gradients overflowed
            self.scaler.update()
            skipped = scale is not None and self.scaler.get_scale() < scale
        if not skipped:
            with phase(Phase.EMA, dev):
                self.ema.update(self.model)
        self.step_count += 1
        self.skipped_steps += int(skipped)
        return StepStats(loss=loss_sum / cfg.accum_steps, grad_norm=grad_norm.detach(), lr=lr,
                         images=n, skipped=skipped, loss_scale=scale)

    # ----- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict:
        rng = {"trainer": self.generator.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "unet_config": dataclasses.asdict(self.model.config),
            "train_config": dataclasses.asdict(self.config),
            "schedule": self.schedule.state_dict(),
            "step": self.step_count,
            "skipped_steps": self.skipped_steps,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
        }

    def save(self, path: str | os.PathLike, **extra) -> None:
        """`extra`: what the caller keeps with the state (ddpm.train: the dataset trained on)."""
        save_checkpoint(path, {**self.state_dict(), **extra})

    def load(self, path: str | os.PathLike) -> None:
        """Resume from a checkpoint of the same model and training configuration."""
        data = load_checkpoint(path)
        if _architecture(data["unet_config"]) != _architecture(self.model.config):
            raise CheckpointError(f"checkpoint {path} holds another model: "
                                  f"{_differences(data['unet_config'], self.model.config)}.")
        try:
            self.model.load_state_dict(data["model"])
            self.ema.load_state_dict(data["ema"])
            self.optimizer.load_state_dict(data["optimizer"])
            self.scaler.load_state_dict(data["scaler"])
            self.generator.set_state(data["rng"]["trainer"])
            torch.set_rng_state(data["rng"]["torch"])
            if self.device.type == "cuda" and "cuda" in data["rng"]:
                torch.cuda.set_rng_state(data["rng"]["cuda"], self.device)
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {path} does not fit this trainer: "
                                  f"{first_line(exc)}") from None
        self.step_count = int(data["step"])
        self.skipped_steps = int(data.get("skipped_steps", 0))


def _architecture(config: dict | UNetConfig) -> dict:
    """The fields that decide the weights; gradient checkpointing only trades memory for time."""
    fields = config if isinstance(config, dict) else dataclasses.asdict(config)
    return {k: v for k, v in fields.items() if k != "gradient_checkpointing"}


def _differences(stored: dict, config: UNetConfig) -> str:
    mine = _architecture(config)
    diffs = [f"{k} {stored.get(k)!r} vs {mine[k]!r}" for k in mine if stored.get(k) != mine[k]]
    return ", ".join(diffs) or "different fields"


if __name__ == "__main__":
    from ddpm.train_cli import main

    main()
