"""DDPM noise schedules: the forward process q(x_t | x_0) and posterior q(x_{t-1} | x_t, x_0).

Equation numbers refer to Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models".
Timesteps are 0-based: index t holds beta_{t+1} of the paper, as in the reference implementation.
"""

from __future__ import annotations

import math

import torch

# Every (T,) table the schedule holds; `to()` moves exactly these.
_TABLES = (
    "betas",
    "alphas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


class NoiseSchedule:
    """Betas and every table derived from them, float64 math stored as float32.

    A plain class, not an nn.Module, on purpose: as module buffers these tables would be swept
    into EMA averaging and checkpoints, and an averaged schedule is silently wrong.
    """

    def __init__(self, betas: torch.Tensor):
        betas = torch.as_tensor(betas).detach().to(device="cpu", dtype=torch.float64)
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(
                f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}."
            )
        # beta = 0 makes 1 - abar_t = 0 at t=0 (division by zero below); beta = 1 makes abar = 0.
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(
                f"betas must all lie in (0, 1), got min {betas.min().item():.6g} "
                f"and max {betas.max().item():.6g}."
            )
        self.timesteps = int(betas.numel())
        self._betas64 = betas
        for name, table in _derive(betas).items():
            setattr(self, name, table.to(torch.float32))

    @classmethod
    def linear(cls, timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        """Ho et al. 2020 section 4: betas rising linearly from beta_start to beta_end."""
        _check_timesteps(timesteps)
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(
                f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start!r} "
                f"and beta_end={beta_end!r}."
            )
        return cls(torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64))

    @classmethod
    def cosine(cls, timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999):
        """Nichol & Dhariwal 2021 eq. 17: abar(t) = f(t)/f(0), f(t) = cos((t/T+s)/(1+s) pi/2)^2."""
        _check_timesteps(timesteps)
        if not s >= 0:
            raise ValueError(f"s must be >= 0, got s={s!r}.")
        if not 0 < max_beta < 1:
            raise ValueError(f"max_beta must lie in (0, 1), got max_beta={max_beta!r}.")
        t = torch.arange(timesteps + 1, dtype=torch.float64)
        f = torch.cos((t / timesteps + s) / (1 + s) * (math.pi / 2)) ** 2
        # f(0) cancels in the ratio abar(t+1)/abar(t). Their section 3.2 clips beta at 0.999:
        # abar(T) -> 0 would give beta_T = 1 and 1/abar = inf (a singularity at t = T).
        return cls((1 - f[1:] / f[:-1]).clamp(max=max_beta))

    # -- device ------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def state_dict(self) -> dict:
        """The float64 betas: everything else is derived from them, so this rebuilds exactly."""
        return {"betas": self._betas64.clone()}

    @classmethod
    def from_state_dict(cls, state: dict) -> NoiseSchedule:
        return cls(state["betas"])

    def tables(self) -> list[torch.Tensor]:
        """The tables the schedule keeps on its device (what `to` moves)."""
        return [getattr(self, name) for name in _TABLES]

    def to(self, device) -> NoiseSchedule:
        """A copy with every table on `device` (self if already there): move once, not per call."""
        moved = self.betas.to(device)
        if moved.device == self.device:
            return self
        new = object.__new__(NoiseSchedule)
        new.timesteps = self.timesteps
        new._betas64 = self._betas64
        for name in _TABLES:
            setattr(new, name, getattr(self, name).to(moved.device))
        return new

    def __len__(self) -> int:
        return self.timesteps

    def __repr__(self) -> str:
        b = self._betas64
        return (
            f"NoiseSchedule(timesteps={self.timesteps}, "
            f"betas={b[0].item():.4g}..{b[-1].item():.4g}, device={self.device})"
        )

    # -- forward process and posterior ------------------------------------------------------------

    def extract(self, values: torch.Tensor, t, ndim: int) -> torch.Tensor:
        """values[t]: shape (B, 1, ..., 1) of `ndim` dims for a (B,) t, 0-dim for an int t."""
        return _gather(values, t, ndim, self.timesteps)

    def q_sample(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (eq. 4), in x0's dtype."""
        a = self.extract(self.sqrt_alphas_cumprod, t, x0.ndim)
        b = self.extract(self.sqrt_one_minus_alphas_cumprod, t, x0.ndim)
        # The float32 coefficients promote half inputs to float32: the sum is formed at full
        # precision and rounded once.
        return (a * x0 + b * noise).to(x0.dtype)

    def predict_x0(self, x_t: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps: eq. 4 solved for x_0."""
        a = self.extract(self.sqrt_recip_alphas_cumprod, t, x_t.ndim)
        b = self.extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim)
        return (a * x_t - b * eps).to(x_t.dtype)

    def posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, t) -> torch.Tensor:
        """mu tilde_t(x_t, x_0) of eq. 7."""
        c1 = self.extract(self.posterior_mean_coef1, t, x_t.ndim)
        c2 = self.extract(self.posterior_mean_coef2, t, x_t.ndim)
        return (c1 * x0 + c2 * x_t).to(x_t.dtype)

    def posterior_mean_variance(self, x0: torch.Tensor, x_t: torch.Tensor, t):
        """(mu tilde_t, beta tilde_t, log beta tilde_t clipped) of eq. 7, broadcastable to x_t."""
        mean = self.posterior_mean(x0, x_t, t)
        var = self.extract(self.posterior_variance, t, x_t.ndim)
        log_var = self.extract(self.posterior_log_variance_clipped, t, x_t.ndim)
        return mean, var, log_var


def _derive(betas: torch.Tensor) -> dict[str, torch.Tensor]:
    """All tables from float64 betas, in float64."""
    alphas = 1.0 - betas
    abar = torch.cumprod(alphas, dim=0)
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])  # abar_0 = 1: x_0 carries no noise
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)  # beta tilde_t, eq. 7
    # beta tilde is 0 at the first step, so its log is -inf; the reference implementation uses
    # the next step's value there. With a single step there is no next one: use beta_1 (the
    # sampler adds no noise at the last step, so the value is never used to draw).
    first = post_var[1:2] if len(betas) > 1 else betas[:1]
    return {
        "betas": betas,
        "alphas": alphas,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": abar_prev,
        "sqrt_alphas_cumprod": abar.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - abar).sqrt(),
        "sqrt_recip_alphas_cumprod": (1.0 / abar).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / abar - 1.0).sqrt(),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": torch.cat([first, post_var[1:]]).log(),
        "posterior_mean_coef1": betas * abar_prev.sqrt() / (1.0 - abar),
        "posterior_mean_coef2": (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar),
    }


def _check_timesteps(timesteps) -> None:
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise ValueError(f"timesteps must be an integer >= 1, got {timesteps!r}.")


def _gather(values: torch.Tensor, t, ndim: int, timesteps: int) -> torch.Tensor:
    """values[t] shaped to broadcast against an `ndim`-dim tensor whose first dim is the batch."""
    if isinstance(t, bool) or not isinstance(t, (int, torch.Tensor)):
        raise ValueError(f"t must be an int or an integer tensor, got {type(t).__name__}.")
    if isinstance(t, int):
        if not 0 <= t < timesteps:
            raise ValueError(f"t must lie in [0, {timesteps - 1}], got {t}.")
        return values[t]
    if t.device != values.device:
        # Moving here would copy every table on every call (and sync for CPU -> GPU).
        raise ValueError(
            f"t is on {t.device} but the schedule is on {values.device}; "
            f"call schedule = schedule.to(device) once before use."
        )
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"t must hold integer timesteps, got dtype {t.dtype}.")
    if t.ndim == 0:
        return values[t]
    if t.ndim != 1:
        raise ValueError(f"t must be an int or a (B,) tensor, got shape {tuple(t.shape)}.")
    # No range check on tensor t: it would force a device sync; indexing fails loudly instead.
    return values[t].reshape(t.shape[0], *([1] * (ndim - 1)))
