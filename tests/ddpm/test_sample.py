"""Samplers against closed forms computed here in float64, and the loops' contracts."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import ddpm.sample
from ddpm.config import PRESETS
from ddpm.ema import EMA
from ddpm.sample import (
    DDIMSampler,
    DDPMSampler,
    ddim_sample,
    ddim_step,
    ddim_timesteps,
    ddpm_sample,
    ddpm_step,
    sample_progressive,
)
from ddpm.schedule import NoiseSchedule
from ddpm.unet import UNet
from tests.helpers.spies import spy_on

T = 1000


def np_tables(T=T, start=1e-4, end=0.02):
    """beta, alpha, abar, abar_prev, beta tilde in float64, from the definitions (eq. 4, 7)."""
    beta = np.linspace(start, end, T, dtype=np.float64)
    alpha = 1.0 - beta
    abar = np.cumprod(alpha)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    beta_tilde = beta * (1.0 - abar_prev) / (1.0 - abar)
    return beta, alpha, abar, abar_prev, beta_tilde


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def d(x):
    return x.double().numpy()


def eq11_mean(x, eps, t):
    """1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps), Ho et al. eq. 11, float64."""
    beta, alpha, abar, _, _ = np_tables()
    return (d(x) - beta[t] / np.sqrt(1 - abar[t]) * d(eps)) / np.sqrt(alpha[t])


class GaussianOracle(nn.Module):
    """The exact E[eps | x_t] for data x_0 ~ N(m, s^2) elementwise:
    sqrt(1 - abar_t) (x_t - sqrt(abar_t) m) / (abar_t s^2 + 1 - abar_t)."""

    def __init__(self, abar, m, s):
        super().__init__()
        self.abar, self.m, self.s = torch.as_tensor(abar, dtype=torch.float64), m, s
        self.seen = []  # (training, inference mode, t) at each call

    def forward(self, x, t):
        self.seen.append((self.training, torch.is_inference_mode_enabled(), t.clone()))
        a = self.abar[t].view(-1, *[1] * (x.ndim - 1))
        eps = (1 - a).sqrt() * (x.double() - a.sqrt() * self.m) / (a * self.s**2 + 1 - a)
        return eps.float()


class FixedEps(nn.Module):
    """Returns one fixed tensor whatever the input: the true noise of a known path."""

    def __init__(self, eps):
        super().__init__()
        self.eps = eps

    def forward(self, x, t):
        return self.eps


class Toy(nn.Module):
    """A small model with parameters, dropout and a dependence on t."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng():  # fixed weights without touching the global RNG
            torch.manual_seed(0)
            self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.seen = []

    def forward(self, x, t):
        self.seen.append((self.training, torch.is_inference_mode_enabled()))
        return self.drop(self.conv(x)) * 0.1 + t.float().view(-1, 1, 1, 1) * 1e-4


