"""--optimizer: each optimizer's state as the memory prediction counts it for CUDA, held against
the real optimizer's own state after one step on this CPU (its state_dict's tensors, each
storage once), and against the tracked memory of the same step."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass
from torch.utils._pytree import tree_leaves

from bench.models import optimizer_state, optimizers
from bench.models.workload import build_trainer, synthetic_images
from bench.predict.trace import CUDA_BLOCK_BYTES, step_memory
from bench.spec import BenchSpec

# tiny's widest tensors (16 -> 32 channels, 3x3) pass the 4,096 values from which the 8-bit
# optimizers quantize, and its biases and norms stay below them: both branches are held.
TINY = BenchSpec(preset="tiny", image_size=16, attention="8", batch=2)
# On CUDA these state entries are host tensors (torch.tensor(0.0) with no device): no card memory.
HOST_HELD = {"adafactor": {"step"}, "ao-adamw8bit": {"step"}, "ao-adamw4bit": {"step"}}
# The modelled ones every run; the traced ones (their own step runs in the trace) under --heavy.
STEPPED_HERE = (
    "adamw8bit",
    "adafactor",
    "prodigy",
    *(pytest.param(name, marks=pytest.mark.heavy) for name in ("adamw", "sgd", "lion")),
)


def _dense(tensor: torch.Tensor):
    if is_traceable_wrapper_subclass(tensor):  # torchao's quantized state: codes, scale, qmap
        for name in tensor.__tensor_flatten__()[0]:
            yield from _dense(getattr(tensor, name))
    else:
        yield tensor


def _round(n: int, to: int) -> int:
    return -(-n // to) * to


def real_state_bytes(state: dict, skip=frozenset(), round_to: int = 1) -> int:
    """The bytes of an optimizer state_dict's "state" tensors, each storage once."""
    seen, total = set(), 0
    for entry in state.values():
        kept = {k: v for k, v in entry.items() if k not in skip}
        for leaf in tree_leaves(kept):
            if not isinstance(leaf, torch.Tensor):
                continue
            for t in _dense(leaf):
                st = t.untyped_storage()
                if st.data_ptr() not in seen:
                    seen.add(st.data_ptr())
                    total += _round(st.nbytes(), round_to)
    return total


def _stepped(spec: BenchSpec):
    trainer = build_trainer(spec, device="cpu")
    trainer.step(synthetic_images(spec, spec.batch))
    return trainer


def _prodigy_zero_p0(trainer) -> int:
    """Prodigy keeps a scalar p0 for a tensor that was all zeros: the model counts it whole."""
    extra = 0
    for p, state in trainer.optimizer.state.items():
        if state["p0"].dim() == 0:
            extra += _round(p.numel() * p.element_size(), CUDA_BLOCK_BYTES) - CUDA_BLOCK_BYTES
    return extra


@pytest.mark.parametrize("name", STEPPED_HERE)
def test_predicted_state_is_the_real_optimizers_state(name):
    spec = TINY.replace(optimizer=name)
    trainer = _stepped(spec)
    real = real_state_bytes(
        trainer.optimizer.state_dict()["state"], HOST_HELD.get(name, ()), CUDA_BLOCK_BYTES
    )
    if name == "prodigy":
        real += _prodigy_zero_p0(trainer)
    predicted = step_memory(spec, fake=True).kept.by_category["optimizer_state"]
    assert predicted == real
    # and the tracked state of the same step on this CPU, each tensor at its own size
    tracked = step_memory(spec, fake=False).kept.by_category["optimizer_state"]
    assert tracked == real_state_bytes(trainer.optimizer.state_dict()["state"])


def test_8bit_state_is_a_quarter_of_adamws_and_more():
    """bitsandbytes' 8-bit AdamW against fused AdamW on the same tiny model, by hand: the
    quantized tensors keep 2 bytes a value plus 8 bytes a block of 256 where AdamW keeps 8."""
    params = list(build_trainer(TINY, device="cpu").model.parameters())
    by_hand = 0
    for p in params:
        n = p.numel()
        by_hand += 2 * n + 8 * math.ceil(n / 256) if n >= 4096 else 8 * n
    by_hand += 2 * 256 * 4  # the two shared quantization maps
    assert optimizer_state.state_bytes("adamw8bit", params) == by_hand
    adamw = sum(8 * p.numel() for p in params)
    assert by_hand < adamw


@pytest.mark.parametrize("name", ["ao-adamw8bit", "ao-adamw4bit"])
def test_torchao_layout_is_what_its_optimizer_allocates(name):
    """torchao compiles its step (minutes here): the state its step allocates first
    (_new_buffer, for both moments) is held against the modelled layout instead."""
    pytest.importorskip("torchao")
    params = list(build_trainer(TINY, device="cpu").model.parameters())
    opt = optimizers.BUILDERS[name](params, TINY.train_config())
    real = {
        i: {"exp_avg": opt._new_buffer(p, True), "exp_avg_sq": opt._new_buffer(p, False)}
        for i, p in enumerate(params)
    }
    assert optimizer_state.state_bytes(name, params) == real_state_bytes(real)
    quantized = [p for p in params if p.numel() >= 4096 and p.numel() % 256 == 0]
    assert quantized, "tiny has no tensor torchao quantizes: the test holds nothing"


def test_modelled_optimizers_are_the_ones_that_cannot_run_on_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    assert not optimizers.modelled("adamw")
    for name in ("sgd", "lion"):
        assert not optimizers.modelled(name)
    with FakeTensorMode():
        p = torch.nn.Parameter(torch.zeros(64, 64))
        p.grad = torch.ones_like(p)
        modelled = optimizers.build_optimizer("adamw8bit", [p], TINY.train_config())
        assert isinstance(modelled, optimizer_state.ModelledState)
        modelled.step()
        assert modelled.state[p]["state1"].dtype == torch.uint8


def test_lr_scale_follows_the_schedule():
    """Prodigy runs at lr 1 and Lion at a third of Adam's, each through the trainer's warm-up."""
    spec = TINY.replace(optimizer="prodigy")
    trainer = build_trainer(spec, device="cpu", lr_warmup_steps=4)
    trainer.step(synthetic_images(spec, spec.batch))
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.25)
    spec = TINY.replace(optimizer="lion")
    trainer = build_trainer(spec, device="cpu")
    trainer.step(synthetic_images(spec, spec.batch))
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(2e-4 / 3)
