"""The training objective, L_simple (Ho et al. 2020, eq. 14), and its held-out estimate: what
Trainer.step optimizes, `python -m ddpm.cli.train` logs as val/loss and bench.loss reports."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from ddpm.precision import Phase, autocast, phase
from ddpm.schedule import NoiseSchedule

# What Trainer.step and held_out_loss minimise and report, as l_simple's signature:
# (model, schedule, x0, t, noise, precision) -> a 0-dim fp32 loss.
Objective = Callable[..., torch.Tensor]


def l_simple(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    precision: str = "fp32",
) -> torch.Tensor:
    """E ||eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t)||^2 (eq. 14) over the
    batch, as a 0-dim fp32 tensor: the mean squared error per element.

    The model runs under `precision`'s autocast; the error is taken in fp32 whatever it
    returns. The two halves open the forward and loss profiler ranges.
    """
    device = x0.device
    with phase(Phase.FORWARD, device), autocast(precision, device):
        eps = model(schedule.q_sample(x0, t, noise), t)
    with phase(Phase.LOSS, device):
        return F.mse_loss(eps.float(), noise.float())


def held_out_draws(
    images: torch.Tensor, timesteps: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps and noise for held-out images, drawn once: the same for every call with this
    seed, so a held-out loss changes only when the model does.

    Timesteps are stratified, evenly over 0..T-1: a lower-variance estimate of eq. 14's
    expectation over t than uniform draws. The noise comes from a CPU generator seeded with
    `seed`: the same draws on every device.
    """
    n = images.shape[0]
    t = (torch.arange(n) * timesteps) // n
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=generator, dtype=torch.float32)
    return t, noise


def held_out_loss(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    precision: str = "fp32",
    objective: Objective | None = None,
) -> float:
    """`objective` (default L_simple) over every element of the (x0, t, noise) batches, each
    batch's mean weighted by its size and summed in float64, in eval mode (dropout off) without
    gradients; the model's mode comes back afterwards."""
    was_training = model.training
    model.eval()
    total, count = None, 0
    try:
        # no_grad, not inference mode: an FSDP2 model keeps the whole weights it gathers here
        # for its next step, and inference tensors cannot be used by autograd later.
        with torch.no_grad():
            for x0, t, noise in batches:
                loss = (objective or l_simple)(model, schedule, x0, t, noise, precision)
                loss = loss.double() * x0.numel()
                total = loss if total is None else total + loss
                count += x0.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("held_out_loss needs at least one image.")
    return float(total) / count
