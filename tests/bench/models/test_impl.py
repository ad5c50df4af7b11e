"""--impl: diffusers' UNet2DModel built to our architecture, its training recipe, the one-line
refusals, and the ddpm-vs-diffusers sentences (medians and ratios)."""

from __future__ import annotations

import collections

import pytest
import torch

from bench.models import diffusers_unet as impl_module
from bench.models.diffusers_unet import DiffusersUNet, diffusers_installed, diffusers_unsupported
from bench.models.workload import build_trainer, parameter_count, synthetic_images
from bench.parsers import SpecError
from bench.spec import BenchSpec
from bench.sweep.cli import build_parser, specs_from_args
from bench.tables.ratios import impl_ratios
from ddpm.config import PRESETS
from ddpm.unet import UNet

needs_diffusers = pytest.mark.skipif(not diffusers_installed(), reason="diffusers not installed")


def shapes(model: torch.nn.Module) -> collections.Counter:
    return collections.Counter(tuple(p.shape) for p in model.parameters())


@needs_diffusers
@pytest.mark.parametrize("attention", [(16,), ()])
def test_unet2dmodel_has_our_cifar_architecture(attention):
    """Same parameter count as the paper's model and the same multiset of tensor shapes."""
    config = PRESETS["ddpm-cifar10"].replace(attention_resolutions=attention)
    with torch.device("meta"):
        theirs, ours = DiffusersUNet(config), UNet(config)
    assert sum(p.numel() for p in theirs.parameters()) == (35_746_307 if attention else 34_164_227)
    # Ours fuses q, k, v into one linear; diffusers has three: compare with those split.
    split = collections.Counter()
    for shape, n in shapes(ours).items():
        if len(shape) <= 2 and shape[0] == 3 * 256 and (len(shape) == 1 or shape[1] == 256):
            split[(256,) + shape[1:]] += 3 * n
        else:
            split[shape] += n
    assert shapes(theirs) == split


@needs_diffusers
def test_diffusers_model_runs_our_calling_convention():
    config = PRESETS["ddpm-cifar10"].replace(
        image_size=16,
        base_channels=32,
        time_embed_dim=32,
        time_hidden_dim=128,
        attention_resolutions=(8,),
    )
    model = DiffusersUNet(config)
    x = torch.randn(2, 3, 16, 16)
    eps = model(x, torch.tensor([1, 999]))
    assert eps.shape == x.shape and torch.isfinite(eps).all()


@needs_diffusers
def test_diffusers_recipe_trains_with_torch_adamw_and_ema_model():
    # The CIFAR architecture at 8px without attention: the real layers, a cheap step.
    spec = BenchSpec(
        preset="ddpm-cifar10", image_size=8, attention="none", batch=2, impl="diffusers"
    )
    trainer = build_trainer(spec)
    before = [p.detach().clone() for p in trainer.ema.params]
    stats = trainer.step(synthetic_images(spec, 2))
    from diffusers.training_utils import EMAModel

    assert isinstance(trainer.model, DiffusersUNet)
    assert parameter_count(spec) == 34_164_227
    assert isinstance(trainer.ema.ema, EMAModel)
    assert type(trainer.optimizer) is torch.optim.AdamW
    assert not trainer.optimizer.defaults["fused"]  # torch's defaults, as diffusers' example
    assert torch.isfinite(stats.loss)
    # EMA warm-up: the first decay is 1 - (1 + 1)^-0.75 ~ 0.405, so the shadows move.
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.ema.params))


def test_presets_diffusers_cannot_express_are_named():
    assert diffusers_unsupported(PRESETS["ddpm-cifar10"]) is None
    assert "time embedding" in diffusers_unsupported(PRESETS["ddpm-mnist"])
    assert "time embedding" in diffusers_unsupported(PRESETS["tiny"])
    heads = PRESETS["ddpm-cifar10"].replace(num_heads=4)
    assert "heads" in diffusers_unsupported(heads)


def _specs(argv):
    return specs_from_args(build_parser("p", "", {}).parse_args(argv))


def test_impl_refusals_are_one_line(monkeypatch):
    # The architecture check needs no diffusers: pretend it is installed to reach it.
    monkeypatch.setattr(impl_module, "diffusers_installed", lambda: True)
    with pytest.raises(SpecError, match="cannot build this model: UNet2DModel ties"):
        _specs(["--preset", "tiny", "--impl", "ddpm,diffusers", "--device", "cpu"])
    monkeypatch.setattr(impl_module, "diffusers_installed", lambda: False)
    with pytest.raises(SpecError, match=r"needs the diffusers package: pip install"):
        _specs(["--impl", "diffusers", "--device", "cpu"])
    with pytest.raises(SpecError, match="--impl 'jax' is not allowed"):
        _specs(["--impl", "jax", "--device", "cpu"])
    with pytest.raises(SpecError, match="--repeats 0 is not allowed: it must be >= 1"):
        _specs(["--repeats", "0", "--device", "cpu"])


def test_repeats_pass_over_the_grid_with_implementations_side_by_side(monkeypatch):
    monkeypatch.setattr(impl_module, "diffusers_installed", lambda: True)
    specs = _specs(
        [
            "--impl",
            "ddpm,diffusers",
            "--precision",
            "fp32,bf16",
            "--repeats",
            "3",
            "--device",
            "cpu",
        ]
    )
    assert [(s.repeat, s.precision, s.impl) for s in specs] == [
        (r, p, i) for r in (1, 2, 3) for p in ("fp32", "bf16") for i in ("ddpm", "diffusers")
    ]
    assert len({s.spec_id for s in specs}) == len(specs)


