"""Samplers: DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) and DDIM (Song et al. 2021).

Each sampler's update is a single-step function (`ddpm_step`, `ddim_step`). A sampler object
(`DDPMSampler`, `DDIMSampler`) owns its timesteps and says which steps take noise; one loop,
`sample_progressive`, runs any of them, like improved-diffusion's p_sample_loop_progressive and
diffusers' schedulers. The loop owns what every sampler needs alike: x_T and the noise drawn from
a CPU generator (same samples on every device), eval mode restored afterwards, optional EMA
weights, inference mode, autocast around the model and a profiler range per step.
`sample_loop`, `ddpm_sample`, `ddim_sample`, `python -m ddpm.cli.sample` and the benchmarks all run
it.

Equation numbers: "eq." alone is Ho et al. 2020; "DDIM eq." is Song, Meng & Ermon 2021.
Timesteps are 0-based, as in `NoiseSchedule`: t = T-1 is the noisiest, t = 0 gives x_0.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ddpm.ema import EMA
from ddpm.precision import Phase, autocast, phase
from ddpm.schedule import NoiseSchedule

# Ho et al. section 3.2: sigma_t^2 = beta tilde_t ("fixed small", optimal for a deterministic x_0)
# or beta_t ("fixed large", optimal for x_0 ~ N(0, I); the released CIFAR-10 model uses it).
VARIANCES = ("posterior", "beta")

Progress = Callable[[int, int], None]
# One step of a run, as sample_progressive yields it: (index, t, x_{t_prev}, x0_hat).
Step = tuple[int, int, torch.Tensor, torch.Tensor]


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
    return _ddpm_update(schedule, x_t, t, eps, noise, variance, clip_x0)[0]


def _ddpm_update(schedule, x_t, t, eps, noise, variance, clip_x0):
    """ddpm_step's (x_{t-1}, x0_hat): the sampler loop shows x0_hat without computing it twice."""
    _check_variance(variance)
    _check_int("t", t)
    x0_hat = schedule.predict_x0(x_t, t, eps)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
    mean = schedule.posterior_mean(x0_hat, x_t, t)
    if t == 0:
        return mean, x0_hat
    if noise is None:
        raise ValueError(f"ddpm_step at t={t} > 0 needs noise (z ~ N(0, I) shaped like x_t).")
    var = schedule.posterior_variance if variance == "posterior" else schedule.betas
    return mean + var[t].sqrt() * noise, x0_hat


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
    return _ddim_update(schedule, x_t, t, t_prev, eps, eta, noise, clip_x0)[0]


def _ddim_update(schedule, x_t, t, t_prev, eps, eta, noise, clip_x0):
    """ddim_step's (x_{t_prev}, x0_hat)."""
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
        return x_prev.to(x_t.dtype), x0_hat
    if noise is None:
        raise ValueError(f"ddim_step with eta={eta} > 0 at t_prev={t_prev} needs noise.")
    return (x_prev + sigma * noise).to(x_t.dtype), x0_hat


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


# -- sampler objects: the timesteps a run visits and the update at each ------------------------


class _Sampler:
    """What sample_progressive needs of a sampler: `schedule`, `timesteps` (descending),
    `needs_noise(t)` (whether the step at t takes z ~ N(0, I)) and `step(eps, t, x, noise)`."""

    schedule: NoiseSchedule
    timesteps: list[int]

    def to(self, device: torch.device | str):
        """This sampler with its schedule on `device` (itself if already there)."""
        schedule = self.schedule.to(device)
        if schedule is self.schedule:
            return self
        moved = copy.copy(self)
        moved.schedule = schedule
        return moved


class DDPMSampler(_Sampler):
    """Algorithm 2: every timestep T-1, ..., 0, each updated by `ddpm_step` (variance and
    clip_x0 as there)."""

    def __init__(self, schedule: NoiseSchedule, variance: str = "posterior", clip_x0: bool = False):
        _check_variance(variance)
        self.schedule, self.variance, self.clip_x0 = schedule, variance, clip_x0
        self.timesteps = list(reversed(range(schedule.timesteps)))

    def needs_noise(self, t: int) -> bool:
        return t > 0  # the last step returns the posterior mean

    def step(
        self, eps: torch.Tensor, t: int, x: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_{t-1}, x0_hat) from x = x_t and the model's eps."""
        return _ddpm_update(self.schedule, x, t, eps, noise, self.variance, self.clip_x0)

    def __repr__(self) -> str:
        return (
            f"DDPMSampler(T={self.schedule.timesteps}, variance={self.variance!r}, "
            f"clip_x0={self.clip_x0})"
        )


class DDIMSampler(_Sampler):
    """DDIM over `ddim_timesteps(T, steps)`, each step by `ddim_step` to the next timestep
    visited (-1 after the last); eta and clip_x0 as there."""

    def __init__(
        self, schedule: NoiseSchedule, steps: int, eta: float = 0.0, clip_x0: bool = False
    ):
        self.timesteps = ddim_timesteps(schedule.timesteps, steps)
        _check_eta(eta)
        self.schedule, self.steps, self.eta, self.clip_x0 = schedule, steps, eta, clip_x0
        self.t_prev = dict(zip(self.timesteps, [*self.timesteps[1:], -1], strict=True))

    def needs_noise(self, t: int) -> bool:
        return self.eta > 0 and self.t_prev[t] >= 0  # sigma = 0 otherwise (DDIM eq. 16)

    def step(
        self, eps: torch.Tensor, t: int, x: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_{t_prev}, x0_hat) from x = x_t and the model's eps."""
        return _ddim_update(self.schedule, x, t, self.t_prev[t], eps, self.eta, noise, self.clip_x0)

    def __repr__(self) -> str:
        return (
            f"DDIMSampler(T={self.schedule.timesteps}, steps={self.steps}, eta={self.eta}, "
            f"clip_x0={self.clip_x0})"
        )


