"""NoiseSchedule against closed forms computed here, independently, in float64 numpy."""

import math

import numpy as np
import pytest
import torch

from ddpm.schedule import NoiseSchedule

T = 1000


def np_linear_betas(T, start=1e-4, end=0.02):
    return np.linspace(start, end, T, dtype=np.float64)


def f_cos(t, T, s=0.008):
    return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2


def test_linear_tables():
    s = NoiseSchedule.linear(T)
    assert len(s) == s.timesteps == T
    # prod(1 - beta) over the Ho et al. linear schedule, a known figure.
    assert s.alphas_cumprod[-1].item() == pytest.approx(4.036e-05, rel=1e-3)
    assert s.betas[0] == torch.tensor(1e-4, dtype=torch.float32)
    assert s.betas[-1] == torch.tensor(0.02, dtype=torch.float32)
    expected = np.cumprod(1 - np_linear_betas(T))
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), expected, rtol=1e-5)


def equations(betas: np.ndarray) -> dict[str, np.ndarray]:
    """Every table of the forward process and its posterior, from the betas alone (Ho et al.
    2020: eq. 4's alpha-bar, eq. 6-7's posterior mean coefficients and variance, its log clipped
    at t = 0 to the value at t = 1, as their code does), in float64."""
    abar = np.cumprod(1 - betas)
    prev = np.concatenate([[1.0], abar[:-1]])
    variance = betas * (1 - prev) / (1 - abar)
    return {
        "betas": betas,
        "alphas": 1 - betas,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": np.sqrt(abar),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - abar),
        "sqrt_recip_alphas_cumprod": np.sqrt(1 / abar),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1 / abar - 1),
        "posterior_variance": variance,
        "posterior_log_variance_clipped": np.log(np.concatenate([[variance[1]], variance[1:]])),
        "posterior_mean_coef1": betas * np.sqrt(prev) / (1 - abar),
        "posterior_mean_coef2": (1 - prev) * np.sqrt(1 - betas) / (1 - abar),
    }


def tables(schedule: NoiseSchedule) -> dict[str, torch.Tensor]:
    """The (T,) tables the schedule holds, found on it rather than listed."""
    return {
        name: value
        for name, value in vars(schedule).items()
        if isinstance(value, torch.Tensor) and not name.startswith("_")
    }


@pytest.mark.parametrize(
    "schedule, betas",
    [
        (NoiseSchedule.linear(T), np_linear_betas(T)),
        (NoiseSchedule.cosine(T), None),  # the cosine betas: test_cosine_matches_f_ratio_and_clips
    ],
)
def test_every_table_is_its_equation_in_float32(schedule, betas):
    betas = schedule._betas64.numpy() if betas is None else betas
    expected = equations(betas)
    held = tables(schedule)
    assert set(held) == set(expected), "a table without its equation, or one missing"
    for name, table in held.items():
        assert table.dtype == torch.float32 and table.shape == (T,), name
        assert table.device.type == "cpu", name
        np.testing.assert_allclose(table.numpy(), expected[name], rtol=2e-6, err_msg=name)


