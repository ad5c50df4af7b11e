"""One optimizer step of `--impl guided-diffusion`, as openai's TrainLoop.run_step takes it
(guided_diffusion/train_util.py, which scripts/image_train.py runs), on our seeded draws.

Its own code does the work: fp16_util.MixedPrecisionTrainer (zero_grad, backward with the loss
scale, optimize: the fp16 gradients flattened into fp32 master gradients, their norm checked
for overflow, unscaled, AdamW on the fp32 master weights, the master weights copied back into
the fp16 ones, the loss scale grown), GaussianDiffusion.training_losses (with learn_sigma its
hybrid loss, MSE + VLB), nn.update_ema. train_util itself imports mpi4py (through dist_util), so
the loop around those calls is reproduced here, line for line (tests hold it to TrainLoop):
  - forward_backward: per micro-batch of --batch images (its --microbatch; --accum of them make
    its batch), copied to the device as it comes, the loss (losses["loss"] * weights).mean()
    and a backward of it: the micro-batches' mean gradients add up (its code does not divide
    by their number);
  - AdamW(master_params, lr, weight_decay) with torch's defaults, built as its __init__ builds it;
  - the EMA: one fp32 copy of the master weights per --ema_rate, as its __init__ makes them;
  - the learning rate annealed after each step when --lr_anneal_steps is set (_anneal_lr).
What differs, and why: the timesteps are its UniformSampler's distribution (its weights() and
ScheduleSampler.sample's importance weights) drawn from our seeded generator instead of
numpy's global one; the noise, class labels (uniform over its 1000 classes) and nothing else
come from that generator too, so a step is the same on every device; its logger gets one
Logger without outputs for the step (nothing is written), whose grad_norm and lg_loss_scale
the step reports; on fake tensors (the CUDA prediction) the norms' host reads are skipped
(TracedMixedPrecisionTrainer) and AdamW takes the foreach path, torch's default on CUDA."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import importlib
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch._subclasses.fake_tensor import is_fake

from bench.models.guided_unet import GuidedUNet, guided_loss
from bench.models.optimizers import build_optimizer
from ddpm.config import TrainConfig
from ddpm.ema import NoEMA, shadow_of, sources_for
from ddpm.precision import Phase, phase
from ddpm.schedule import NoiseSchedule
from ddpm.train import StepStats, set_lr


def _guided(name: str):
    with warnings.catch_warnings():  # its nn.py decorates with torch.cuda.amp's old spelling
        warnings.simplefilter("ignore", FutureWarning)
        return importlib.import_module(f"guided_diffusion.{name}")


def traced_trainer_class():
    """MixedPrecisionTrainer whose norms, on fake tensors, are taken without reading them."""
    fp16_util = _guided("fp16_util")

    class TracedMixedPrecisionTrainer(fp16_util.MixedPrecisionTrainer):
        """Its MixedPrecisionTrainer. Its _compute_norms reads each norm on the host (.item()),
        which a fake tensor cannot answer: there the same norms are taken (so the trace holds
        their kernels and memory) and the step goes on as without overflow."""

        def _compute_norms(self, grad_scale=1.0):
            if not is_fake(self.master_params[0]):
                return super()._compute_norms(grad_scale)
            with torch.no_grad():
                for p in self.master_params:
                    torch.norm(p, p=2, dtype=torch.float32)
                    if p.grad is not None:
                        torch.norm(p.grad, p=2, dtype=torch.float32)
            return 0.0, 0.0

    return TracedMixedPrecisionTrainer


class GuidedTraining(nn.Module):
    """What the step holds as weights: the model (fp16 torso under use_fp16) and, under
    use_fp16, its flat fp32 master weights, which belong to no module of its own: registered
    here, a tensor tracker counts them as weights and their gradients as gradients."""

    def __init__(self, net: GuidedUNet, master: list[nn.Parameter]):
        super().__init__()
        self.net = net
        self.master = nn.ParameterList(master)


class GuidedEMA:
    """Its EMA: one copy of the master weights per ema_rate, moved by its nn.update_ema. Its
    __init__ deep-copies the master weights (fp32 on their device); a detached copy is the same
    bytes and values, and fake tensors take it without a warning. --ema cpu and --ema-dtype bf16
    place the copies as our Trainer's EMA places its shadow (ddpm.ema.shadow_of): in host
    memory, updated there from host copies of the master weights, or in bf16."""

    buffers: list[torch.Tensor] = []  # its EMA averages the master weights alone

    def __init__(
        self,
        rates: list[float],
        master: list[nn.Parameter],
        device: str | None = None,
        dtype: torch.dtype | None = None,
    ):
        self.rates = rates
        self.copies = [shadow_of(master, device, dtype) for _ in rates]

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for copies in self.copies for p in copies]

    def to(self, device) -> GuidedEMA:
        """Move every copy (the time model puts a host EMA on its host device); returns self, as
        ddpm.ema.EMA.to does."""
        self.copies = [[p.to(device) for p in copies] for copies in self.copies]
        return self

    def update(self, master: list[nn.Parameter]) -> None:
        update_ema = _guided("nn").update_ema
        # Every rate's copies live alike: one host copy of the weights serves them all.
        sources = sources_for(master, self.copies[0]) if self.copies else []
        for rate, params in zip(self.rates, self.copies):
            update_ema(params, sources, rate=rate)


def guided_ema(config: TrainConfig, rates: list[float], master: list[nn.Parameter]):
    """The EMA config.ema and config.ema_dtype ask for: its copies on the card (its own), in host
    memory, in bf16, or none."""
    if config.ema == "off":
        return NoEMA()
    device = "cpu" if config.ema == "cpu" else None
    return GuidedEMA(rates, master, device, torch.bfloat16 if config.ema_dtype == "bf16" else None)


class GuidedTrainer:
    """The Trainer interface the harnesses drive (step, model, optimizer, ema, schedule,
    objective, draw, share, world, skipped_steps) around its run_step. No checkpoints: bench
    measures steps, and its own TrainLoop saves its own."""

    def __init__(
        self,
        model: GuidedUNet,
        config: TrainConfig,
        device,
        lr: float | None = None,
        optimizer: str = "adamw",
    ):
        """`optimizer`: a name of bench.models.optimizers (--optimizer); adamw is its own."""
        self.device = torch.device(device)
        self.config = config
        if next(model.parameters()).device != self.device:
            model.to(self.device)
        self.net = model
        flags = model.flags
        self.logger = _guided("logger").Logger(dir=None, output_formats=[])
        self.lr = flags.training["lr"] if lr is None else lr
        self.lr_anneal_steps = flags.training["lr_anneal_steps"]
        self.use_fp16 = flags.model["use_fp16"]
        with self._its_logger():
            self.mp_trainer = traced_trainer_class()(
                model=model.unet,
                use_fp16=self.use_fp16,
                fp16_scale_growth=flags.training["fp16_scale_growth"],
            )
        master = self.mp_trainer.master_params
        self.model = GuidedTraining(model, master if self.use_fp16 else [])
        # --optimizer swaps the AdamW its __init__ builds, over the same master weights (fp32
        # under use_fp16 too), at its lr and weight decay.
        recipe = dataclasses.replace(
            config, lr=self.lr, weight_decay=flags.training["weight_decay"]
        )
        self.optimizer = build_optimizer(optimizer, master, recipe) or torch.optim.AdamW(
            master,
            lr=self.lr,
            weight_decay=flags.training["weight_decay"],
            foreach=True if is_fake(master[0]) else None,
        )
        self.ema = guided_ema(config, flags.ema_rates, master)
        self.diffusion = model.diffusion
        self.sampler = _guided("resample").UniformSampler(self.diffusion)
        self.objective = guided_loss
        self.generator = torch.Generator().manual_seed(config.seed)
        self.group, self.rank, self.world = None, 0, 1
        self.step_count = 0
        self.skipped_steps = 0

    @functools.cached_property
    def schedule(self) -> NoiseSchedule:
        """Its diffusion's betas as our schedule: what bench.loss's held-out draws span (made
        when asked: a schedule checks its values, which fake tensors do not have)."""
        return NoiseSchedule(torch.from_numpy(self.diffusion.betas))

    @contextlib.contextmanager
    def _its_logger(self):
        """Its logger module's calls go to this trainer's Logger (no outputs) meanwhile."""
        logger = _guided("logger")
        before = logger.Logger.CURRENT
        logger.Logger.CURRENT = self.logger
        try:
            yield self.logger
        finally:
            logger.Logger.CURRENT = before

    def draw(self, x0: torch.Tensor) -> dict:
        """The host-side inputs of a step's images: timesteps with its ScheduleSampler's
        importance weights, noise, class labels and the upsampler's low-resolution images."""
        g = self.generator
        n = x0.shape[0]
        p = torch.from_numpy(self.sampler.weights()).double()
        p = p / p.sum()
        t = torch.multinomial(p, n, replacement=True, generator=g)
        weights = (1 / (len(p) * p[t])).float()
        noise = torch.randn(x0.shape, generator=g, dtype=torch.float32)
        labels = None
        if self.net.flags.class_cond:
            classes = _guided("script_util").NUM_CLASSES
            labels = torch.randint(0, classes, (n,), generator=g)
        return {"t": t, "weights": weights, "noise": noise, **self.net.conditioning(x0, labels)}

    def share(self, v: torch.Tensor) -> torch.Tensor:
        return v  # one rank takes every image

    def inputs_held(self, device) -> list[torch.Tensor]:
        """Stand-ins of what a step holds on the device for its inputs: one micro-batch's
        images, noise, timesteps, weights and conditioning at a time, as its loop copies them."""
        b = self.config.batch_size
        c = self.net.config
        shape = (b, c.in_channels, c.image_size, c.image_size)
        held = [torch.empty(shape, device=device), torch.empty(shape, device=device)]
        held += [torch.empty(b, dtype=torch.int64, device=device), torch.empty(b, device=device)]
        if self.net.flags.class_cond:
            held.append(torch.empty(b, dtype=torch.int64, device=device))
        if self.net.flags.super_res:
            small = self.net.flags.model["small_size"]
            held.append(torch.empty(b, c.in_channels, small, small, device=device))
        return held

    def micro_batch_twin(self) -> GuidedTrainer:
        """This trainer at one micro-batch per step, sharing model, optimizer, loss scale and
        EMA (a warm-up step without a whole accumulated one)."""
        twin = copy.copy(self)
        twin.config = dataclasses.replace(self.config, accum_steps=1)
        twin.generator = torch.Generator().manual_seed(self.config.seed)
        return twin

    def lr_now(self) -> float:
        """Its learning rate for this step: _anneal_lr ran after the previous one; our warm-up
        (bench.loss's --lr-warmup, 0 by default) on top when asked for."""
        lr = self.lr
        if self.lr_anneal_steps and self.step_count:
            lr = self.lr * (1 - (self.step_count - 1) / self.lr_anneal_steps)
        warmup = self.config.lr_warmup_steps
        return lr * (min(1.0, (self.step_count + 1) / warmup) if warmup else 1.0)

    def step(
        self, x0: torch.Tensor, on_micro_batch: Callable[[int, int], None] | None = None
    ) -> StepStats:
        cfg, dev = self.config, self.device
        b, n = cfg.batch_size, cfg.effective_batch
        if x0.shape[0] != n:
            raise ValueError(
                f"trainer.step got {x0.shape[0]} images; one optimizer step takes "
                f"batch_size*accum_steps = {b}*{cfg.accum_steps} = {n}."
            )
        self.model.train()
        with phase(Phase.DATA, dev):
            x0 = self.share(x0.float())
            inputs = {k: self.share(v) for k, v in self.draw(x0).items()}
        lr = self.lr_now()
        for group in self.optimizer.param_groups:
            set_lr(group, lr)
        with self._its_logger() as log:
            loss_sum = self._forward_backward(x0, inputs, on_micro_batch)
            with phase(Phase.OPTIMIZER, dev):
                took_step = self.mp_trainer.optimize(self.optimizer)
            if took_step:
                with phase(Phase.EMA, dev):
                    self.ema.update(self.mp_trainer.master_params)
            values = dict(log.name2val)
            log.dumpkvs()
        self.step_count += 1
        self.skipped_steps += int(not took_step)
        grad_norm = values.get("grad_norm", float("inf"))
        return StepStats(
            loss=loss_sum / cfg.accum_steps,
            grad_norm=torch.tensor(float(grad_norm)),
            lr=lr,
            images=n,
            skipped=not took_step,
            loss_scale=2 ** values["lg_loss_scale"] if self.use_fp16 else None,
        )

    def _forward_backward(self, x0, inputs: dict, on_micro_batch) -> torch.Tensor:
        """Its forward_backward: zero_grad, then per micro-batch its loss and backward."""
        cfg, dev = self.config, self.device
        b = cfg.batch_size
        self.mp_trainer.zero_grad()
        loss_sum = torch.zeros((), device=dev)
        for i in range(cfg.accum_steps):
            part = slice(i * b, (i + 1) * b)
            with phase(Phase.DATA, dev):
                micro = x0[part].to(dev)
                draws = {k: v[part].to(dev) for k, v in inputs.items()}
            t, weights, noise = draws.pop("t"), draws.pop("weights"), draws.pop("noise")
            with phase(Phase.FORWARD, dev):
                losses = self.diffusion.training_losses(
                    self.net.unet, micro, t, model_kwargs=draws, noise=noise
                )
                loss = (losses["loss"] * weights).mean()
            with phase(Phase.BACKWARD, dev):
                self.mp_trainer.backward(loss)
            loss_sum += loss.detach().float()
            if on_micro_batch is not None:
                on_micro_batch(i + 1, cfg.accum_steps)
        return loss_sum
