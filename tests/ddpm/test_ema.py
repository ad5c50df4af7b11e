"""EMA arithmetic against values worked out by hand, buffer copying, swapping, checkpoints."""

import pytest
import torch
from torch import nn

from ddpm.ema import EMA


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.register_buffer("stat", torch.zeros(3))


def set_params(model, value):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def shadow_value(ema):
    """The single value every shadow parameter holds (params are filled with constants)."""
    values = torch.cat([p.flatten() for p in ema.params])
    assert torch.all(values == values[0])
    return values[0].item()


def test_no_warmup_closed_form():
    model = Toy()
    set_params(model, 0.0)
    ema = EMA(model, decay=0.9, warmup=False)
    assert ema.current_decay() == 0.9
    set_params(model, 1.0)
    ema.update(model)  # 0.9 * 0 + 0.1 * 1
    assert shadow_value(ema) == pytest.approx(0.1, abs=1e-7)
    set_params(model, 3.0)
    ema.update(model)  # 0.9 * 0.1 + 0.1 * 3
    assert shadow_value(ema) == pytest.approx(0.39, abs=1e-6)
    assert ema.num_updates == 2


def test_warmup_decays():
    model = Toy()
    set_params(model, 0.0)
    ema = EMA(model, decay=0.5, warmup=True)
    # (1 + n) / (10 + n) for n = 0, 1, ...: 0.1, 2/11, 0.25, ..., capped at 0.5 from n = 8.
    expected_decays = [min(0.5, (1 + n) / (10 + n)) for n in range(10)]
    assert expected_decays[:2] == [0.1, 2 / 11] and expected_decays[8] == 0.5
    shadow = 0.0
    for n, d in enumerate(expected_decays):
        assert ema.current_decay() == pytest.approx(d)
        value = float(n + 1)
        set_params(model, value)
        ema.update(model)
        shadow = d * shadow + (1 - d) * value
        assert shadow_value(ema) == pytest.approx(shadow, rel=1e-6)
    # First step: 0.1 * 0 + 0.9 * 1.
    assert EMA(Toy(), decay=0.9999).current_decay() == 0.1


def test_buffers_copied_not_averaged():
    model = Toy()
    ema = EMA(model, decay=0.9, warmup=False)
    model.stat.fill_(5.0)
    ema.update(model)
    model.stat.fill_(7.0)
    ema.update(model)
    assert torch.equal(ema.buffers[0], torch.full((3,), 7.0))


def test_update_works_under_no_grad_and_leaves_model_alone():
    model = Toy()
    set_params(model, 2.0)
    ema = EMA(model, decay=0.9, warmup=False)
    with torch.no_grad():
        ema.update(model)
    assert all(not p.requires_grad for p in ema.params)
    assert all(torch.all(p == 2.0) for p in model.parameters())


def test_copy_to():
    model = Toy()
    set_params(model, 0.0)
    ema = EMA(model, decay=0.5, warmup=False)
    set_params(model, 4.0)
    model.stat.fill_(1.5)
    ema.update(model)
    other = Toy()
    ema.copy_to(other)
    assert all(torch.all(p == 2.0) for p in other.parameters())
    assert torch.equal(other.stat, torch.full((3,), 1.5))


def test_swap_into_restores_weights():
    model = Toy()
    set_params(model, 0.0)
    ema = EMA(model, decay=0.5, warmup=False)
    set_params(model, 4.0)
    ema.update(model)  # shadow = 2
    before = [p.clone() for p in model.parameters()]
    with ema.swap_into(model) as m:
        assert m is model
        assert all(torch.all(p == 2.0) for p in model.parameters())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    with pytest.raises(RuntimeError, match="boom"):
        with ema.swap_into(model):
            raise RuntimeError("boom")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_state_dict_round_trip_and_continued_updates():
    torch.manual_seed(0)
    model = Toy()
    ema = EMA(model, decay=0.99)
    for _ in range(3):
        set_params(model, torch.rand(()).item())
        ema.update(model)
    sd = ema.state_dict()
    assert sd["num_updates"] == 3 and sd["decay"] == 0.99 and sd["warmup"] is True
    assert set(sd["params"]) == {"lin.weight", "lin.bias"} and set(sd["buffers"]) == {"stat"}

    fresh = EMA(Toy(), decay=0.5, warmup=False)
    fresh.load_state_dict(sd)
    assert fresh.num_updates == 3 and fresh.decay == 0.99 and fresh.warmup
    assert all(torch.equal(a, b) for a, b in zip(fresh.params, ema.params, strict=True))
    for _ in range(2):
        set_params(model, torch.rand(()).item())
        ema.update(model)
        fresh.update(model)
    assert all(torch.equal(a, b) for a, b in zip(fresh.params, ema.params, strict=True))
    assert fresh.num_updates == ema.num_updates == 5