# -- ddpm_step --------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [1, 10, 500, 999])
def test_ddpm_step_posterior_variance_closed_form(t):
    s = NoiseSchedule.linear(T)
    x, eps, z = randn(4, 3, 8, seed=1), randn(4, 3, 8, seed=2), randn(4, 3, 8, seed=3)
    beta_tilde = np_tables()[4]
    want = eq11_mean(x, eps, t) + np.sqrt(beta_tilde[t]) * d(z)
    got = ddpm_step(s, x, t, eps, z)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(d(got), want, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("t", [1, 10, 500, 999])
def test_ddpm_step_beta_variance_closed_form(t):
    s = NoiseSchedule.linear(T)
    x, eps, z = randn(4, 3, 8, seed=4), randn(4, 3, 8, seed=5), randn(4, 3, 8, seed=6)
    beta = np_tables()[0]
    want = eq11_mean(x, eps, t) + np.sqrt(beta[t]) * d(z)
    got = ddpm_step(s, x, t, eps, z, variance="beta")
    np.testing.assert_allclose(d(got), want, rtol=1e-5, atol=2e-5)


def test_ddpm_step_adds_no_noise_at_t0():
    s = NoiseSchedule.linear(T)
    x, eps = randn(2, 5, seed=7), randn(2, 5, seed=8)
    for variance in ("posterior", "beta"):
        without = ddpm_step(s, x, 0, eps, None, variance=variance)
        with_z = ddpm_step(s, x, 0, eps, 100 * randn(2, 5, seed=9), variance=variance)
        assert torch.equal(without, with_z)
        np.testing.assert_allclose(d(without), eq11_mean(x, eps, 0), rtol=1e-5, atol=2e-6)


def test_ddpm_step_clip_x0_matches_manual_computation():
    s = NoiseSchedule.linear(T)
    beta, alpha, abar, abar_prev, beta_tilde = np_tables()
    t = 300
    x, eps, z = 2 * randn(3, 16, seed=10), randn(3, 16, seed=11), randn(3, 16, seed=12)
    x0 = d(x) / np.sqrt(abar[t]) - np.sqrt(1 / abar[t] - 1) * d(eps)
    assert (np.abs(x0) > 1).any() and (np.abs(x0) < 1).any()  # the clamp does something
    x0 = np.clip(x0, -1, 1)
    mean = (
        beta[t] * np.sqrt(abar_prev[t]) * x0 + (1 - abar_prev[t]) * np.sqrt(alpha[t]) * d(x)
    ) / (1 - abar[t])  # eq. 7
    want = mean + np.sqrt(beta_tilde[t]) * d(z)
    got = ddpm_step(s, x, t, eps, z, clip_x0=True)
    np.testing.assert_allclose(d(got), want, rtol=1e-5, atol=2e-5)
    assert not torch.allclose(got, ddpm_step(s, x, t, eps, z))


def test_ddpm_step_bad_input():
    s = NoiseSchedule.linear(10)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="needs noise"):
        ddpm_step(s, x, 5, x)
    with pytest.raises(ValueError, match="'posterior', 'beta'.*'large'"):
        ddpm_step(s, x, 5, x, x, variance="large")
    with pytest.raises(ValueError, match=r"\[0, 9\], got 10"):
        ddpm_step(s, x, 10, x, x)
    with pytest.raises(ValueError, match="t must be an int"):
        ddpm_step(s, x, 2.0, x, x)


# -- ddim_step and timesteps ------------------------------------------------------------------


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("t, t_prev", [(999, 979), (500, 499), (20, 0), (20, -1), (0, -1)])
def test_ddim_step_closed_form(eta, t, t_prev):
    """DDIM eq. 12 with sigma from DDIM eq. 16, float64."""
    s = NoiseSchedule.linear(T)
    abar = np_tables()[2]
    x, eps, z = randn(4, 8, seed=13), randn(4, 8, seed=14), randn(4, 8, seed=15)
    a_t, a_p = abar[t], (abar[t_prev] if t_prev >= 0 else 1.0)
    sigma = eta * np.sqrt((1 - a_p) / (1 - a_t)) * np.sqrt(1 - a_t / a_p)
    x0 = (d(x) - np.sqrt(1 - a_t) * d(eps)) / np.sqrt(a_t)
    want = np.sqrt(a_p) * x0 + np.sqrt(1 - a_p - sigma**2) * d(eps) + sigma * d(z)
    noise = z if eta > 0 and t_prev >= 0 else None
    got = ddim_step(s, x, t, t_prev, eps, eta=eta, noise=noise)
    np.testing.assert_allclose(d(got), want, rtol=1e-5, atol=3e-5)


@pytest.mark.parametrize("t", [1, 10, 500, 999])
def test_ddim_eta1_single_step_is_ddpm_posterior_step(t):
    """Song et al. section 4.1: eta = 1, t_prev = t - 1 is the DDPM step (eq. 11 + beta tilde)."""
    s = NoiseSchedule.linear(T)
    x, eps, z = randn(4, 8, seed=16), randn(4, 8, seed=17), randn(4, 8, seed=18)
    want = eq11_mean(x, eps, t) + np.sqrt(np_tables()[4][t]) * d(z)
    got = ddim_step(s, x, t, t - 1, eps, eta=1.0, noise=z)
    np.testing.assert_allclose(d(got), want, rtol=1e-5, atol=3e-5)


