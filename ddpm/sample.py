"""Samplers: DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) and DDIM (Song et al. 2021).

Each sampler is a single-step function (`ddpm_step`, `ddim_step`) and a loop that calls the model
once per step. Both loops share `_denoise`, which owns what every sampler needs alike: x_T drawn
from a CPU generator (same samples on every device), eval mode restored afterwards, optional EMA
weights, inference mode, a profiler range per step and progress callbacks.

Equation numbers: "eq." alone is Ho et al. 2020; "DDIM eq." is Song, Meng & Ermon 2021.
Timesteps are 0-based, as in `NoiseSchedule`: t = T-1 is the noisiest, t = 0 gives x_0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn
from torch.profiler import record_function

from ddpm.ema import EMA
from ddpm.schedule import NoiseSchedule

# Ho et al. section 3.2: sigma_t^2 = beta tilde_t ("fixed small", optimal for a deterministic x_0)
# or beta_t ("fixed large", optimal for x_0 ~ N(0, I); the released CIFAR-10 model uses it).
VARIANCES = ("posterior", "beta")

Progress = Callable[[int, int], None]


def ddpm_step(
    schedule: NoiseSchedule,
    x_t: torch.Tensor,
    t: int,
    eps: torch.Tensor,
    noise: torch.Tensor | None = None,
    variance: str = "posterior",
    clip_x0: bool = False,
) -> torch.Tensor:
    """x_{t-1} = mu_theta(x_t, t) + sigma_t z: one step of Algorithm 2 (line 4).

    The mean is the posterior mean (eq. 7) at x0_hat = predict_x0(x_t, t, eps). Unclipped, that
    equals eq. 11, 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps); `clip_x0` clamps x0_hat
    to the data range [-1, 1] first, as the released sampler does. `noise` is z ~ N(0, I), needed
    for t > 0; at t == 0 the mean is returned (Algorithm 2: z = 0 when t = 1, 1-based).
    """
    _check_variance(variance)
    _check_int("t", t)
    x0_hat = schedule.predict_x0(x_t, t, eps)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
    mean = schedule.posterior_mean(x0_hat, x_t, t)
    if t == 0:
        return mean
    if noise is None:
        raise ValueError(f"ddpm_step at t={t} > 0 needs noise (z ~ N(0, I) shaped like x_t).")
    var = schedule.posterior_variance if variance == "posterior" else schedule.betas
    return mean + var[t].sqrt() * noise


def ddim_step(
    schedule: NoiseSchedule,
    x_t: torch.Tensor,
    t: int,
    t_prev: int,
    eps: torch.Tensor,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    clip_x0: bool = False,
) -> torch.Tensor:
    """x_{t_prev} from x_t by DDIM eq. 12, jumping any number of steps down (t_prev < t).

    x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma z, with
    sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev) (DDIM eq. 16):
    eta = 0 is deterministic DDIM, eta = 1 is DDPM's posterior variance. t_prev = -1 is the last
    step, with abar_prev = 1 (x_0 carries no noise), where sigma = 0. `noise` (z) is needed only
    when sigma > 0, that is eta > 0 and t_prev >= 0. `clip_x0` clamps x0_hat to [-1, 1] and
    re-derives eps from it, so both terms of eq. 12 agree (as diffusers' DDIMScheduler does).
    """
    _check_int("t", t)
    _check_int("t_prev", t_prev)
    if not -1 <= t_prev < t:
        raise ValueError(f"t_prev must lie in [-1, t - 1] = [-1, {t - 1}], got {t_prev}.")
    _check_eta(eta)
    x0_hat = schedule.predict_x0(x_t, t, eps)
    abar = schedule.alphas_cumprod
    abar_t = abar[t]
    if clip_x0:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
        eps = (x_t - abar_t.sqrt() * x0_hat) / (1 - abar_t).sqrt()
    abar_prev = abar[t_prev] if t_prev >= 0 else abar.new_ones(())
    stochastic = eta > 0 and t_prev >= 0  # decided in Python: no device sync to test sigma > 0
    sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt()
    # At eta = 1 the bracket is (1 - abar_prev) abar_t (1/abar_prev - 1) / (1 - abar_t) >= 0
    # exactly; clamp only float32 rounding.
    dir_coef = (1 - abar_prev - sigma**2).clamp(min=0).sqrt()
    x_prev = abar_prev.sqrt() * x0_hat + dir_coef * eps
    if not stochastic:
        return x_prev.to(x_t.dtype)
    if noise is None:
        raise ValueError(f"ddim_step with eta={eta} > 0 at t_prev={t_prev} needs noise.")
    return (x_prev + sigma * noise).to(x_t.dtype)


def ddim_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """The `steps` timesteps DDIM visits, descending: t_i = floor(i T / steps), i = steps-1 .. 0.

    Uniform "leading" spacing: the "linear" sub-sequence tau_i = floor(c i) of Song et al. 2021
    (section 4.2, Appendix D.2) with c = T / steps. It starts at or below T - 1 (for T = 1000 and
    50 steps: 980, 960, ..., 20, 0), always ends at 0, and steps == T gives T-1, ..., 0 exactly.
    """
    _check_int("num_timesteps", num_timesteps)
    _check_int("steps", steps)
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}.")
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must lie in [1, {num_timesteps}] (the schedule's T), got {steps}.")
    return [i * num_timesteps // steps for i in reversed(range(steps))]


def ddpm_sample(
    model: nn.Module,
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    variance: str = "posterior",
    clip_x0: bool = False,
    ema: EMA | None = None,
    return_x0_every: int | None = None,
    progress: Progress | None = None,
) -> torch.Tensor | tuple[torch.Tensor, list[tuple[int, torch.Tensor]]]:
    """Algorithm 2: x_T ~ N(0, I), then T calls of the model and `ddpm_step`, t = T-1 .. 0.

    x_T and every z are drawn from `generator` (a CPU generator; the global CPU one if None) and
    then moved to `device` (default: the model's), so a seed gives the same samples anywhere.
    With `ema`, the EMA weights are used and the model's own come back afterwards. `progress`
    is called as progress(done, total) after each step. Returns x_0, or (x_0, trajectory) when
    `return_x0_every` = k: the (t, x0_hat) of every k-th step and of the last, on `device`.
    """
    _check_variance(variance)
    if return_x0_every is not None:
        _check_int("return_x0_every", return_x0_every)
        if return_x0_every < 1:
            raise ValueError(f"return_x0_every must be >= 1 or None, got {return_x0_every}.")
    trajectory: list[tuple[int, torch.Tensor]] = []
    T = schedule.timesteps

    def step(i, t, x, eps, schedule, randn):
        noise = randn() if t > 0 else None
        x_prev = ddpm_step(schedule, x, t, eps, noise, variance=variance, clip_x0=clip_x0)
        if return_x0_every is not None and ((i + 1) % return_x0_every == 0 or t == 0):
            # Recomputed rather than returned by ddpm_step: only every k-th step pays for it.
            x0_hat = schedule.predict_x0(x, t, eps)
            trajectory.append((t, x0_hat.clamp(-1.0, 1.0) if clip_x0 else x0_hat))
        return x_prev

    x = _denoise(model, schedule, shape, list(reversed(range(T))), step,
                 generator, device, ema, progress)
    if return_x0_every is None:
        return x
    return x, [(t, x0.clone()) for t, x0 in trajectory]


def ddim_sample(
    model: nn.Module,
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    steps: int = 50,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    ema: EMA | None = None,
    progress: Progress | None = None,
    clip_x0: bool = False,
) -> torch.Tensor:
    """DDIM (Song et al. 2021): `steps` model calls over `ddim_timesteps(T, steps)`.

    eta = 0 is deterministic given x_T; generator, device, ema and progress as in `ddpm_sample`;
    clip_x0 as in `ddim_step`.
    """
    ts = ddim_timesteps(schedule.timesteps, steps)
    _check_eta(eta)

    def step(i, t, x, eps, schedule, randn):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        noise = randn() if eta > 0 and t_prev >= 0 else None
        return ddim_step(schedule, x, t, t_prev, eps, eta=eta, noise=noise, clip_x0=clip_x0)

    return _denoise(model, schedule, shape, ts, step, generator, device, ema, progress)


# -- the one loop -----------------------------------------------------------------------------


def _denoise(model, schedule, shape, ts, step, generator, device, ema, progress) -> torch.Tensor:
    """x_T ~ N(0, I); for i, t in enumerate(ts): x = step(i, t, x, model(x, t), schedule, randn)."""
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    schedule = schedule.to(device)  # once, not per step
    batch = shape[0]

    def randn() -> torch.Tensor:
        # Drawn on the CPU and moved: the same generator gives the same samples on any device.
        return torch.randn(shape, generator=generator).to(device)

    was_training = model.training
    swap = ema.swap_into(model) if ema is not None else contextlib.nullcontext()
    try:
        # Swap first: EMA weights go in (and come back) as ordinary tensor copies, not inside
        # inference mode. Eval mode: dropout off (and any normalisation statistics frozen).
        with swap, torch.inference_mode():
            model.eval()
            x = randn()
            for i, t in enumerate(ts):
                with record_function("denoise_step"):
                    t_batch = torch.full((batch,), t, dtype=torch.long, device=device)
                    x = step(i, t, x, model(x, t_batch), schedule, randn)
                if progress is not None:
                    progress(i + 1, len(ts))
    finally:
        model.train(was_training)
    # A normal tensor, not an inference tensor: callers may modify it in place or use it where
    # autograd saves it (e.g. a feature network for FID) without an error.
    return x.clone()


def _check_variance(variance: str) -> None:
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {', '.join(map(repr, VARIANCES))}, "
                         f"got {variance!r}.")


def _check_eta(eta) -> None:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta <= 1:
        # eta > 1 can make 1 - abar_prev - sigma^2 negative: the step is then undefined.
        raise ValueError(f"eta must be a number in [0, 1], got {eta!r}.")


def _check_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {type(value).__name__} {value!r}.")


if __name__ == "__main__":
    from ddpm.sample_cli import main

    main()