def test_load_state_dict_mismatch_raises():
    ema = EMA(nn.Linear(2, 1))
    bigger = EMA(nn.Linear(3, 1)).state_dict()
    with pytest.raises(ValueError, match=r"weight has shape \(1, 3\), not \(1, 2\)"):
        ema.load_state_dict(bigger)
    other = EMA(Toy()).state_dict()
    with pytest.raises(ValueError, match="params"):
        ema.load_state_dict(other)
    with pytest.raises(ValueError, match="lacks"):
        ema.load_state_dict({"decay": 0.9})


def test_wrong_model_and_bad_decay_raise():
    ema = EMA(nn.Linear(2, 1))
    with pytest.raises(ValueError, match="model has 1 parameters but the EMA holds 2"):
        ema.update(nn.Linear(2, 1, bias=False))
    for bad in (-0.1, 1.5, "0.9"):
        with pytest.raises(ValueError, match="decay"):
            EMA(nn.Linear(2, 1), decay=bad)


def test_bf16_model_keeps_float32_shadow():
    model = nn.Linear(2, 1).to(torch.bfloat16)
    ema = EMA(model, decay=0.9999, warmup=False)
    assert all(p.dtype == torch.float32 for p in ema.params)
    start = ema.params[0].clone()
    set_params(model, 1.0)
    ema.update(model)
    assert not torch.equal(ema.params[0], start)  # a bf16 shadow would not move by 1e-4


def test_cpu_shadow_of_a_card_model_stays_on_the_cpu():
    """ema "cpu": a model on a (fake) card keeps its shadow in host memory, and the update reads
    the card's parameters into it: no shadow tensor ever lands on the card."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        with torch.device("cuda"):
            model = Toy()
        assert all(p.device.type == "cuda" for p in model.parameters())
        ema = EMA(model, decay=0.9, device="cpu")
        assert all(t.device.type == "cpu" for t in ema.params + ema.buffers)
        ema.update(model)
        assert all(t.device.type == "cpu" for t in ema.params + ema.buffers)


def test_cpu_and_bf16_shadows_follow_the_closed_form():
    """The same updates as the device shadow: decay * shadow + (1 - decay) * param, exactly in
    fp32 and within bf16's rounding of each step's result for a bf16 shadow."""
    model = Toy()
    set_params(model, 0.0)
    device, cpu = EMA(model, 0.9, warmup=False), EMA(model, 0.9, warmup=False, device="cpu")
    half = EMA(model, 0.9, warmup=False, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in half.params)
    expected = 0.0
    for value in (1.0, 3.0, -2.0):
        set_params(model, value)
        for ema in (device, cpu, half):
            ema.update(model)
        expected = 0.9 * expected + 0.1 * value
        assert shadow_value(cpu) == shadow_value(device) == pytest.approx(expected, abs=1e-6)
        assert shadow_value(half) == pytest.approx(expected, rel=2**-7)


def test_to_moves_shadow():
    ema = EMA(Toy()).to("meta")
    assert all(p.device.type == "meta" for p in ema.params + ema.buffers)


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda s: s["params"].update({"other": s["params"].pop("lin.bias")}), "missing lin.bias"),
        (lambda s: s["params"].update({"lin.bias": 1.0}), "lin.bias is a float, not a tensor"),
        (
            lambda s: s["params"].update({"lin.bias": torch.zeros(1, dtype=torch.complex64)}),
            "lin.bias holds torch.complex64",
        ),
        (lambda s: s["buffers"].update({"stat": torch.zeros(4)}), "stat has shape (4,), not (3,)"),
    ],
)
def test_a_state_of_another_model_is_refused_naming_what_mismatched(change, says):
    """One line naming the tensor, before anything is copied (no cast warning, no AttributeError
    on a value that is not a tensor)."""
    ema = EMA(Toy())
    state = ema.state_dict()
    state = {**state, "params": dict(state["params"]), "buffers": dict(state["buffers"])}
    change(state)
    before = [p.clone() for p in ema.params]
    with pytest.raises(ValueError, match="do not fit the model: ") as info:
        ema.load_state_dict(state)
    assert says in str(info.value) and "\n" not in str(info.value)
    assert all(torch.equal(a, b) for a, b in zip(before, ema.params))