def test_ddim_step_bad_input():
    s = NoiseSchedule.linear(10)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="needs noise"):
        ddim_step(s, x, 5, 2, x, eta=0.5)
    ddim_step(s, x, 5, -1, x, eta=1.0)  # sigma = 0 at the last step: no noise needed
    with pytest.raises(ValueError, match=r"t_prev must lie in .*\[-1, 4\], got 5"):
        ddim_step(s, x, 5, 5, x)
    with pytest.raises(ValueError, match="eta must be a number in \\[0, 1\\], got 1.5"):
        ddim_step(s, x, 5, 2, x, eta=1.5)


def test_ddim_timesteps():
    assert ddim_timesteps(1000, 50) == list(range(980, -1, -20))
    assert ddim_timesteps(T, T) == list(range(T - 1, -1, -1))
    assert ddim_timesteps(10, 3) == [6, 3, 0]  # floor(i * 10 / 3)
    assert ddim_timesteps(7, 1) == [0]
    for bad in (0, T + 1, -3):
        with pytest.raises(ValueError, match=rf"steps must lie in \[1, {T}\].*got {bad}"):
            ddim_timesteps(T, bad)
    with pytest.raises(ValueError, match="steps must be an int"):
        ddim_timesteps(T, 5.0)


# -- samplers, end to end ---------------------------------------------------------------------


@pytest.mark.parametrize("variance", ["posterior", "beta"])
def test_ddpm_sample_with_optimal_eps_reproduces_gaussian_data(variance):
    """Algorithm 2 with the exact eps predictor of N(m, s^2) data must return N(m, s^2).

    At T = 1000 the Gaussian reverse steps are accurate to < 1% in std for this data (an exact
    variance recursion gives 0.4961 for beta tilde, 0.5008 for beta, for s = 0.5).
    """
    m, sd = 0.3, 0.5
    abar = np_tables()[2]
    model = GaussianOracle(abar, m, sd)
    g = torch.Generator().manual_seed(0)
    x = ddpm_sample(model, NoiseSchedule.linear(T), (4096, 1, 4, 4), generator=g, variance=variance)
    assert len(model.seen) == T
    assert [int(t[0]) for _, _, t in model.seen] == list(range(T - 1, -1, -1))
    assert x.mean().item() == pytest.approx(m, abs=0.01)
    assert x.std().item() == pytest.approx(sd, rel=0.02)


@pytest.mark.parametrize("steps", [50, 7, 1])
def test_ddim_eta0_follows_the_true_noise_back_to_x0(steps):
    """With eps fixed to the noise that made x_T from x0, DDIM eta=0 lands on x0 (eq. 12)."""
    shape = (3, 1, 4, 4)
    abar = np_tables()[2]
    x0 = 2 * torch.rand(shape, generator=torch.Generator().manual_seed(1)) - 1
    # The sampler treats its first draw as x at ts[0]; solve eq. 4 for the noise that gives it.
    x_T = randn(*shape, seed=2)
    a = abar[ddim_timesteps(T, steps)[0]]
    noise = torch.from_numpy((d(x_T) - np.sqrt(a) * d(x0)) / np.sqrt(1 - a)).float()
    g = torch.Generator().manual_seed(2)
    x = ddim_sample(FixedEps(noise), NoiseSchedule.linear(T), shape, steps=steps, generator=g)
    torch.testing.assert_close(x, x0, rtol=0, atol=1e-4)


