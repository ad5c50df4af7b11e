"""What a spec trains: the UNet, its Trainer and a seeded batch. Every harness builds through
here, so the same spec means the same model, weights and data in every table."""

from __future__ import annotations

import torch

from bench.spec import BenchSpec
from ddpm.config import TrainConfig
from ddpm.schedule import NoiseSchedule
from ddpm.train import Trainer
from ddpm.unet import UNet

COMPILE_KWARGS = {"default": {}, "reduce-overhead": {"mode": "reduce-overhead"},
                  "max-autotune": {"mode": "max-autotune"}}


def build_model(spec: BenchSpec, compiled: bool = True) -> UNet:
    torch.manual_seed(spec.seed)  # the same initial weights for every spec with this seed
    model = UNet(spec.unet_config())
    if compiled and spec.compile != "off":
        model.compile(**COMPILE_KWARGS[spec.compile])  # in place: the module keeps its type
    return model


def build_trainer(spec: BenchSpec, device: str | torch.device | None = None,
                  accum: int | None = None, precision: str | None = None,
                  compiled: bool = True, schedule: NoiseSchedule | None = None) -> Trainer:
    config = TrainConfig(batch_size=spec.batch, accum_steps=accum or spec.accum,
                         precision=precision or spec.precision, seed=spec.seed)
    schedule = schedule or NoiseSchedule.linear()
    return Trainer(build_model(spec, compiled), schedule, config,
                   device=device or spec.device)


def synthetic_images(spec: BenchSpec, count: int) -> torch.Tensor:
    """Standard-normal images on the CPU: memory and speed do not depend on pixel values."""
    c = spec.unet_config()
    g = torch.Generator().manual_seed(spec.seed)
    return torch.randn(count, c.in_channels, c.image_size, c.image_size, generator=g)


def parameter_count(spec: BenchSpec) -> int:
    with torch.device("meta"):  # no memory, no init cost
        return sum(p.numel() for p in UNet(spec.unet_config()).parameters())
