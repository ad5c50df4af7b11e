"""--optimizer, --ema, --ema-dtype and --channels-last with --impl guided-diffusion: the chosen
optimizer steps its fp32 master weights as that optimizer does by hand; its EMA copies in host
memory (or bf16) are the closed-form average of those weights; the memory a step keeps, predicted
on fake tensors and tracked here, moves by exactly the copies' bytes; the modelled 8-bit state is
the real optimizer's."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from bench.models.fake import fake_mode
from bench.models.guided_trainer import guided_ema
from bench.models.guided_unet import GuidedUNet
from bench.models.workload import build_trainer, synthetic_images
from bench.predict.trace import CUDA_BLOCK_BYTES, step_memory
from bench.sweep.cli import check_levers
from ddpm.config import TrainConfig
from tests.bench.models.test_optimizers import real_state_bytes
from tests.helpers.guided import TINY, guided_spec, needs_guided, tiny_file

pytestmark = needs_guided

needs_bnb = pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes missing"
)
LR = 0.05  # a step this large moves a weight past bf16's resolution (0.05 in a ~0.1 weight)
RATES = (0.5, 0.9)
FLAGS = TINY + f"--lr {LR} --ema_rate {RATES[0]},{RATES[1]}\n"


def _by_hand(name: str, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer as a user who swaps it into its TrainLoop builds it: at its lr, its weight
    decay (0), the library's recipe otherwise (SGD with momentum 0.9)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=LR, momentum=0.9, foreach=True)
    import bitsandbytes as bnb

    return bnb.optim.AdamW8bit(params, lr=LR, weight_decay=0.0)


@pytest.mark.parametrize("name", ["sgd", pytest.param("adamw8bit", marks=needs_bnb)])
def test_the_optimizer_steps_its_fp32_master_weights(tmp_path, monkeypatch, name):
    """Under its fp16 scheme: the optimizer's state and the master weights after one step equal
    the same optimizer's step by hand over the master weights and unscaled master gradients the
    step handed it."""
    spec = guided_spec(tiny_file(tmp_path, FLAGS), batch=2, precision="fp16", optimizer=name)
    trainer = build_trainer(spec)
    master = trainer.mp_trainer.master_params
    handed = {}
    step = trainer.optimizer.step

    def recorded(*args, **kwargs):
        handed["params"] = [p.detach().clone() for p in master]
        handed["grads"] = [p.grad.detach().clone() for p in master]
        return step(*args, **kwargs)

    monkeypatch.setattr(trainer.optimizer, "step", recorded)
    assert not trainer.step(synthetic_images(spec, 2)).skipped
    params = [nn.Parameter(p.clone()) for p in handed["params"]]
    for p, g in zip(params, handed["grads"], strict=True):
        p.grad = g
    by_hand = _by_hand(name, params)
    by_hand.step()
    assert [p.dtype for p in master] == [torch.float32] * 2  # its two flat master tensors
    for mine, theirs, start in zip(master, params, handed["params"], strict=True):
        assert torch.equal(mine, theirs) and not torch.equal(mine, start)
        state, expected = trainer.optimizer.state[mine], by_hand.state[theirs]
        assert state.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(torch.as_tensor(state[key]), torch.as_tensor(value)), key


@pytest.mark.parametrize("dtype, tolerance", [("fp32", 1e-6), ("bf16", 2**-7)])
def test_a_host_ema_is_the_closed_form_average(tmp_path, dtype, tolerance):
    """Each copy after one step is rate * start + (1 - rate) * weights, in its dtype, in host
    memory (within its dtype's rounding of the two products)."""
    spec = guided_spec(tiny_file(tmp_path, FLAGS), batch=2, ema="cpu", ema_dtype=dtype)
    trainer = build_trainer(spec)
    torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
    start = [p.detach().to(torch_dtype).double() for p in trainer.mp_trainer.master_params]
    trainer.step(synthetic_images(spec, 2))
    now = [p.detach().to(torch_dtype).double() for p in trainer.mp_trainer.master_params]
    assert len(trainer.ema.copies) == len(RATES)
    for rate, copies in zip(RATES, trainer.ema.copies, strict=True):
        for shadow, a, b in zip(copies, start, now, strict=True):
            assert shadow.device.type == "cpu" and shadow.dtype == torch_dtype
            expected = rate * a + (1 - rate) * b
            scale = tolerance * torch.maximum(a.abs(), b.abs()).max()
            torch.testing.assert_close(shadow.double(), expected, rtol=tolerance, atol=scale)
    # The two rates' copies part: one step moves them past the dtype's resolution.
    fast, slow = trainer.ema.copies
    assert any(not torch.allclose(a, b, rtol=4 * tolerance, atol=0) for a, b in zip(fast, slow))


def test_a_host_ema_stays_on_the_host_beside_card_weights():
    """Master weights on a card (fake CUDA tensors): the copies are host tensors before and
    after an update, which reads host copies of the weights."""
    config = TrainConfig(ema="cpu")
    with fake_mode():
        master = [nn.Parameter(torch.zeros(64, device="cuda")), nn.Parameter(torch.ones(8, 8))]
        master[1] = nn.Parameter(master[1].to("cuda"))
        ema = guided_ema(config, [0.9999], master)
        assert [p.device.type for p in ema.params] == ["cpu", "cpu"]
        ema.update(master)
        assert [p.device.type for p in ema.params] == ["cpu", "cpu"]


def test_ema_off_keeps_no_copies_and_trains(tmp_path):
    spec = guided_spec(tiny_file(tmp_path, FLAGS), batch=2, ema="off")
    trainer = build_trainer(spec)
    before = [p.detach().clone() for p in trainer.mp_trainer.master_params]
    assert not trainer.step(synthetic_images(spec, 2)).skipped
    assert trainer.ema.params == []
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.mp_trainer.master_params))