def _row(impl, value, precision="fp32", mfu=None, status="ok"):
    return {
        "preset": "ddpm-cifar10",
        "image_size": 32,
        "batch": 8,
        "accum": 1,
        "precision": precision,
        "attention": "16",
        "compile": "off",
        "checkpointing": "off",
        "device": "cpu",
        "impl": impl,
        "dataset": "synthetic",
        "sampler": "none",
        "sampling_steps": 0,
        "repeat": 1,
        "status": status,
        "img_per_s": value,
        "mfu": mfu,
    }


def test_impl_ratios_are_ratios_of_medians():
    rows = [_row("ddpm", v, mfu=m) for v, m in ((6.0, 0.6), (5.0, 0.5), (9.0, 0.9))]
    rows += [_row("diffusers", v, mfu=m) for v, m in ((4.0, 0.4), (3.0, 0.3), (5.0, 0.5))]
    rows += [_row("ddpm", 2.0, "bf16"), _row("diffusers", 1.0, "bf16", status="error")]
    (sentence,) = impl_ratios(rows, "img_per_s", "img/s", also=("mfu",))
    # medians 6 and 4 -> 1.50x; ranges 5-9 and 3-5; precision varies, so it is named.
    assert sentence == (
        "ddpm vs diffusers, precision fp32: 6 vs 4 img/s (medians of 3 and 3 "
        "alternating runs; ranges 5-9 and 3-5): 1.50x; mfu 0.6 vs 0.4."
    )


@needs_diffusers
def test_memory_prediction_sees_diffusers_weights_gradients_adam_state_and_ema():
    """The fake-tensor prediction runs the diffusers recipe too, its EMAModel's shadow weights
    counted as the EMA copy."""
    from bench.predict.trace import step_peak

    spec = BenchSpec(image_size=8, attention="none", batch=2, impl="diffusers")
    peak = step_peak(spec, fake=True)
    weights_mib = 34_164_227 * 4 / 2**20
    assert peak.mib("parameters") == pytest.approx(weights_mib, rel=0.01)
    assert peak.mib("ema") == pytest.approx(weights_mib, rel=0.01)
    assert peak.mib("optimizer_state") == pytest.approx(2 * weights_mib, rel=0.01)
    assert peak.mib() >= 4 * weights_mib  # + gradients, at their peak during the step


CELEBAHQ = {  # google/ddpm-celebahq-256's config.json layout: a file of the test's own
    "_class_name": "UNet2DModel",
    "block_out_channels": [128, 128, 256, 256, 512, 512],
    "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4,
    "layers_per_block": 2,
    "in_channels": 3,
    "out_channels": 3,
    "sample_size": 256,
}


@needs_diffusers
def test_a_hub_config_json_builds_the_celebahq_model_at_our_256_preset_size(tmp_path):
    import json

    path = tmp_path / "config.json"
    path.write_text(json.dumps(CELEBAHQ))
    spec = BenchSpec(
        preset="ddpm-256", image_size=256, attention="16", impl="diffusers", model_config=str(path)
    )
    assert parameter_count(spec) == 113_673_219
    assert parameter_count(spec.replace(impl="ddpm", model_config="none")) == 113_673_219
    path.write_text(json.dumps({**CELEBAHQ, "layers_per_blok": 2}))
    with pytest.raises(SpecError, match="UNet2DModel takes no argument 'layers_per_blok'"):
        _specs(["--impl", "diffusers", "--model-config", str(path), "--device", "cpu"])


def test_lucidrains_and_factories_refuse_gradient_checkpointing():
    with pytest.raises(SpecError, match="--impl lucidrains has no gradient checkpointing here"):
        _specs(["--impl", "lucidrains", "--checkpointing", "on", "--device", "cpu"])


def test_lucidrains_missing_is_one_line(monkeypatch):
    from bench.models import lucidrains_unet

    monkeypatch.setattr(lucidrains_unet, "installed", lambda: False)
    with pytest.raises(SpecError, match=r"needs the denoising-diffusion-pytorch package: pip"):
        _specs(["--impl", "lucidrains", "--device", "cpu"])


def test_an_impl_that_is_neither_a_name_nor_a_factory_is_refused():
    with pytest.raises(SpecError, match="or give your factory as package.module:callable"):
        _specs(["--impl", "mynets:", "--device", "cpu"])


def test_the_presets_architecture_binds_the_preset_only():
    """--impl lucidrains --image-size 256 was refused: the default preset's attention at 16
    is never visited by ddpm-cifar10 at 256 px, a check of a model lucidrains does not build."""
    (spec,) = _specs(["--impl", "lucidrains", "--image-size", "256", "--device", "cpu"])
    assert spec.image_size == 256 and spec.unet_config().in_channels == 3
    # Ours is the preset's: refused there as before, alone or beside another implementation.
    for impls in ("ddpm", "ddpm,lucidrains"):
        with pytest.raises(SpecError, match="--attention 16 is never visited by ddpm-cifar10"):
            _specs(["--impl", impls, "--image-size", "256", "--device", "cpu"])
    # The preset's architecture axes do not shape another model: refused, not ignored.
    with pytest.raises(SpecError, match="--impl lucidrains builds its own model .*leave --chan"):
        _specs(["--impl", "lucidrains", "--channels", "64", "--device", "cpu"])