def test_ddim_eta0_is_deterministic_and_draws_only_x_T():
    shape = (2, 1, 8, 8)
    model, s = Toy(), NoiseSchedule.linear(T)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = ddim_sample(model, s, shape, steps=10, generator=g1)
    b = ddim_sample(model, s, shape, steps=10, generator=g2)
    assert torch.equal(a, b)
    ref = torch.Generator().manual_seed(5)
    torch.randn(shape, generator=ref)
    assert torch.equal(g1.get_state(), ref.get_state())  # x_T was the only draw
    c = ddim_sample(model, s, shape, steps=10, eta=1.0, generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(a, c)  # eta > 0 does draw noise


def test_ddpm_sample_trajectory():
    s = NoiseSchedule.linear(10, 1e-3, 0.2)
    model = GaussianOracle(np_tables(10, 1e-3, 0.2)[2], 0.0, 0.5)
    x, traj = ddpm_sample(
        model, s, (2, 1, 3, 3), generator=torch.Generator().manual_seed(0), return_x0_every=3
    )
    assert [t for t, _ in traj] == [7, 4, 1, 0]  # steps 3, 6, 9 and the last (10)
    assert all(x0.shape == (2, 1, 3, 3) for _, x0 in traj)
    # At t = 0 the posterior mean is x0_hat itself (coef1 = 1, coef2 = 0) and no noise is added.
    torch.testing.assert_close(traj[-1][1], x)
    _, traj = ddpm_sample(model, s, (1, 1), return_x0_every=1)
    assert [t for t, _ in traj] == list(range(9, -1, -1))
    _, traj = ddpm_sample(model, s, (1, 1), return_x0_every=50)
    assert [t for t, _ in traj] == [0]
    with pytest.raises(ValueError, match="return_x0_every must be >= 1"):
        ddpm_sample(model, s, (1, 1), return_x0_every=0)
    with pytest.raises(ValueError, match="variance must be one of"):
        ddpm_sample(model, s, (1, 1), variance="fixedlarge")
    assert len(model.seen) == 10 + 10 + 10  # the bad calls never reached the model


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_sampling_mode_inference_and_restored_training(sampler):
    s = NoiseSchedule.linear(20)
    model = Toy().train()
    run = (
        (lambda **kw: ddpm_sample(model, s, (2, 1, 4, 4), **kw))
        if sampler == "ddpm"
        else (lambda **kw: ddim_sample(model, s, (2, 1, 4, 4), steps=5, **kw))
    )
    x = run(generator=torch.Generator().manual_seed(0))  # outside no_grad on purpose
    assert model.training and model.drop.training
    assert all(seen == (False, True) for seen in model.seen)  # eval + inference mode inside
    assert not x.requires_grad and x.grad_fn is None
    assert not x.is_inference()  # a normal tensor the caller may modify in place
    x.add_(1)
    model.eval()
    run()
    assert not model.training

    def boom(x, t):
        raise RuntimeError("boom")

    model.train()
    model.forward = boom
    with pytest.raises(RuntimeError, match="boom"):
        run()
    assert model.training and model.drop.training


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_sampling_with_ema_weights(sampler):
    s = NoiseSchedule.linear(20)
    model = Toy()
    ema = EMA(model)
    with torch.no_grad():
        for p in ema.params:
            p.add_(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def run(m, **kw):
        g = torch.Generator().manual_seed(3)
        if sampler == "ddpm":
            return ddpm_sample(m, s, (2, 1, 4, 4), generator=g, **kw)
        return ddim_sample(m, s, (2, 1, 4, 4), steps=5, generator=g, **kw)

    with_ema, raw = run(model, ema=ema), run(model)
    assert not torch.allclose(with_ema, raw)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for p, e in zip(copied.parameters(), ema.params, strict=True):
            p.copy_(e)
    assert torch.equal(with_ema, run(copied))


def test_progress_and_profiler_ranges():
    s = NoiseSchedule.linear(12)
    model = GaussianOracle(np_tables(12)[2], 0.0, 1.0)
    calls = []
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        ddim_sample(model, s, (2, 3), steps=4, progress=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert sum(e.name == "denoise_step" for e in prof.events()) == 4
    calls.clear()
    ddpm_sample(model, s, (2, 3), progress=lambda i, n: calls.append((i, n)))
    assert calls == [(i, 12) for i in range(1, 13)]


def test_tiny_unet_shapes():
    model = UNet(PRESETS["tiny"])
    s = NoiseSchedule.linear(T)
    g = torch.Generator().manual_seed(0)
    x = ddim_sample(model, s, (2, 1, 16, 16), steps=3, generator=g)
    assert x.shape == (2, 1, 16, 16) and x.dtype == torch.float32
    assert torch.isfinite(x).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_same_samples_on_cuda():
    s = NoiseSchedule.linear(50)
    model = GaussianOracle(np_tables(50)[2], 0.0, 0.5)
    cpu = ddpm_sample(model, s, (4, 8), generator=torch.Generator().manual_seed(0))
    model.abar = model.abar.cuda()
    gpu = ddpm_sample(model, s, (4, 8), generator=torch.Generator().manual_seed(0), device="cuda")
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)


def test_ddim_clip_x0_clamps_and_rederives_eps():
    """Clipped DDIM step = eq. 12 with x0_hat clamped and eps recomputed from it (independent
    float64 computation)."""
    s = NoiseSchedule.linear(100)
    g = torch.Generator().manual_seed(0)
    x_t = 3 * torch.randn(4, 1, 4, 4, generator=g)
    eps = torch.randn(4, 1, 4, 4, generator=g)
    t, t_prev = 60, 40
    out = ddim_step(s, x_t, t, t_prev, eps, clip_x0=True)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 100, dtype=torch.float64), 0)
    x64, e64 = x_t.double(), eps.double()
    x0 = ((x64 - (1 - abar[t]).sqrt() * e64) / abar[t].sqrt()).clamp(-1, 1)
    e_clip = (x64 - abar[t].sqrt() * x0) / (1 - abar[t]).sqrt()
    expected = abar[t_prev].sqrt() * x0 + (1 - abar[t_prev]).sqrt() * e_clip
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    assert x0.abs().max() == 1  # the clamp was active in this case
    assert not torch.allclose(out, ddim_step(s, x_t, t, t_prev, eps))