def _master_bytes(spec, itemsize: int) -> list[int]:
    """Its two flat master tensors under use_fp16 (vectors, then matrices), in `itemsize`."""
    with torch.device("meta"):
        model = GuidedUNet(spec)
    vectors = sum(p.numel() for p in model.parameters() if p.ndim <= 1)
    return [itemsize * vectors, itemsize * (sum(p.numel() for p in model.parameters()) - vectors)]


def _blocks(sizes: list[int]) -> int:
    return sum(-(-n // CUDA_BLOCK_BYTES) * CUDA_BLOCK_BYTES for n in sizes)


# Predicted: every placement. Tracked here (each trace takes seconds): the host EMA against
# the default.
PLACEMENTS = {
    True: (("device", "fp32"), ("cpu", "fp32"), ("off", "fp32"), ("device", "bf16")),
    False: (("device", "fp32"), ("cpu", "fp32")),
}


@pytest.mark.parametrize("fake", [True, False], ids=["predicted", "tracked"])
def test_the_kept_memory_moves_by_the_copies_bytes(tmp_path, fake):
    """Its fp16 scheme, two rates: a host EMA takes the two fp32 copies off the card, each
    tensor's bytes exactly (512-byte blocks on the card); none keeps what a host EMA keeps; a
    bf16 one keeps half."""
    spec = guided_spec(tiny_file(tmp_path, FLAGS), batch=2, precision="fp16")
    size = _blocks if fake else sum
    kept = {
        (ema, dtype): step_memory(spec.replace(ema=ema, ema_dtype=dtype), fake=fake).kept
        for ema, dtype in PLACEMENTS[fake]
    }
    copies = len(RATES) * size(_master_bytes(spec, 4))
    assert kept["device", "fp32"].by_category["ema"] == copies
    assert kept["device", "fp32"].total - kept["cpu", "fp32"].total == copies
    assert kept["cpu", "fp32"].by_category["ema"] == 0
    if fake:
        assert kept["off", "fp32"].total == kept["cpu", "fp32"].total
        bf16 = len(RATES) * size(_master_bytes(spec, 2))
        assert kept["device", "bf16"].by_category["ema"] == bf16


@pytest.mark.parametrize(
    "name",
    [pytest.param("sgd", marks=pytest.mark.heavy), pytest.param("adamw8bit", marks=needs_bnb)],
)
def test_the_predicted_optimizer_state_is_the_real_one(tmp_path, name):
    """Over its two flat fp32 master tensors: the state the prediction keeps (SGD traced, 8-bit
    AdamW modelled) is the real optimizer's state after a step here, in the card's 512-byte
    blocks, and the tracked state here is its bytes exactly. SGD's step runs in the trace as
    AdamW's does (under --heavy); 8-bit AdamW's is modelled."""
    spec = guided_spec(tiny_file(tmp_path, FLAGS), batch=2, precision="fp16", optimizer=name)
    trainer = build_trainer(spec)
    trainer.step(synthetic_images(spec, 2))
    state = trainer.optimizer.state_dict()["state"]
    assert len(state) == 2
    predicted = step_memory(spec, fake=True).kept.by_category["optimizer_state"]
    assert predicted == real_state_bytes(state, round_to=CUDA_BLOCK_BYTES)
    tracked = step_memory(spec, fake=False).kept.by_category["optimizer_state"]
    assert tracked == real_state_bytes(state)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_channels_last_trains_as_the_default_layout(tmp_path, precision):
    """Its convolutions' weights stay channels-last through a step (its fp16 scheme copies the
    flat master weights back into them), and the step's master weights are the default
    layout's within float rounding."""
    spec = guided_spec(tiny_file(tmp_path), batch=2, precision=precision)
    images = synthetic_images(spec, 2)
    steps = {}
    for layout in ("off", "on"):
        trainer = build_trainer(spec.replace(channels_last=layout))
        trainer.step(images)
        steps[layout] = trainer
    convs = [p for p in steps["on"].net.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert not all(p.is_contiguous() for p in convs)
    for a, b in zip(*(t.mp_trainer.master_params for t in steps.values()), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_command_line_takes_them(tmp_path):
    spec = guided_spec(
        tiny_file(tmp_path), optimizer="adamw8bit", ema="cpu", ema_dtype="bf16", channels_last="on"
    )
    check_levers([spec], predict_only=True)  # raises nothing


def test_its_host_ema_is_timed_as_one_copy_of_the_master_weights_over_pcie(tmp_path):
    """The time model's step with --ema cpu: one host copy of the fp32 master weights per step,
    whatever the number of rates (its update reads one copy for all), and no copy without."""
    from bench.cards import CARDS
    from bench.predict.runtime import train_step_kernels

    spec = guided_spec(tiny_file(tmp_path, FLAGS), batch=2)
    values = sum(p.numel() for p in build_trainer(spec).mp_trainer.master_params)
    on_host = train_step_kernels(spec.replace(ema="cpu"), CARDS["rtx3070"])
    on_card = train_step_kernels(spec, CARDS["rtx3070"])
    assert sum(k.bytes for k in on_host if k.kind == "to_host") == 4 * values
    assert not any(k.kind == "to_host" for k in on_card)
