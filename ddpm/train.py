"""One optimizer step of DDPM training (Ho et al. 2020, Algorithm 1) under a precision policy,
with exact gradient accumulation, clipping, warm-up, EMA and checkpoints, on one rank or on
data-parallel ranks (a model that ddpm.parallel.wrap spread with DDP or FSDP2).

Data parallelism changes no math: N ranks with micro-batch b take the same steps as one rank with
micro-batch N*b. Every rank gets the whole global batch and draws every image's timestep and noise
from the same seeded generator; micro-batch i of the one-rank run, images [i*N*b, (i+1)*N*b), is
split so that rank r trains its r-th b images."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ddpm import parallel
from ddpm.attention import sdpa_backend
from ddpm.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from ddpm.config import TrainConfig, UNetConfig
from ddpm.ema import EMA, NoEMA
from ddpm.errors import first_line
from ddpm.objective import Objective, l_simple
from ddpm.precision import Phase, apply_matmul_precision, autocast, phase
from ddpm.schedule import NoiseSchedule
from ddpm.state import load_model_state


@dataclass(frozen=True)
class StepStats:
    """What one optimizer step did. loss and grad_norm stay 0-dim device tensors, so a training
    loop reads them (a host sync) only when it logs: float(stats.loss)."""

    loss: torch.Tensor  # mean over the whole effective batch (of all ranks)
    grad_norm: torch.Tensor  # global L2 norm before clipping (inf/nan when fp16 overflowed)
    lr: float
    images: int  # of all ranks
    skipped: bool  # fp16 only: the scaler found inf/NaN gradients and skipped the update
    loss_scale: float | None  # fp16 only


class Trainer:
    def __init__(
        self,
        model: torch.nn.Module,
        schedule: NoiseSchedule,
        config: TrainConfig,
        device: str | torch.device = "cpu",
        optimizer: torch.optim.Optimizer | None = None,
        ema: EMA | None = None,
        objective: Objective | None = None,
    ):
        """`optimizer` and `ema` default to ours (fused AdamW, foreach EMA); another recipe (the
        benchmarks' diffusers baseline) passes its own: anything with .step()/.update(model).
        `objective(model, schedule, x0, t, noise, precision)` is the loss of one micro-batch
        (default L_simple; a library that trains its model its own way passes its loss).
        A `model` spread by ddpm.parallel.wrap trains data-parallel over its process group."""
        self.device = torch.device(device)
        self.config = config
        # Move only when needed: a model already in place (fake tensors, too) stays untouched.
        if next(model.parameters()).device != self.device:
            model.to(self.device)
        self.model = model
        # The UNet inside a DDP wrapper: its parameter names are the one-rank names, so the EMA
        # and checkpoints are alike whatever the number of ranks.
        self.module = parallel.unwrap(model)
        self.group = parallel.group(model)  # None on one rank
        self.rank, self.world = parallel.rank(self.group), parallel.world_size(self.group)
        self.schedule = schedule.to(self.device)
        apply_matmul_precision(config.precision, self.device)
        # A CPU generator: every image's timestep and noise are the same draws on every device
        # and for every split into micro-batches.
        self.generator = torch.Generator().manual_seed(config.seed)
        # Fused: one kernel updates every parameter (CPU and CUDA), 8x faster than the per-tensor
        # loop on a 2-core CPU for the CIFAR model, with the same update (bench/PERF.md).
        self.optimizer = optimizer or torch.optim.AdamW(
            model.parameters(),
            lr=config.lr,
            betas=config.betas,
            weight_decay=config.weight_decay,
            fused=True,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.ema = ema or _ema(self.module, config, self.device)
        self.objective = objective
        self.step_count = 0
        self.skipped_steps = 0

    def autocast(self):
        return autocast(self.config.precision, self.device)

    def lr_at(self, step: int) -> float:
        warmup = self.config.lr_warmup_steps
        return self.config.lr * (min(1.0, (step + 1) / warmup) if warmup else 1.0)

    def draw(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps (uniform over 0..T-1) and noise for every image of the effective batch."""
        t = torch.randint(0, self.schedule.timesteps, (x0.shape[0],), generator=self.generator)
        noise = torch.randn(x0.shape, generator=self.generator, dtype=torch.float32)
        return t, noise

    def share(self, v: torch.Tensor) -> torch.Tensor:
        """This rank's images of the global batch, micro-batch after micro-batch: of micro-batch
        i, images [i*N*b, (i+1)*N*b), rank r takes the r-th b. A view on one rank."""
        b, accum = self.config.batch_size, self.config.accum_steps
        return v.unflatten(0, (accum, self.world, b))[:, self.rank].flatten(0, 1)

    def step(
        self, x0: torch.Tensor, on_micro_batch: Callable[[int, int], None] | None = None
    ) -> StepStats:
        """One optimizer step on the global batch: every rank passes the same world size *
        batch_size * accum_steps images. `on_micro_batch(done, total)` is called after each
        micro-batch's backward (a caller's progress report on a long step). Attention runs on
        config.attention_backend throughout (ddpm.attention), the backward included."""
        with sdpa_backend(self.config.attention_backend):
            return self._step(x0, on_micro_batch)

    def _step(self, x0: torch.Tensor, on_micro_batch) -> StepStats:
        cfg, dev = self.config, self.device
        n, b = self.world * cfg.effective_batch, cfg.batch_size
        if x0.shape[0] != n:
            terms, values = "batch_size*accum_steps", f"{b}*{cfg.accum_steps}"
            if self.world > 1:
                terms, values = f"ranks*{terms}", f"{self.world}*{values}"
            raise ValueError(
                f"trainer.step got {x0.shape[0]} images; one optimizer step takes "
                f"{terms} = {values} = {n}."
            )
        self.model.train()
        with phase(Phase.DATA, dev):
            t, noise = self.draw(x0)
            x0, t, noise = (
                self.share(v).to(dev, non_blocking=True) for v in (x0.float(), t, noise)
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=dev)
        for i in range(cfg.accum_steps):
            part = slice(i * b, (i + 1) * b)
            # Gradients stay on each rank until the last micro-batch (grad_sync "last"): its
            # backward averages their sums across ranks, the same mean with one exchange.
            parallel.set_gradient_sync(
                self.model, cfg.grad_sync == "every" or i == cfg.accum_steps - 1
            )
            # L_simple (eq. 14) in fp32, in the forward and loss ranges. Each micro-batch's mean
            # is weighted by b/n, so the summed gradient equals the full batch's: accumulation
            # changes no math.
            loss = (self.objective or l_simple)(
                self.model, self.schedule, x0[part], t[part], noise[part], cfg.precision
            )
            with phase(Phase.BACKWARD, dev):
                self.scaler.scale(loss / cfg.accum_steps).backward()
            loss_sum += loss.detach()
            if on_micro_batch is not None:
                on_micro_batch(i + 1, cfg.accum_steps)
        with phase(Phase.UNSCALE_CLIP, dev):
            self.scaler.unscale_(self.optimizer)
            max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
            # The global norm: DDP's gradients are already averaged; FSDP2's are sharded
            # DTensors, whose norm is taken over all shards (a replicated DTensor).
            grad_norm = parallel.plain(
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
            )
        lr = self.lr_at(self.step_count)
        for group in self.optimizer.param_groups:
            set_lr(group, lr)
        with phase(Phase.OPTIMIZER, dev):
            scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
            self.scaler.step(self.optimizer)  # skips the update when fp16 gradients overflowed
            self.scaler.update()
            skipped = scale is not None and self.scaler.get_scale() < scale
        if not skipped:
            with phase(Phase.EMA, dev):
                self.ema.update(self.module)
        self.step_count += 1
        self.skipped_steps += int(skipped)
        # One all-reduce of a scalar: each rank's mean is over an equal share of the images.
        loss = parallel.mean_over_ranks(loss_sum / cfg.accum_steps, self.group)
        return StepStats(
            loss=loss,
            grad_norm=grad_norm.detach(),
            lr=lr,
            images=n,
            skipped=skipped,
            loss_scale=scale,
        )

    # ----- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything a resumed run needs. Under data parallelism the whole (unsharded) state in
        the one-rank format, gathered to rank 0 (a collective: every rank calls it; the other
        ranks' model, optimizer and EMA tensors are left out)."""
        rng = {"trainer": self.generator.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.group is None:
            model, optimizer = self.model.state_dict(), self.optimizer.state_dict()
            ema = self.ema.state_dict()
        else:
            model, optimizer = parallel.full_state_dicts(self.model, self.optimizer)
            ema = self.ema.state_dict()
            ema["params"] = parallel.full_tensors(ema["params"], keep=self.rank == 0)
        return {
            "unet_config": dataclasses.asdict(self.module.config),
            "train_config": dataclasses.asdict(self.config),
            "schedule": self.schedule.state_dict(),
            "step": self.step_count,
            "skipped_steps": self.skipped_steps,
            "model": model,
            "ema": ema,
            "optimizer": optimizer,
            "scaler": self.scaler.state_dict(),
            "rng": rng,
        }

    def save(self, path: str | os.PathLike, **extra) -> None:
        """`extra`: what the caller keeps with the state (ddpm.cli.train: the dataset trained on).
        Under data parallelism every rank calls it; rank 0 writes and the others wait for it."""
        state = self.state_dict()
        parallel.on_rank0(lambda: save_checkpoint(path, {**state, **extra}), self.group)

    def load(self, path: str | os.PathLike) -> None:
        """Resume from a checkpoint of the same model and training configuration, saved with
        any number of ranks (every rank reads the file and keeps its share)."""
        data = load_checkpoint(path)
        if _architecture(data["unet_config"]) != _architecture(self.module.config):
            raise CheckpointError(
                f"checkpoint {path} holds another model: "
                f"{_differences(data['unet_config'], self.module.config)}."
            )
        try:
            if self.group is None:
                load_model_state(self.model, data["model"])
                self.ema.load_state_dict(data["ema"])
                self.optimizer.load_state_dict(data["optimizer"])
            else:
                parallel.load_full_state_dicts(
                    self.model, self.optimizer, data["model"], data["optimizer"]
                )
                ema = self.ema.state_dict()
                self.ema.load_state_dict(
                    {
                        **data["ema"],
                        "params": parallel.distributed_like(data["ema"]["params"], ema["params"]),
                    }
                )
            self.scaler.load_state_dict(data["scaler"])
            self.generator.set_state(data["rng"]["trainer"])
            torch.set_rng_state(data["rng"]["torch"])
            if self.device.type == "cuda" and "cuda" in data["rng"]:
                torch.cuda.set_rng_state(data["rng"]["cuda"], self.device)
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"checkpoint {path} does not fit this trainer: {first_line(exc)}"
            ) from None
        self.step_count = int(data["step"])
        self.skipped_steps = int(data.get("skipped_steps", 0))


def _ema(module: torch.nn.Module, config: TrainConfig, device: torch.device) -> EMA | NoEMA:
    """The EMA config.ema asks for: on the model's device, in host memory, or none."""
    if config.ema == "off":
        return NoEMA()
    return EMA(
        module,
        decay=config.ema_decay,
        warmup=config.ema_warmup,
        device="cpu" if config.ema == "cpu" else None,
        dtype=torch.bfloat16 if config.ema_dtype == "bf16" else None,
    )


def set_lr(group: dict, lr: float) -> None:
    """A group's learning rate for this step: the schedule's, times the group's "lr_scale" (an
    optimizer whose own scale differs: Prodigy's lr is 1 where Adam's is 2e-4). A tensor lr
    (torchao's optimizers refuse a float once built) is filled in place."""
    value = lr * group.get("lr_scale", 1.0)
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(value)
    else:
        group["lr"] = value


def _architecture(config: dict | UNetConfig) -> dict:
    """The fields that decide the weights; gradient checkpointing only trades memory for time."""
    fields = config if isinstance(config, dict) else dataclasses.asdict(config)
    return {k: v for k, v in fields.items() if k != "gradient_checkpointing"}


def _differences(stored: dict, config: UNetConfig) -> str:
    mine = _architecture(config)
    diffs = [f"{k} {stored.get(k)!r} vs {mine[k]!r}" for k in mine if stored.get(k) != mine[k]]
    return ", ".join(diffs) or "different fields"
