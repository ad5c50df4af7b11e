"""`--impl lucidrains`: denoising-diffusion-pytorch's `Unet` (github.com/lucidrains/
denoising-diffusion-pytorch), trained the way its own `GaussianDiffusion` trains it.

Its defaults differ from DDPM's (Ho et al. 2020): the objective is v-prediction (`pred_v`,
Salimans & Ho 2022), the betas follow a sigmoid schedule (T = 1000), and the per-image MSE is
weighted by its `loss_weight`, SNR / (SNR + 1) for pred_v with min-SNR clipping off. The loss is
GaussianDiffusion.p_losses itself, fed our Trainer's seeded timesteps and noise, so the loss
and its gradients are the library's to the bit. Our images are already in [-1, 1], which is
what its forward's auto-normalization would make of [0, 1] images: p_losses is called past it.

The model is called two ways, both through its own forward (so DDP's and FSDP2's hooks run):
model(x0, t, noise) is the training loss, and model(x_t, t) the noise prediction our DDPM and
DDIM samplers take, converted from v by the library's own model_predictions.

--model-config holds the Unet's keyword arguments; a "diffusion" table in it, GaussianDiffusion's
(objective, beta_schedule, min_snr_loss_weight, ...). pip install 'ddpm-bench[lucidrains]'."""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from bench import model_config
from ddpm.config import UNetConfig
from ddpm.precision import Phase, autocast, phase
from ddpm.schedule import NoiseSchedule

INSTALL_HINT = "pip install 'ddpm-bench[lucidrains]' (or pip install denoising-diffusion-pytorch)"
# GaussianDiffusion keywords bench sets itself: the image size is an axis, and the timesteps
# are the Trainer's (its draws of t span the schedule it is given).
SET_HERE = ("image_size", "timesteps")


def installed() -> bool:
    return importlib.util.find_spec("denoising_diffusion_pytorch") is not None


def kwargs_of(config: UNetConfig, path: str = "") -> tuple[dict, dict]:
    """(Unet's keywords, GaussianDiffusion's) from the file; without one, the library's default
    Unet(dim=64, dim_mults=(1, 2, 4, 8)) with the preset's image channels."""
    unet = {"dim": 64, "channels": config.in_channels}
    if not path:
        return unet, {}
    given = model_config.load(path)
    diffusion = given.pop("diffusion", {})
    if not isinstance(diffusion, dict):
        raise model_config.ModelConfigError(
            f"--model-config {path}: 'diffusion' must be a table of GaussianDiffusion's "
            "keyword arguments."
        )
    clash = sorted(set(diffusion) & set(SET_HERE))
    if clash:
        raise model_config.ModelConfigError(
            f"--model-config {path}: diffusion.{clash[0]} is set by bench (--image-size; the "
            "Trainer's T timesteps)."
        )
    return {**unet, **given}, diffusion


class LucidrainsUNet(nn.Module):
    """Unet inside its GaussianDiffusion (which holds the schedule and the loss weights as
    buffers and the Unet as its `model`): model(x0, t, noise) is the loss, model(x_t, t) eps."""

    def __init__(self, config: UNetConfig, path: str = "", timesteps: int = 1000):
        super().__init__()
        from denoising_diffusion_pytorch import GaussianDiffusion, Unet

        unet, diffusion = kwargs_of(config, path)
        self.config = config
        self.diffusion = GaussianDiffusion(
            Unet(**unet), image_size=config.image_size, timesteps=timesteps, **diffusion
        )

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        if noise is not None:
            return self.diffusion.p_losses(x, t, noise)
        return self.diffusion.model_predictions(x, t).pred_noise


def lucidrains_loss(
    model: nn.Module,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    precision: str = "fp32",
) -> torch.Tensor:
    """The Trainer's objective (ddpm.objective.Objective) for LucidrainsUNet: GaussianDiffusion's
    loss on our draws, under the precision's autocast as its own Trainer runs it (accelerate's
    autocast around the whole loss; the MSE is on autocast's fp32 list)."""
    module = getattr(model, "module", model)  # DDP's inner module holds the diffusion
    if module.diffusion.num_timesteps != schedule.timesteps:
        raise ValueError(
            f"the Trainer draws t over {schedule.timesteps} steps; this GaussianDiffusion has "
            f"{module.diffusion.num_timesteps}."
        )
    with phase(Phase.FORWARD, x0.device), autocast(precision, x0.device):
        loss = model(x0, t, noise)
    return loss.float()
