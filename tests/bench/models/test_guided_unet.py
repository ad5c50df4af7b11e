"""--impl guided-diffusion's model behind our calling convention, its held-out loss, its FLOPs and
time on a card, and the upsampler's low-resolution input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.cards import CARDS
from bench.measure.flops import training_step_flops
from bench.models.guided_unet import GuidedUNet, guided_loss, held_out_labels
from bench.models.impl import problem
from bench.models.workload import build_trainer, synthetic_images
from bench.predict.runtime import train_step_kernels
from tests.helpers.guided import guided_spec, needs_guided, tiny_file

pytestmark = needs_guided


@pytest.fixture
def spec(tmp_path):
    return guided_spec(tiny_file(tmp_path), batch=2)


def test_model_x_t_is_eps_the_first_half_of_its_output(spec):
    model = GuidedUNet(spec).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 40])
    y = torch.tensor([5, 7])
    with torch.no_grad():
        out = model.unet(x, model.diffusion._scale_timesteps(t), y=y)
        assert out.shape == (2, 6, 16, 16)  # learn_sigma: eps and the variance interpolation
        assert torch.equal(model(x, t, y=y), out[:, :3])
        # Without labels (FLOP counting, the shape check): class 0.
        assert torch.equal(model(x, t), model(x, t, y=torch.zeros(2, dtype=torch.long)))


def test_the_held_out_loss_is_its_training_losses_mean(spec):
    trainer = build_trainer(spec)
    x0 = synthetic_images(spec, 3).clamp(-1, 1)
    t, noise = torch.tensor([0, 17, 49]), torch.randn(3, 3, 16, 16)
    net = trainer.net.eval()
    with torch.no_grad():
        ours = guided_loss(trainer.model, trainer.schedule, x0, t, noise)
        theirs = net.diffusion.training_losses(
            net.unet, x0, t, model_kwargs={"y": held_out_labels(3)}, noise=noise
        )
    assert "vb" in theirs  # learn_sigma: the hybrid loss, MSE + VLB
    assert ours.item() == pytest.approx(theirs["loss"].mean().item(), rel=1e-6)
    assert trainer.schedule.timesteps == 50  # the draws span its diffusion's steps


def test_bench_loss_holds_out_with_its_loss(spec):
    from bench.passes.loss import validation_draws, validation_loss

    trainer = build_trainer(spec)
    images = synthetic_images(spec, 3).clamp(-1, 1)
    t, noise = validation_draws(images, trainer.schedule.timesteps, seed=0)
    ours = validation_loss(
        trainer.model, trainer.schedule, images, t, noise, torch.device("cpu"), trainer.objective
    )
    with torch.no_grad():
        theirs = trainer.net.diffusion.training_losses(
            trainer.net.unet, images, t, model_kwargs={"y": held_out_labels(3)}, noise=noise
        )
    assert ours == pytest.approx(theirs["loss"].mean().item(), rel=1e-6)


def test_an_upsampler_conditions_on_its_area_downsampled_images(tmp_path):
    text = (
        "--large_size 64 --small_size 16 --num_channels 32 --num_res_blocks 1 "
        "--attention_resolutions 8 --num_heads 2 --learn_sigma True"
    )
    spec = guided_spec(tiny_file(tmp_path, text), batch=2)
    assert problem(spec) is None
    trainer = build_trainer(spec)
    x0 = synthetic_images(spec, 2)
    low = trainer.draw(x0)["low_res"]
    assert torch.equal(low, F.interpolate(x0, (16, 16), mode="area"))
    assert torch.isfinite(trainer.step(x0).loss)


def test_flops_and_the_time_on_a_card_count_its_fp16_step(tmp_path):
    path = tiny_file(tmp_path)
    fp32, fp16 = (guided_spec(path, batch=2, precision=p) for p in ("fp32", "fp16"))
    assert training_step_flops(fp16) == training_step_flops(fp32) > 0
    card = CARDS["t4"]
    kernels = train_step_kernels(fp16, card)
    convolutions = [k for k in kernels if k.kind == "conv"]
    assert {k.dtype for k in convolutions} == {torch.float16, torch.float32}  # torso, in and out
    assert all(k.dtype == torch.float32 for k in train_step_kernels(fp32, card) if k.kind == "conv")
    # Its AdamW steps the two flat master tensors, on the foreach path CUDA takes.
    assert [k.op for k in kernels].count("_foreach_sqrt") == 1


def test_a_class_conditional_model_refuses_to_go_without_labels(spec):
    with pytest.raises(ValueError, match="needs class labels"):
        GuidedUNet(spec).conditioning(torch.zeros(1, 3, 16, 16))


def test_without_a_file_it_is_its_defaults():
    """model_and_diffusion_defaults(): 64 px, attention at 16 and 8."""
    from bench.models.impl import settle
    from bench.spec import BenchSpec

    spec = settle(BenchSpec(impl="guided-diffusion"), False, False)
    assert (spec.image_size, spec.attention) == (64, "16+8")
    assert problem(spec) is None


def test_bench_memory_measures_tracks_and_predicts_it(tmp_path):
    """Every pass of bench.memory on its fp16 scheme: the timed steps (with a micro-batch warm-up
    sharing the loss scale), the tensors tracked here, and the prediction, which holds the
    flat master weights as weights (more than the fp16 weights alone)."""
    from bench import memory

    path = tiny_file(tmp_path)
    args = ["--impl", "guided-diffusion", "--model-config", path, "--precision", "fp16"]
    (row,) = memory.main(
        [*args, "--batch", "1", "--accum", "2", "--inline", "--out", str(tmp_path)]
    )
    assert row["status"] == "ok", row.get("error")
    assert row["step_s"] > 0 and row["tracked_peak_mib"] > 0 and row["fits"]
    with torch.device("meta"):
        model = GuidedUNet(guided_spec(path, precision="fp16"))
    weights_mib = sum(p.numel() for p in model.parameters()) * 4 / 2**20
    assert row["tracked_parameters_mib"] > weights_mib  # fp16 torso + fp32 master weights
    assert row["tracked_optimizer_state_mib"] == pytest.approx(2 * weights_mib, rel=0.01)