Sampler = DDPMSampler | DDIMSampler


# -- the one loop -----------------------------------------------------------------------------


def sample_progressive(
    model: nn.Module,
    sampler: Sampler,
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    ema: EMA | None = None,
    precision: str = "fp32",
) -> Iterator[Step]:
    """Run `sampler` from x_T ~ N(0, I), yielding (i, t, x_prev, x0_hat) after each step.

    x_T and every z are drawn from `generator` (a CPU generator; the global CPU one if None) and
    then moved to `device` (default: the model's), so a seed gives the same samples anywhere.
    The model runs in eval mode and inference mode, under `precision`'s autocast; each step is
    one profiler range, "denoise_step". With `ema`, the EMA weights are in the model for the
    whole run and its own weights come back at the end.

    A generator: the model is in eval mode (with EMA weights, if given) from the first step
    until the run is exhausted or closed, and its mode and weights come back then; a caller
    that may stop early closes it (contextlib.closing). Inference mode holds only inside each
    step, not between them. The yielded tensors are inference tensors: clone one to modify it
    in place or to use it where autograd records.
    """
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    sampler = sampler.to(device)  # once, not per step
    batch = shape[0]

    def randn() -> torch.Tensor:
        # Drawn on the CPU and moved: the same generator gives the same samples on any device.
        return torch.randn(shape, generator=generator).to(device)

    was_training = model.training
    swap = ema.swap_into(model) if ema is not None else contextlib.nullcontext()
    try:
        # Swap first: EMA weights go in (and come back) as ordinary tensor copies, not inside
        # inference mode. Eval mode: dropout off (and any normalisation statistics frozen).
        with swap:
            model.eval()
            with torch.inference_mode():
                x = randn()
            for i, t in enumerate(sampler.timesteps):
                with torch.inference_mode(), phase(Phase.DENOISE_STEP, device):
                    t_batch = torch.full((batch,), t, dtype=torch.long, device=device)
                    with autocast(precision, device):
                        eps = model(x, t_batch)
                    noise = randn() if sampler.needs_noise(t) else None
                    x, x0_hat = sampler.step(eps, t, x, noise)
                yield i, t, x, x0_hat
    finally:
        model.train(was_training)


def sample_loop(
    model: nn.Module,
    sampler: Sampler,
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    ema: EMA | None = None,
    precision: str = "fp32",
    progress: Progress | None = None,
) -> torch.Tensor:
    """x_0: `sample_progressive` run to the end. `progress` is called as progress(done, total)
    after each step."""
    total = len(sampler.timesteps)
    # Closed on the way out, not left to the garbage collector: after an exception here (Ctrl-C
    # in `progress`) the model's mode and weights are back before the caller sees it.
    with contextlib.closing(
        sample_progressive(
            model, sampler, shape, generator=generator, device=device, ema=ema, precision=precision
        )
    ) as run:
        for step in run:
            if progress is not None:
                progress(step[0] + 1, total)
    # A normal tensor, not an inference tensor: callers may modify it in place or use it where
    # autograd saves it (e.g. a feature network for FID) without an error.
    return step[2].clone()


# -- the samplers as functions ----------------------------------------------------------------


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

    generator, device and ema as in `sample_progressive`; `progress` is called as
    progress(done, total) after each step. Returns x_0, or (x_0, trajectory) when
    `return_x0_every` = k: the (t, x0_hat) of every k-th step and of the last, on `device`.
    """
    sampler = DDPMSampler(schedule, variance=variance, clip_x0=clip_x0)
    if return_x0_every is None:
        return sample_loop(
            model, sampler, shape, generator=generator, device=device, ema=ema, progress=progress
        )
    _check_int("return_x0_every", return_x0_every)
    if return_x0_every < 1:
        raise ValueError(f"return_x0_every must be >= 1 or None, got {return_x0_every}.")
    trajectory: list[tuple[int, torch.Tensor]] = []
    total = len(sampler.timesteps)
    with contextlib.closing(
        sample_progressive(model, sampler, shape, generator=generator, device=device, ema=ema)
    ) as run:
        for i, t, x_prev, x0_hat in run:
            if (i + 1) % return_x0_every == 0 or t == 0:
                trajectory.append((t, x0_hat.clone()))  # clone: normal tensors, as x_0 is
            if progress is not None:
                progress(i + 1, total)
            x = x_prev
    return x.clone(), trajectory


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
    sampler = DDIMSampler(schedule, steps, eta=eta, clip_x0=clip_x0)
    return sample_loop(
        model, sampler, shape, generator=generator, device=device, ema=ema, progress=progress
    )


def _check_variance(variance: str) -> None:
    if variance not in VARIANCES:
        raise ValueError(
            f"variance must be one of {', '.join(map(repr, VARIANCES))}, got {variance!r}."
        )


def _check_eta(eta) -> None:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta <= 1:
        # eta > 1 can make 1 - abar_prev - sigma^2 negative: the step is then undefined.
        raise ValueError(f"eta must be a number in [0, 1], got {eta!r}.")


def _check_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {type(value).__name__} {value!r}.")
