"""L_simple (Ho et al. 2020, eq. 14) against an MSE computed here by hand, its held-out estimate,
and that training, `python -m ddpm.cli.train`'s held-out loss and bench.loss all run the one
function."""

import numpy as np
import pytest
import torch
from torch import nn

import ddpm.objective
from ddpm.config import PRESETS, TrainConfig
from ddpm.objective import held_out_draws, held_out_loss, l_simple
from ddpm.schedule import NoiseSchedule
from ddpm.unet import UNet
from tests.helpers.spies import spy_on

BETAS = np.array([0.1, 0.2, 0.3, 0.4])


class Affine(nn.Module):
    """eps_theta(x_t, t) = w x_t + b_t: an output computed by hand below; dropout to show the
    held-out loss runs in eval mode."""

    def __init__(self, out_dtype=torch.float32):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.7))
        self.b = nn.Parameter(torch.tensor([0.05, -0.1, 0.2, 0.3]))
        self.drop = nn.Dropout(0.5)
        self.out_dtype = out_dtype

    def forward(self, x, t):
        out = self.drop(self.w * x + self.b[t].view(-1, *[1] * (x.ndim - 1)))
        return out.to(self.out_dtype)


def by_hand(x0, t, noise, out_dtype=torch.float32):
    """mean((w x_t + b_t - eps)^2), x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (eq. 4), float64;
    the prediction rounded to out_dtype as the model returns it."""
    abar = np.cumprod(1 - BETAS)[t.numpy()].reshape(-1, *[1] * (x0.ndim - 1))
    x0, noise = x0.double().numpy(), noise.double().numpy()
    x_t = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * noise
    b = np.array([0.05, -0.1, 0.2, 0.3])[t.numpy()].reshape(abar.shape)
    predicted = torch.from_numpy(0.7 * x_t + b).to(out_dtype).double().numpy()
    return float(np.mean((predicted - noise) ** 2))


def draws(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(n, 2, 3, 3, generator=g) * 2 - 1
    return x0, torch.randint(0, 4, (n,), generator=g), torch.randn(n, 2, 3, 3, generator=g)


def test_l_simple_is_the_mse_of_eq_14():
    schedule = NoiseSchedule(torch.tensor(BETAS))
    x0, t, noise = draws(5)
    model = Affine().eval()
    loss = l_simple(model, schedule, x0, t, noise)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert float(loss.detach()) == pytest.approx(by_hand(x0, t, noise), rel=1e-6)


def test_l_simple_is_fp32_whatever_the_model_returns():
    schedule = NoiseSchedule(torch.tensor(BETAS))
    x0, t, noise = draws(5, seed=1)
    model = Affine(out_dtype=torch.bfloat16).eval()
    loss = l_simple(model, schedule, x0, t, noise, precision="bf16")
    assert loss.dtype == torch.float32
    # The error of the bf16 prediction, squared and averaged in fp32 (not in bf16, whose 8 bits
    # would be off by far more than this tolerance).
    assert float(loss.detach()) == pytest.approx(by_hand(x0, t, noise, torch.bfloat16), rel=1e-5)


def test_held_out_loss_is_the_mean_over_every_image_in_eval_mode():
    """Batches of 3 and 1 images: the mean over all 4 (not the mean of the two batch means),
    with dropout off, and the model back in training mode afterwards."""
    schedule = NoiseSchedule(torch.tensor(BETAS))
    x0, t, noise = draws(4, seed=2)
    model = Affine().train()
    batches = [(x0[:3], t[:3], noise[:3]), (x0[3:], t[3:], noise[3:])]
    assert held_out_loss(model, schedule, batches) == pytest.approx(by_hand(x0, t, noise), rel=1e-6)
    assert model.training


def test_held_out_draws_are_stratified_and_seeded():
    images = torch.zeros(5, 1, 2, 2)
    t, noise = held_out_draws(images, 10, seed=3)
    assert t.tolist() == [0, 2, 4, 6, 8]  # floor(i T / n)
    assert torch.equal(noise, torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(3)))
    t2, noise2 = held_out_draws(images, 10, seed=3)
    assert torch.equal(t, t2) and torch.equal(noise, noise2)


def test_training_and_both_held_out_losses_run_the_one_l_simple(monkeypatch):
    from bench.passes import loss as loss_pass
    from ddpm.cli.train import HeldOutLoss
    from ddpm.train import Trainer

    calls = spy_on(monkeypatch, ddpm.objective.l_simple)
    schedule = NoiseSchedule.linear(20)
    torch.manual_seed(0)
    trainer = Trainer(
        UNet(PRESETS["tiny"]), schedule, TrainConfig(batch_size=2, accum_steps=3, precision="bf16")
    )
    images = torch.rand(6, 1, 16, 16) * 2 - 1

    trainer.step(images)
    assert [c.args[2].shape[0] for c in calls] == [2, 2, 2]  # one call per micro-batch
    assert all(c.args[0] is trainer.model and c.args[5] == "bf16" for c in calls)

    calls.clear()
    HeldOutLoss(trainer, images[:5], seed=0)()
    # Micro-batches of the training size, at the training precision.
    assert [(c.args[2].shape[0], c.args[5]) for c in calls] == [
        (2, "bf16"),
        (2, "bf16"),
        (1, "bf16"),
    ]

    calls.clear()
    t, noise = loss_pass.validation_draws(images, schedule.timesteps, seed=0)
    loss_pass.validation_loss(trainer.model, schedule, images, t, noise, torch.device("cpu"))
    # One chunk of at most VAL_CHUNK images, in fp32 whatever the training precision.
    assert [(c.args[2].shape[0], c.args[5]) for c in calls] == [(6, "fp32")]