# -- sampler objects and the one loop ----------------------------------------------------------

# A tiny schedule whose tables are easy to follow by hand: T = 4.
TINY_BETAS = np.array([0.1, 0.2, 0.3, 0.4])


def tiny_tables():
    """beta, alpha, abar and abar_{t-1} (abar_{-1} = 1) of TINY_BETAS, float64 (eq. 4)."""
    beta = TINY_BETAS
    alpha = 1 - beta
    abar = np.cumprod(alpha)
    return beta, alpha, abar, np.concatenate([[1.0], abar[:-1]])


def by_hand_ddpm(x, eps, z, t, variance):
    """Algorithm 2, line 4: 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps) + sigma_t z,
    sigma_t^2 = beta_t or beta tilde_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t; no z at t = 0.
    Also x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (eq. 15)."""
    beta, alpha, abar, abar_prev = tiny_tables()
    mean = (x - beta[t] / np.sqrt(1 - abar[t]) * eps) / np.sqrt(alpha[t])
    var = beta[t] if variance == "beta" else (1 - abar_prev[t]) / (1 - abar[t]) * beta[t]
    x_prev = mean + np.sqrt(var) * z if t > 0 else mean
    return x_prev, (x - np.sqrt(1 - abar[t]) * eps) / np.sqrt(abar[t])


def by_hand_ddim(x, eps, z, t, t_prev, eta):
    """DDIM eq. 12 with sigma from DDIM eq. 16; abar at t_prev = -1 is 1."""
    abar = tiny_tables()[2]
    a_t, a_p = abar[t], (abar[t_prev] if t_prev >= 0 else 1.0)
    sigma = eta * np.sqrt((1 - a_p) / (1 - a_t)) * np.sqrt(1 - a_t / a_p)
    x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
    x_prev = np.sqrt(a_p) * x0 + np.sqrt(1 - a_p - sigma**2) * eps
    return (x_prev + sigma * z if sigma > 0 else x_prev), x0


def test_sampler_timesteps_and_noise():
    s = NoiseSchedule(torch.tensor(TINY_BETAS))
    ddpm = DDPMSampler(s)
    assert ddpm.timesteps == [3, 2, 1, 0]
    assert [ddpm.needs_noise(t) for t in ddpm.timesteps] == [True, True, True, False]
    # floor(i * 4 / 2) for i = 1, 0: DDIM jumps 2 -> 0 -> done.
    ddim = DDIMSampler(s, 2, eta=0.5)
    assert ddim.timesteps == [2, 0]
    assert [ddim.needs_noise(t) for t in ddim.timesteps] == [True, False]  # sigma = 0 at the end
    assert not any(DDIMSampler(s, 4).needs_noise(t) for t in range(4))  # eta = 0: no noise
    with pytest.raises(ValueError, match="variance must be one of"):
        DDPMSampler(s, variance="large")
    with pytest.raises(ValueError, match="eta must be a number in"):
        DDIMSampler(s, 2, eta=2.0)
    with pytest.raises(ValueError, match=r"steps must lie in \[1, 4\]"):
        DDIMSampler(s, 5)


