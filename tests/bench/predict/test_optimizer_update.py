"""Every optimizer's update in the time prediction's trace (bench.predict.optimizer_update), held
to the bytes a hand sum gives from the real optimizer's state after one step on this CPU, and
to the bound no update beats: its bytes at the card's datasheet bandwidth."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from bench.cards import CARDS
from bench.models.fake import fake_mode
from bench.models.optimizers import BUILDERS, build_optimizer
from bench.models.workload import build_model
from bench.predict import optimizer_update
from bench.predict.kernels import KernelRecorder, cuda_optimizer_defaults
from bench.predict.step_time import load_constants, step_time
from bench.spec import BenchSpec

# tiny's widest tensors pass the 4,096 values from which the 8-bit optimizers quantize, and its
# biases and norms stay below them: both branches of each are held.
TINY = BenchSpec(preset="tiny", image_size=16, attention="8", batch=2)
CARD = CARDS["rtx3070"]
NOT_ON_CARD = {"step"}  # host tensors (torchao, Adafactor) or Python ints (bitsandbytes)
PACKAGES = {
    "adamw8bit": "bitsandbytes",
    "ao-adamw8bit": "torchao",
    "ao-adamw4bit": "torchao",
    "lion": "lion_pytorch",
    "prodigy": "prodigyopt",
}


def needs(name: str) -> None:
    if name in PACKAGES:
        pytest.importorskip(PACKAGES[name])


def _params(fake: bool) -> list[torch.Tensor]:
    with fake_mode() if fake else contextlib.nullcontext():
        torch.manual_seed(0)
        params = list(build_model(TINY, compiled=False).parameters())
        for p in params:
            p.grad = torch.randn_like(p)
    return params


def recorded_update(name: str) -> tuple[list, list[torch.Tensor]]:
    """The kernels of the second step of optimizer `name` (its first creates the state) over
    tiny's parameters on fake tensors, as the time prediction's trace builds it."""
    recorder = KernelRecorder(CARD.capability)
    with fake_mode(), cuda_optimizer_defaults(), recorder:
        params = _params(fake=False)  # already inside fake mode: fake tensors
        optimizer = build_optimizer(name, params, TINY.train_config())
        trainer = SimpleNamespace(optimizer=optimizer, config=TINY.train_config())
        optimizer_update.attach(trainer, name, recorder)
        trainer.optimizer.step()
        recorder.on = True
        trainer.optimizer.step()
    return recorder.kernels, params


def _dense(t: torch.Tensor, name: str = ""):
    """(name, plain tensor) of a state entry: torchao's quantized state's codes, scale, qmap."""
    if is_traceable_wrapper_subclass(t):
        for inner in t.__tensor_flatten__()[0]:
            yield from _dense(getattr(t, inner), inner)
    else:
        yield name, t


def by_hand(params: list[torch.Tensor], states: list[dict]) -> int:
    """The least one update moves: each gradient read, each parameter read and written, each
    state tensor on the card read and written (a quantization map only read, through the
    caches: not counted)."""
    total = sum(3 * p.numel() * p.element_size() for p in params)
    for state in states:
        for key, value in state.items():
            if key in NOT_ON_CARD or not isinstance(value, torch.Tensor):
                continue
            for inner, t in _dense(value, key):
                if "qmap" not in inner and "qmap" not in key:
                    total += 2 * t.numel() * t.element_size()
    return total


def real_states(name: str) -> tuple[list[torch.Tensor], list[dict]]:
    """tiny's parameters and the real optimizer's state after one step on this CPU."""
    params = _params(fake=False)
    optimizer = BUILDERS[name](params, TINY.train_config())
    optimizer.step()
    return params, [optimizer.state[p] for p in params]


def card_bytes(kernels) -> int:
    return sum(k.bytes for k in kernels if k.kind == "memory")


def test_8bit_adamw_moves_its_state_once_and_syncs_after_every_tensor():
    """bitsandbytes' kernels: the bytes, exactly, of the real optimizer's state after a CPU step
    (uint8 states and absmax; float32 states under 4,096 values), and a torch.cuda.synchronize()
    after each tensor (its sync_gpu)."""
    needs("adamw8bit")
    kernels, _ = recorded_update("adamw8bit")
    params, states = real_states("adamw8bit")
    assert any(s["state1"].dtype == torch.uint8 for s in states)
    assert any(s["state1"].dtype == torch.float32 for s in states)
    assert card_bytes(kernels) == by_hand(params, states)
    assert sum(k.kind == "sync" for k in kernels) == len(params)
    assert sum(k.launches for k in kernels if k.kind == "memory") == len(params)


@pytest.mark.parametrize("name", ["ao-adamw8bit", "ao-adamw4bit"])
def test_torchao_moves_the_buffers_its_optimizer_allocates(name):
    """torchao compiles its step (minutes here): the state its step allocates first
    (_new_buffer, both moments) gives the hand sum; one fused kernel per tensor."""
    needs(name)
    kernels, _ = recorded_update(name)
    params = _params(fake=False)
    opt = BUILDERS[name](params, TINY.train_config())
    states = [
        {"exp_avg": opt._new_buffer(p, True), "exp_avg_sq": opt._new_buffer(p, False)}
        for p in params
    ]
    assert any(is_traceable_wrapper_subclass(s["exp_avg"]) for s in states)
    assert card_bytes(kernels) == by_hand(params, states)
    assert sum(k.launches for k in kernels if k.kind == "memory") == len(params)


@pytest.mark.parametrize("name", ["adafactor", "prodigy"])
def test_traced_optimizers_move_at_least_their_state_and_read_two_values_a_tensor(name):
    """Adafactor and Prodigy run their own step in the trace: at least the hand sum's bytes
    (their extra passes over gradients and temporaries come on top), and the two values each
    reads back per tensor (Adafactor: the parameter's and the update's norms; Prodigy: a dot
    product and the sum of |s|), each a synchronisation."""
    needs(name)
    kernels, _ = recorded_update(name)
    params, states = real_states(name)
    assert card_bytes(kernels) >= by_hand(params, states)
    assert sum(k.kind == "sync" for k in kernels) == 2 * len(params)


@pytest.mark.parametrize(
    "name", ["adamw8bit", "ao-adamw8bit", "ao-adamw4bit", "adafactor", "sgd", "lion", "prodigy"]
)
def test_no_update_beats_its_bytes_at_the_cards_bandwidth(name):
    needs(name)
    kernels, params = recorded_update(name)
    if name.startswith("ao-"):
        least = sum(3 * p.numel() * p.element_size() for p in params)
    else:
        least = by_hand(*real_states(name))
    t = step_time(kernels, CARD, "fp32", constants=load_constants())
    assert t.step_s >= least / (CARD.bandwidth_gbs * 1e9)
    assert t.card_busy_s > 0
