"""--impl guided-diffusion trains as openai's TrainLoop trains: a step here against its own
TrainLoop.run_step on the same draws (its train_util imported with mpi4py stood in), its
UniformSampler's weights, its loss scale's overflow path, and the fp16 master-weight scheme as
the CUDA prediction traces it, against sums of the tensors it keeps."""

from __future__ import annotations

import importlib
import sys
import types

import numpy as np
import pytest
import torch
import torch.distributed as dist

from bench.models import guided_flags
from bench.models.guided_unet import GuidedUNet
from bench.models.workload import build_trainer, synthetic_images, train_step
from bench.predict.trace import step_memory
from tests.helpers.guided import TINY, guided_spec, needs_guided, tiny_file

pytestmark = needs_guided


@pytest.fixture
def train_util(monkeypatch):
    """Its train_util, importable: dist_util imports mpi4py, which it only reads in functions
    TrainLoop's step never calls (a stand-in module); TrainLoop asks the process group its
    world size (gloo, one rank) and logs through its logger (one without outputs)."""
    mpi = types.ModuleType("mpi4py")
    mpi.MPI = types.SimpleNamespace(COMM_WORLD=None)
    monkeypatch.setitem(sys.modules, "mpi4py", mpi)
    logger = importlib.import_module("guided_diffusion.logger")
    monkeypatch.setattr(logger.Logger, "CURRENT", logger.Logger(dir=None, output_formats=[]))
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield importlib.import_module("guided_diffusion.train_util")
    finally:
        dist.destroy_process_group()
        for name in ("guided_diffusion.train_util", "guided_diffusion.dist_util"):
            sys.modules.pop(name, None)


def draws_of(trainer, images: torch.Tensor) -> dict:
    """The draws trainer.step is about to take, leaving its generator where it was."""
    state = trainer.generator.get_state()
    draws = trainer.draw(images)
    trainer.generator.set_state(state)
    return draws


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_step_is_its_train_loops_step(tmp_path, train_util, precision):
    """Two optimizer steps of 2 micro-batches: the master weights, both EMA copies, the loss
    scale and the annealed learning rate equal TrainLoop's, bit for bit."""
    extra = "--ema_rate 0.9999,0.99 --lr_anneal_steps 10 --weight_decay 0.01 --lr 3e-4\n"
    spec = guided_spec(tiny_file(tmp_path, TINY + extra), batch=2, accum=2, precision=precision)
    trainer = build_trainer(spec)
    images = synthetic_images(spec, 4)
    steps = []
    for _ in range(2):
        steps.append(draws_of(trainer, images))
        trainer.step(images)

    torch.manual_seed(spec.seed)  # the weights build_model starts from
    flags = guided_flags.flags_of(spec)
    model, diffusion = guided_flags.script_util().create_model_and_diffusion(**flags.model)
    loop = train_util.TrainLoop(
        model=model,
        diffusion=diffusion,
        data=None,
        batch_size=4,
        microbatch=2,
        lr=3e-4,
        ema_rate="0.9999,0.99",
        log_interval=10,
        save_interval=10000,
        resume_checkpoint="",
        use_fp16=precision == "fp16",
        weight_decay=0.01,
        lr_anneal_steps=10,
    )
    for draws in steps:
        # Its sampler and its training_losses' noise give ours, micro-batch by micro-batch.
        parts = iter([(draws["t"][i : i + 2], draws["weights"][i : i + 2]) for i in (0, 2)])
        loop.schedule_sampler = types.SimpleNamespace(
            sample=lambda n, device, parts=parts: next(parts)
        )
        noise = iter(draws["noise"].split(2))
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(torch, "randn_like", lambda x, noise=noise, **kw: next(noise))
            loop.run_step(images, {"y": draws["y"]})
        loop.step += 1

    ours = trainer.mp_trainer
    assert len(ours.master_params) == len(loop.mp_trainer.master_params)
    for a, b in zip(ours.master_params, loop.mp_trainer.master_params):
        assert torch.equal(a, b)
    for mine, theirs in zip(trainer.ema.copies, loop.ema_params):
        assert all(torch.equal(a, b) for a, b in zip(mine, theirs))
    assert ours.lg_loss_scale == loop.mp_trainer.lg_loss_scale
    assert trainer.lr_now() == loop.opt.param_groups[0]["lr"] < 3e-4  # for the next step
    if precision == "fp16":  # AdamW steps the two flat fp32 master tensors, not the weights
        assert [p.dtype for p in ours.master_params] == [torch.float32] * 2
        assert trainer.optimizer.param_groups[0]["params"] == ours.master_params