@pytest.mark.parametrize("variance", ["posterior", "beta"])
def test_ddpm_sampler_step_is_algorithm_2_by_hand(variance):
    s = NoiseSchedule(torch.tensor(TINY_BETAS))
    sampler = DDPMSampler(s, variance=variance)
    x, eps, z = randn(2, 5, seed=20), randn(2, 5, seed=21), randn(2, 5, seed=22)
    for t in sampler.timesteps:
        x_prev, x0_hat = sampler.step(eps, t, x, z if sampler.needs_noise(t) else None)
        want_prev, want_x0 = by_hand_ddpm(d(x), d(eps), d(z), t, variance)
        np.testing.assert_allclose(d(x_prev), want_prev, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(d(x0_hat), want_x0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_sampler_step_is_eq_12_by_hand(eta):
    s = NoiseSchedule(torch.tensor(TINY_BETAS))
    sampler = DDIMSampler(s, 2, eta=eta)
    x, eps, z = randn(2, 5, seed=23), randn(2, 5, seed=24), randn(2, 5, seed=25)
    for t, t_prev in ((2, 0), (0, -1)):
        x_prev, x0_hat = sampler.step(eps, t, x, z if sampler.needs_noise(t) else None)
        want_prev, want_x0 = by_hand_ddim(d(x), d(eps), d(z), t, t_prev, eta)
        np.testing.assert_allclose(d(x_prev), want_prev, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(d(x0_hat), want_x0, rtol=1e-5, atol=1e-5)


def test_clipped_samplers_clamp_x0_hat():
    """clip_x0: x0_hat clamped to [-1, 1]; DDPM's mean is then eq. 7 at the clamped x0_hat."""
    s = NoiseSchedule(torch.tensor(TINY_BETAS))
    beta, alpha, abar, abar_prev = tiny_tables()
    x, eps, z = 3 * randn(2, 5, seed=26), randn(2, 5, seed=27), randn(2, 5, seed=28)
    t = 2
    x0 = np.clip((d(x) - np.sqrt(1 - abar[t]) * d(eps)) / np.sqrt(abar[t]), -1, 1)
    assert (np.abs(x0) == 1).any() and (np.abs(x0) < 1).any()  # the clamp does something
    mean = (
        np.sqrt(abar_prev[t]) * beta[t] * x0 + np.sqrt(alpha[t]) * (1 - abar_prev[t]) * d(x)
    ) / (1 - abar[t])
    sigma = np.sqrt((1 - abar_prev[t]) / (1 - abar[t]) * beta[t])
    x_prev, x0_hat = DDPMSampler(s, clip_x0=True).step(eps, t, x, z)
    np.testing.assert_allclose(d(x0_hat), x0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d(x_prev), mean + sigma * d(z), rtol=1e-5, atol=1e-5)
    _, x0_hat = DDIMSampler(s, 2, clip_x0=True).step(eps, t, x)
    np.testing.assert_allclose(d(x0_hat), x0, rtol=1e-5, atol=1e-6)


class Wobble(nn.Module):
    """eps = 0.5 tanh(x) + t / 100: depends on x and t, so a wrong x or t shows."""

    def forward(self, x, t):
        return 0.5 * torch.tanh(x) + t.float().view(-1, 1) / 100


@pytest.mark.parametrize(
    "make, by_hand",
    [
        (lambda s: DDPMSampler(s), lambda x, e, z, t, i: by_hand_ddpm(x, e, z, t, "posterior")),
        (
            lambda s: DDPMSampler(s, variance="beta"),
            lambda x, e, z, t, i: by_hand_ddpm(x, e, z, t, "beta"),
        ),
        (
            lambda s: DDIMSampler(s, 2, eta=0.5),
            lambda x, e, z, t, i: by_hand_ddim(x, e, z, t, [0, -1][i], 0.5),
        ),
        (
            lambda s: DDIMSampler(s, 3),
            lambda x, e, z, t, i: by_hand_ddim(x, e, z, t, [1, 0, -1][i], 0),
        ),
    ],
)
def test_sample_progressive_is_the_loop_by_hand(make, by_hand):
    """x_T, then one z per step that needs one, drawn in order from the generator; each step's
    model call at its t; each yield the step's (i, t, x_prev, x0_hat)."""
    s = NoiseSchedule(torch.tensor(TINY_BETAS))
    sampler, shape = make(s), (3, 4)
    steps = list(
        sample_progressive(Wobble(), sampler, shape, generator=torch.Generator().manual_seed(9))
    )
    g = torch.Generator().manual_seed(9)
    x = d(torch.randn(shape, generator=g))
    assert [(i, t) for i, t, _, _ in steps] == list(enumerate(sampler.timesteps))
    for i, t, x_prev, x0_hat in steps:
        eps = 0.5 * np.tanh(x) + t / 100
        z = d(torch.randn(shape, generator=g)) if sampler.needs_noise(t) else np.nan
        want_prev, want_x0 = by_hand(x, eps, z, t, i)
        np.testing.assert_allclose(d(x0_hat), want_x0, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(d(x_prev), want_prev, rtol=1e-5, atol=1e-5)
        x = want_prev


def test_sample_progressive_restores_the_model_when_closed_early():
    """Stopped after one step: eval mode and the EMA weights last until the run is closed, then
    the model's mode and weights come back; between steps inference mode is off."""
    s = NoiseSchedule.linear(20)
    model = Toy().train()
    ema = EMA(model)
    with torch.no_grad():
        for p in ema.params:
            p.add_(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run = sample_progressive(model, DDPMSampler(s), (2, 1, 4, 4), ema=ema)
    next(run)
    assert not model.training and not torch.is_inference_mode_enabled()
    assert torch.equal(model.conv.weight, ema.params[0])
    run.close()
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("sampler", ["ddpm", "ddpm_strip", "ddim"])
def test_an_error_between_steps_restores_the_model_at_once(sampler):
    """Ctrl-C (here an error) in a progress callback, while the loop waits between steps: the
    model's mode and weights are back before the caller handles it, not at garbage collection
    (the traceback keeps the suspended run alive)."""
    s = NoiseSchedule.linear(8)
    model = Toy().train()
    ema = EMA(model)
    with torch.no_grad():
        for p in ema.params:
            p.add_(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def progress(done, total):
        if done == 2:
            raise KeyboardInterrupt

    run = {
        "ddpm": lambda: ddpm_sample(model, s, (2, 1, 4, 4), ema=ema, progress=progress),
        "ddpm_strip": lambda: ddpm_sample(
            model, s, (2, 1, 4, 4), ema=ema, progress=progress, return_x0_every=2
        ),
        "ddim": lambda: ddim_sample(model, s, (2, 1, 4, 4), steps=4, ema=ema, progress=progress),
    }[sampler]
    try:
        run()
    except KeyboardInterrupt:
        assert model.training
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]), k
    else:
        pytest.fail("the interrupt was lost")


def test_the_samplers_run_the_one_loop(monkeypatch):
    calls = spy_on(monkeypatch, ddpm.sample.sample_progressive)
    s = NoiseSchedule.linear(6)
    model = GaussianOracle(np_tables(6)[2], 0.0, 0.5)
    ddpm_sample(model, s, (2, 3), variance="beta", clip_x0=True)
    ddpm_sample(model, s, (2, 3), return_x0_every=2)
    ddim_sample(model, s, (2, 3), steps=4, eta=0.5)
    kinds = [(type(c.args[1]).__name__, len(c.yielded)) for c in calls]
    assert kinds == [("DDPMSampler", 6), ("DDPMSampler", 6), ("DDIMSampler", 4)]
    first, last = calls[0].args[1], calls[2].args[1]
    assert (first.variance, first.clip_x0) == ("beta", True)
    assert (last.steps, last.eta, last.clip_x0) == (4, 0.5, False)
    assert len(model.seen) == 6 + 6 + 4  # no model call outside the loop
