"""What a spec trains and samples with: the UNet, its Trainer, its sampler and a seeded batch.
Every harness builds through here, so the same spec means the same model, weights and data in
every table."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.models.fake import fake_mode
from bench.models.guided_flags import NAME as GUIDED
from bench.models.impl import build_unet, recipe
from bench.models.optimizers import build_optimizer
from bench.spec import BenchSpec
from ddpm.parallel import wrap
from ddpm.sample import DDIMSampler, DDPMSampler, Sampler
from ddpm.schedule import NoiseSchedule
from ddpm.train import StepStats, Trainer

COMPILE_KWARGS = {
    "default": {},
    "reduce-overhead": {"mode": "reduce-overhead"},
    "max-autotune": {"mode": "max-autotune"},
}


# The parameter count of the model build_model made last in this process: a spec's process
# reports the model it measured (bench.sweep.worker, the params column), never one rebuilt to
# be counted.
_BUILT: dict[str, int] = {}


def build_model(spec: BenchSpec, compiled: bool = True) -> torch.nn.Module:
    torch.manual_seed(spec.seed)  # the same initial weights for every spec with this seed
    model = build_unet(spec)
    if spec.channels_last == "on":
        _channels_last(model)
    _BUILT["params"] = sum(p.numel() for p in model.parameters())
    if compiled and spec.compile != "off":
        model.compile(**COMPILE_KWARGS[spec.compile])  # in place: the module keeps its type
    return model


def _channels_last(model: torch.nn.Module) -> None:
    """The convolutions' weights in channels-last format, as model.to(memory_format=...) puts
    them (each convolution's output follows its weight's format); in place, which fake tensors
    (the prediction) allow where module.to's parameter swap does not."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 4:
                p.data = p.data.contiguous(memory_format=torch.channels_last)


def sampler_of(spec: BenchSpec, schedule: NoiseSchedule) -> Sampler:
    """The spec's complete sampler: ddpm over all T timesteps, or ddim with eta 0 over
    spec.sampling_steps, as ddpm_sample / ddim_sample run them."""
    if spec.sampler == "ddpm":
        return DDPMSampler(schedule)
    return DDIMSampler(schedule, spec.sampling_steps)


def build_trainer(
    spec: BenchSpec,
    device: str | torch.device | None = None,
    compiled: bool = True,
    schedule: NoiseSchedule | None = None,
    mesh=None,
    **settings,
) -> Trainer:
    """The spec's model and trainer, trained as spec.train_config(**settings) says: a caller
    that wants another accumulation or precision changes the spec (spec.replace), and
    `settings` are the TrainConfig fields no axis sets (bench.loss's lr and warm-up). `mesh`:
    the DeviceMesh FSDP shards over (default: one over the whole process group, on the
    machine's accelerator)."""
    config = spec.train_config(**settings)
    schedule = schedule or NoiseSchedule.linear()
    device = device or spec.device
    model = build_model(spec, compiled)
    if next(model.parameters()).device != torch.device(device):
        model.to(device)  # fake tensors (the memory prediction) are already in place: left as is
    if spec.impl == GUIDED:  # its own TrainLoop's step; its schedule is its diffusion's
        from bench.models.guided_trainer import GuidedTrainer

        return GuidedTrainer(model, config, device, lr=settings.get("lr"), optimizer=spec.optimizer)
    # Across ranks (a process group is up: torchrun's, or a fake one for the prediction).
    model = wrap(model, spec.parallel, torch.device(device), mesh)
    # Each implementation trains its own way: diffusers' example's optimizer and EMA,
    # GaussianDiffusion's loss (bench.models.impl.recipe); --optimizer replaces the optimizer.
    kwargs = recipe(spec, model, config)
    optimizer = build_optimizer(spec.optimizer, model.parameters(), config)
    if optimizer is not None:
        kwargs["optimizer"] = optimizer
    if spec.ema != "device" or spec.ema_dtype != "fp32":
        kwargs.pop("ema", None)  # the recipe's EMA is on the device in fp32: ours, as asked
    return Trainer(model, schedule, config, device=device, **kwargs)


@dataclass
class TrainStep:
    """One optimizer step of a spec, ready to call: its trainer and the seeded global batch.
    Every training harness and the pytest suite measure this call."""

    trainer: Trainer
    images: torch.Tensor
    warm_trainer: Trainer
    warm_images: torch.Tensor  # one micro-batch of every rank

    def __call__(self, on_micro_batch: Callable[[int, int], None] | None = None) -> StepStats:
        return self.trainer.step(self.images, on_micro_batch=on_micro_batch)

    def warm_up(self) -> StepStats:
        """One micro-batch and an optimizer step over the same model, optimizer and EMA:
        kernels, allocator, optimizer state and compilation warm without a whole accumulated
        step."""
        return self.warm_trainer.step(self.warm_images)


def train_step(spec: BenchSpec, device: str | torch.device | None = None) -> TrainStep:
    trainer = build_trainer(spec, device)
    warm = micro_batch_trainer(trainer) if spec.accum > 1 else trainer
    images = synthetic_images(spec, spec.effective_batch)
    return TrainStep(trainer, images, warm, images[: spec.ranks * spec.batch])


def micro_batch_trainer(trainer: Trainer) -> Trainer:
    """A trainer of one micro-batch per optimizer step over the same model, optimizer and EMA:
    warming up (kernels, allocator, optimizer state, compilation) needs one forward, backward
    and optimizer step, not a whole accumulated step."""
    if hasattr(trainer, "micro_batch_twin"):  # guided-diffusion's: its loss scale shared too
        return trainer.micro_batch_twin()
    config = dataclasses.replace(trainer.config, accum_steps=1)
    return Trainer(
        trainer.model,
        trainer.schedule,
        config,
        trainer.device,
        optimizer=trainer.optimizer,
        ema=trainer.ema,
        objective=trainer.objective,
    )


def traced_precision(spec: BenchSpec) -> str:
    """The precision a fake-tensor trace runs a spec in. GradScaler's fp16 step reads values
    fake tensors lack, so our recipes' fp16 is traced as bf16 (the same 2-byte autocast op
    lists); guided-diffusion's fp16 is its own scheme, with no GradScaler, traced as itself."""
    if spec.precision == "fp16" and spec.impl != GUIDED:
        return "bf16"
    return spec.precision


def synthetic_images(spec: BenchSpec, count: int) -> torch.Tensor:
    """Standard-normal images on the CPU: memory and speed do not depend on pixel values."""
    c = spec.unet_config()
    g = torch.Generator().manual_seed(spec.seed)
    return torch.randn(count, c.in_channels, c.image_size, c.image_size, generator=g)


def parameters_built(forget: bool = False) -> int | None:
    """The parameters of the model build_model made last in this process (None: none yet);
    `forget`: and none from now on, until the next model."""
    return _BUILT.pop("params", None) if forget else _BUILT.get("params")


def parameter_count(spec: BenchSpec) -> int:
    with fake_mode():  # no memory, no init cost; values read while building are there
        return sum(p.numel() for p in build_unet(spec).parameters())