def test_its_sampler_weighs_our_timesteps_as_its_sample_does(tmp_path, monkeypatch):
    spec = guided_spec(tiny_file(tmp_path), batch=4)
    trainer = build_trainer(spec)
    draws = trainer.draw(synthetic_images(spec, 4))
    monkeypatch.setattr(np.random, "choice", lambda n, size, p: draws["t"].numpy())
    t, weights = trainer.sampler.sample(4, "cpu")  # its ScheduleSampler.sample
    assert torch.equal(t, draws["t"]) and torch.equal(weights, draws["weights"])
    assert int(draws["t"].max()) < trainer.diffusion.num_timesteps == 50


def test_an_overflow_skips_the_update_and_lowers_the_loss_scale(tmp_path):
    spec = guided_spec(tiny_file(tmp_path), batch=2, precision="fp16")
    trainer = build_trainer(spec)
    trainer.mp_trainer.lg_loss_scale = 200.0  # 2^200 times the loss: inf in fp16 gradients
    before = [p.detach().clone() for p in trainer.mp_trainer.master_params]
    stats = trainer.step(synthetic_images(spec, 2))
    assert stats.skipped and trainer.skipped_steps == 1 and stats.loss_scale == 2.0**200
    assert trainer.mp_trainer.lg_loss_scale == 199.0
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.mp_trainer.master_params))
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.ema.params))


def test_the_warm_up_trainer_shares_the_loss_scale(tmp_path):
    spec = guided_spec(tiny_file(tmp_path), batch=1, accum=2, precision="fp16")
    step = train_step(spec)
    step.warm_up()
    assert step.warm_trainer.mp_trainer is step.trainer.mp_trainer
    assert step.trainer.mp_trainer.lg_loss_scale == pytest.approx(20.001)


def blocks(numel_bytes) -> int:
    return sum(-(-n // 512) * 512 for n in numel_bytes)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_the_prediction_traces_its_master_weight_scheme(tmp_path, precision):
    """What a step keeps on the card, predicted on fake tensors, against the tensors its scheme
    keeps: under use_fp16 the torso's convolutions in fp16 and two flat fp32 master tensors
    (its get_param_groups_and_shapes: vectors, then matrices), AdamW's two moments and one EMA
    copy per rate of those, the fp16 gradients (its zero_grad keeps them; the flat master
    gradients go after each step); in fp32 the weights are the master weights."""
    spec = guided_spec(
        tiny_file(tmp_path, TINY + "--ema_rate 0.9999,0.99"), batch=2, precision=precision
    )
    kept = step_memory(spec, fake=True).kept.by_category
    with torch.device("meta"):
        model = GuidedUNet(spec)
    if precision == "fp16":
        model.unet.convert_to_fp16()
    weights = [p.numel() * p.element_size() for p in model.parameters()]
    if precision == "fp16":
        vectors = sum(p.numel() for p in model.parameters() if p.ndim <= 1)
        master = [4 * vectors, 4 * (sum(p.numel() for p in model.parameters()) - vectors)]
    else:
        master = weights
    steps = 512 * len(master)  # AdamW's step counts, one fp32 scalar per tensor
    assert kept["parameters"] == blocks(weights) + (blocks(master) if precision == "fp16" else 0)
    assert kept["gradients"] == blocks(weights)
    assert kept["optimizer_state"] == 2 * blocks(master) + steps
    assert kept["ema"] == 2 * blocks(master)
    real = step_memory(spec, fake=False).kept.by_category  # the same step on this CPU
    assert real["optimizer_state"] == 2 * sum(master) + 4 * len(master)
    assert real["ema"] == 2 * sum(master)
