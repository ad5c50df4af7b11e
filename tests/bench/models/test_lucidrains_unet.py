"""--impl lucidrains: denoising-diffusion-pytorch's Unet, trained by its GaussianDiffusion's loss on
our Trainer's seeded draws, sampled through its v -> eps conversion, predicted on fake tensors."""

from __future__ import annotations

import json

import pytest
import torch

from bench.models.impl import build_unet, problem
from bench.models.lucidrains_unet import LucidrainsUNet, installed, lucidrains_loss
from bench.models.workload import build_trainer, parameter_count, synthetic_images
from bench.predict.trace import predict
from bench.spec import BenchSpec
from ddpm.schedule import NoiseSchedule

pytestmark = pytest.mark.skipif(not installed(), reason="denoising-diffusion-pytorch missing")


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "unet.json"
    path.write_text(json.dumps({"dim": 8, "dim_mults": [1, 2]}))
    return str(path)


def tiny_spec(path: str, **changes) -> BenchSpec:
    return BenchSpec(
        preset="ddpm-cifar10",
        image_size=16,
        attention="none",
        batch=2,
        impl="lucidrains",
        model_config=path,
        **changes,
    )


def test_the_default_unet_has_35_711_491_parameters():
    from denoising_diffusion_pytorch import Unet

    with torch.device("meta"):  # the library's class, built directly
        theirs = sum(p.numel() for p in Unet(dim=64, dim_mults=(1, 2, 4, 8)).parameters())
    assert theirs == 35_711_491
    assert parameter_count(BenchSpec(impl="lucidrains", image_size=128, attention="none")) == theirs


def test_the_trainer_minimises_gaussian_diffusions_own_loss(tiny_config):
    """The step's loss is GaussianDiffusion.forward's on the same t and noise, computed by the
    library on [0, 1] images it normalises itself: an independent route to the number."""
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet

    spec = tiny_spec(tiny_config)
    trainer = build_trainer(spec)
    images = synthetic_images(spec, 2).clamp(-1, 1)
    generator_state = trainer.generator.get_state()
    t, noise = trainer.draw(images)
    trainer.generator.set_state(generator_state)

    torch.manual_seed(spec.seed)  # the same initial weights as build_model
    diffusion = GaussianDiffusion(Unet(dim=8, dim_mults=(1, 2)), image_size=16)
    assert diffusion.objective == "pred_v"
    theirs = diffusion((images + 1) / 2, noise=noise, times=t)
    stats = trainer.step(images)
    assert float(stats.loss) == pytest.approx(theirs.item(), rel=1e-5)


def test_the_loss_weight_is_snr_over_snr_plus_one_for_pred_v(tiny_config):
    # Min-SNR off: pred_v's weight SNR / (SNR + 1), with SNR = abar / (1 - abar), is abar.
    model = LucidrainsUNet(tiny_spec(tiny_config).unet_config(), tiny_config)
    diffusion = model.diffusion
    abar = diffusion.alphas_cumprod.double()
    snr = abar / (1 - abar)
    assert torch.allclose(diffusion.loss_weight.double(), snr / (snr + 1), rtol=1e-5)
    assert torch.allclose(snr / (snr + 1), abar, rtol=1e-6)  # SNR/(SNR+1) is abar itself


def test_sampling_gets_eps_converted_from_v(tiny_config):
    """model(x_t, t) is eps: x_t = sqrt(abar) x0 + sqrt(1 - abar) eps with x0 from v."""
    model = LucidrainsUNet(tiny_spec(tiny_config).unet_config(), tiny_config).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    with torch.no_grad():
        v = model.diffusion.model(x, t)
        eps = model(x, t)
    d = model.diffusion
    a = d.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1)
    s = d.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1)
    x0 = a * x - s * v
    assert torch.allclose(eps, s * x + a * v, atol=1e-4)  # the v-parameterisation's identity
    assert torch.allclose(a * x0 + s * eps, x, atol=1e-4)


def test_the_objective_refuses_another_number_of_timesteps(tiny_config):
    model = LucidrainsUNet(tiny_spec(tiny_config).unet_config(), tiny_config)
    x = torch.zeros(1, 3, 16, 16)
    with pytest.raises(ValueError, match="over 20 steps; this GaussianDiffusion has 1000"):
        lucidrains_loss(model, NoiseSchedule.linear(20), x, torch.zeros(1).long(), x)


def test_the_memory_prediction_traces_it_on_fake_tensors(tiny_config):
    """Its einops rearranges and attention trace under CUDA's rules; the weights (with the
    schedule's buffers) are every tensor's bytes in 512-byte blocks, AdamW's two moments twice
    the parameters'."""
    spec = tiny_spec(tiny_config)
    tensors = predict(spec).tensors.by_category
    model = build_unet(spec)

    def blocks(ts):
        return sum(-(-t.numel() * t.element_size() // 512) * 512 for t in ts)

    assert tensors["parameters"] == blocks([*model.parameters(), *model.buffers()])
    assert tensors["optimizer_state"] >= 2 * blocks(model.parameters())
    assert tensors["activations"] > 0


def test_a_config_the_library_rejects_is_one_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("dim = 8\ndim_mult = [1, 2]\n")
    reason = problem(tiny_spec(str(path)))
    assert "--impl lucidrains rejects its arguments from --model-config" in reason
    assert "dim_mult" in reason and "\n" not in reason
    path.write_text("dim = 8\ndim_mults = [1, 2]\n[diffusion]\ntimesteps = 10\n")
    assert "diffusion.timesteps is set by bench" in problem(tiny_spec(str(path)))


def test_bench_loss_holds_out_with_the_same_loss(tiny_config):
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet

    from bench.passes.loss import validation_draws, validation_loss

    spec = tiny_spec(tiny_config)
    trainer = build_trainer(spec)
    images = synthetic_images(spec, 3).clamp(-1, 1)
    t, noise = validation_draws(images, trainer.schedule.timesteps, seed=0)
    ours = validation_loss(
        trainer.model, trainer.schedule, images, t, noise, torch.device("cpu"), trainer.objective
    )
    torch.manual_seed(spec.seed)
    diffusion = GaussianDiffusion(Unet(dim=8, dim_mults=(1, 2)), image_size=16)
    with torch.no_grad():
        theirs = diffusion((images + 1) / 2, noise=noise, times=t).item()
    assert ours == pytest.approx(theirs, rel=1e-5)


def test_bench_sampling_runs_its_steps(tiny_config, monkeypatch):
    """The sampler's loop calls the model for eps on the whole batch, once per timed step."""
    from bench.harnesses import sampling

    calls = []
    forward = LucidrainsUNet.forward
    monkeypatch.setattr(
        LucidrainsUNet, "forward", lambda self, *a: calls.append(a[0].shape) or forward(self, *a)
    )
    spec = tiny_spec(tiny_config, sampler="ddim", sampling_steps=2, measure_steps=2)
    assert sampling.measure(spec.replace(warmup_steps=0))["measured_steps"] == 2
    assert calls == [torch.Size([2, 3, 16, 16])] * 2