def test_cosine_matches_f_ratio_and_clips():
    max_beta = 0.999
    s = NoiseSchedule.cosine(T, s=0.008, max_beta=max_beta)
    f0 = f_cos(0, T)
    raw = np.array([1 - f_cos(t + 1, T) / f_cos(t, T) for t in range(T)])
    clipped = raw > max_beta
    assert clipped[-1], "the last cosine beta should hit the clip at T=1000"
    assert s.betas[-1].item() == pytest.approx(max_beta, rel=1e-6)
    assert (s.betas <= max_beta + 1e-7).all()
    # Before the first clipped step, abar_t = f(t+1)/f(0) exactly (the product telescopes).
    n = int(np.argmax(clipped))
    expected = np.array([f_cos(t + 1, T) / f0 for t in range(n)])
    np.testing.assert_allclose(s.alphas_cumprod[:n].numpy(), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(s.betas[:n].numpy(), raw[:n], rtol=1e-5)


@pytest.mark.parametrize("schedule", [NoiseSchedule.linear(T), NoiseSchedule.cosine(T)])
def test_posterior_variance_closed_form(schedule):
    b = schedule._betas64.numpy()
    abar = np.cumprod(1 - b)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    expected = b * (1 - abar_prev) / (1 - abar)
    assert schedule.posterior_variance[0] == 0
    np.testing.assert_allclose(schedule.posterior_variance.numpy(), expected, rtol=1e-5, atol=1e-12)
    log_clipped = np.log(np.concatenate([[expected[1]], expected[1:]]))
    np.testing.assert_allclose(
        schedule.posterior_log_variance_clipped.numpy(), log_clipped, rtol=1e-5
    )


@pytest.mark.parametrize("t", [1, 10, 500, T - 1])
def test_posterior_mean_is_eps_form(t):
    s = NoiseSchedule.linear(T)
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    x0 = s.predict_x0(x_t, t, eps)
    mean = s.posterior_mean(x0, x_t, t)
    # Ho et al. eq. 11, from the float64 betas alone.
    b = np.linspace(1e-4, 0.02, T)
    abar = np.prod(1 - b[: t + 1])
    expected = (x_t - b[t] / math.sqrt(1 - abar) * eps) / math.sqrt(1 - b[t])
    # float32 tables: x0 carries error ~1e-7 * 1/sqrt(abar), scaled down by coef1 in the mean.
    torch.testing.assert_close(mean, expected, rtol=1e-5, atol=1e-5)
    m2, var, log_var = s.posterior_mean_variance(x0, x_t, t)
    assert torch.equal(m2, mean)
    assert var.item() == pytest.approx(b[t] * (1 - abar / (1 - b[t])) / (1 - abar), rel=1e-5)
    assert log_var.item() == pytest.approx(math.log(var.item()), rel=1e-5)


@pytest.mark.parametrize("t", [0, 300, T - 1])
def test_q_sample_moments(t):
    s = NoiseSchedule.linear(T)
    n, x0_value = 200_000, 0.7
    g = torch.Generator().manual_seed(1234)
    noise = torch.randn(n, generator=g)
    x0 = torch.full((n,), x0_value)
    x_t = s.q_sample(x0, t, noise).double()
    abar = np.prod(1 - np_linear_betas(T)[: t + 1])
    var = 1 - abar
    # Standard errors: of the mean sqrt(var/n), of the variance var*sqrt(2/(n-1)) (Gaussian).
    assert abs(x_t.mean().item() - math.sqrt(abar) * x0_value) < 5 * math.sqrt(var / n)
    assert abs(x_t.var().item() - var) < 5 * var * math.sqrt(2 / (n - 1))


@pytest.mark.parametrize("t", [0, 1, 500, T - 1])
def test_predict_x0_inverts_q_sample(t):
    s = NoiseSchedule.linear(T)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(8, 3, 16, 16, generator=g) * 2 - 1
    eps = torch.randn(8, 3, 16, 16, generator=g)
    x_t = s.q_sample(x0, t, eps)
    # Round-off in x_t (~1e-7 * |x_t|) is amplified by 1/sqrt(abar_t) (~157 at T-1).
    amp = s.sqrt_recip_alphas_cumprod[t].item()
    torch.testing.assert_close(s.predict_x0(x_t, t, eps), x0, rtol=0, atol=1e-5 * amp)


def test_dtype_follows_input():
    s = NoiseSchedule.linear(10)
    x = torch.randn(2, 3, dtype=torch.bfloat16)
    assert s.q_sample(x, 3, torch.randn_like(x)).dtype == torch.bfloat16
    assert s.predict_x0(x, 3, x).dtype == torch.bfloat16


def test_per_sample_t_broadcasts():
    s = NoiseSchedule.linear(T)
    t = torch.tensor([0, 10, 999])
    x0 = torch.ones(3, 2, 4, 4)
    noise = torch.zeros_like(x0)
    out = s.q_sample(x0, t, noise)
    for i, ti in enumerate(t.tolist()):
        assert torch.allclose(out[i], torch.full((2, 4, 4), s.sqrt_alphas_cumprod[ti].item()))
    assert s.extract(s.betas, t, 4).shape == (3, 1, 1, 1)
    assert s.extract(s.betas, t, 2).shape == (3, 1)
    assert s.extract(s.betas, 5, 4).shape == ()


def test_to_device():
    s = NoiseSchedule.linear(10)
    assert s.to("cpu") is s
    assert s.to(torch.device("cpu")) is s
    m = s.to("meta")
    assert m is not s and m.device.type == "meta"
    assert set(tables(m)) == set(equations(np_linear_betas(10)))  # every table, moved
    assert all(table.device.type == "meta" for table in tables(m).values())
    assert all(table.device.type == "cpu" for table in tables(s).values())  # the original stays


def test_t_on_other_device_raises():
    s = NoiseSchedule.linear(10)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"schedule\.to\(device\)"):
        s.q_sample(x, torch.zeros(2, dtype=torch.long, device="meta"), x)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: NoiseSchedule.linear(0), "timesteps.*0"),
        (lambda: NoiseSchedule.linear(2.5), "timesteps.*2.5"),
        (lambda: NoiseSchedule.cosine(-3), "timesteps.*-3"),
        (lambda: NoiseSchedule.linear(10, beta_start=0.0), "beta_start=0.0"),
        (lambda: NoiseSchedule.linear(10, beta_start=0.1, beta_end=0.01), "beta_start=0.1"),
        (lambda: NoiseSchedule.linear(10, beta_end=1.0), "beta_end=1.0"),
        (lambda: NoiseSchedule.cosine(10, s=-0.1), "s=-0.1"),
        (lambda: NoiseSchedule.cosine(10, max_beta=1.0), "max_beta=1.0"),
        (lambda: NoiseSchedule.cosine(10, max_beta=0.0), "max_beta=0.0"),
        (lambda: NoiseSchedule(torch.tensor([0.1, 1.0])), "max 1"),
        (lambda: NoiseSchedule(torch.tensor([0.0, 0.1])), "min 0"),
        (lambda: NoiseSchedule(torch.zeros(2, 2) + 0.1), r"shape \(2, 2\)"),
        (lambda: NoiseSchedule.linear(10).extract(torch.zeros(10), 10, 4), "got 10"),
        (lambda: NoiseSchedule.linear(10).extract(torch.zeros(10), 2.0, 4), "float"),
        (lambda: NoiseSchedule.linear(10).extract(torch.zeros(10), torch.ones(2), 4), "float32"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_single_step_schedule_is_finite():
    s = NoiseSchedule.linear(1, beta_start=0.01, beta_end=0.01)
    assert torch.isfinite(s.posterior_log_variance_clipped).all()
    assert s.alphas_cumprod_prev.tolist() == [1.0]
