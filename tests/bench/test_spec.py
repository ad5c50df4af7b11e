"""bench.spec: the axis parsers (each bad value is one SpecError line naming it), the grid
expansion, and the names that identify a spec for trace folders and --resume."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.parsers import (
    SpecError,
    parse_attention,
    parse_budget,
    parse_choices,
    parse_device,
    parse_image_size,
    parse_int_list,
    parse_preset,
)
from bench.spec import COMPILE_MODES, BenchSpec, expand_grid
from bench.sweep.cli import build_parser, specs_from_args
from ddpm.config import PRECISIONS, PRESETS

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


# ----- parse_budget ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, mib",
    [
        ("8GiB", 8192.0),
        ("8192MiB", 8192.0),
        ("8GB", 8e9 / 2**20),
        ("500MB", 500e6 / 2**20),
        ("0.5GiB", 512.0),
        ("8GIB", 8192.0),
        (" 8 GiB ", 8192.0),
    ],
)
def test_parse_budget(text, mib):
    assert parse_budget(text) == pytest.approx(mib, rel=1e-12)


@pytest.mark.parametrize("text", ["8Gb", "8gib", "500mb", "8192Mib"])
def test_parse_budget_refuses_bits(text):
    with pytest.raises(SpecError, match="in bits"):
        parse_budget(text)


def test_parse_budget_refuses_what_a_float_cannot_hold():
    with pytest.raises(SpecError, match="finite"):
        parse_budget("9" * 400 + "GiB")


def test_a_value_named_twice_is_refused():
    for call in (
        lambda: parse_attention("8+8", "tiny", 16),
        lambda: parse_attention("8,preset", "tiny", 16),
        lambda: parse_int_list("--batch", "2,02"),
        lambda: parse_choices("--precision", "fp32,bf16,fp32", PRECISIONS),
    ):
        with pytest.raises(SpecError, match="twice"):
            call()


@pytest.mark.parametrize("text", ["8XB", "", "-1GiB", "GiB", "0GiB", "8", "8 GiB extra"])
def test_parse_budget_rejects(text):
    with pytest.raises(SpecError) as info:
        parse_budget(text)
    message = str(info.value)
    assert repr(text) in message and "--budget" in message
    assert "\n" not in message


# ----- parse_int_list / parse_choices / parse_preset -------------------------------------------


def test_parse_int_list():
    assert parse_int_list("--batch", "1,2,4") == [1, 2, 4]
    assert parse_int_list("--batch", " 8 , 16 ") == [8, 16]
    assert parse_int_list("--accum", "64") == [64]
    assert parse_int_list("--warmup", "0", minimum=0) == [0]


@pytest.mark.parametrize(
    "text, named",
    [
        ("0", "0"),
        ("-1", "-1"),
        ("1,0", "0"),
        ("two", "'two'"),
        ("1.5", "'1.5'"),
        ("1,,2", "'1,,2'"),
        ("", "''"),
    ],
)
def test_parse_int_list_rejects(text, named):
    with pytest.raises(SpecError) as info:
        parse_int_list("--batch", text)
    message = str(info.value)
    assert message.startswith("--batch ") and named in message
    assert "\n" not in message


def test_parse_choices():
    assert parse_choices("--precision", "fp32,bf16", PRECISIONS) == ["fp32", "bf16"]
    assert parse_choices("--compile", "off", COMPILE_MODES) == ["off"]
    with pytest.raises(SpecError) as info:
        parse_choices("--precision", "fp32,fp8", PRECISIONS)
    message = str(info.value)
    assert "'fp8'" in message
    assert all(p in message for p in PRECISIONS)  # says what is allowed


def test_parse_preset():
    for name in PRESETS:
        assert parse_preset(name) == name
    with pytest.raises(SpecError, match="'nope'.*tiny"):
        parse_preset("nope")


# ----- parse_attention --------------------------------------------------------------------------


def test_parse_attention():
    assert parse_attention("none", "ddpm-cifar10", 32) == ["none"]
    assert parse_attention("preset", "ddpm-cifar10", 32) == ["16"]
    assert parse_attention("preset", "tiny", 16) == ["8"]
    # Normalised: sorted from the largest resolution down, so "8+16" and "16+8" are one spec.
    assert parse_attention("16+8", "ddpm-cifar10", 32) == ["16+8"]
    assert parse_attention("8+16", "ddpm-cifar10", 32) == ["16+8"]
    assert parse_attention("none,16,32+4", "ddpm-cifar10", 32) == ["none", "16", "32+4"]
    assert parse_attention("16", "tiny", 16) == ["16"]


def test_parse_attention_rejects_unvisited_resolution():
    with pytest.raises(SpecError) as info:
        parse_attention("12", "ddpm-cifar10", 32)
    message = str(info.value)
    assert "12" in message and "32, 16, 8, 4" in message
    with pytest.raises(SpecError, match="12.*16, 8"):
        parse_attention("16+12", "tiny", 16)


@pytest.mark.parametrize("text", ["abc", "16+", "16x8", "-16"])
def test_parse_attention_rejects_malformed(text):
    with pytest.raises(SpecError) as info:
        parse_attention(text, "ddpm-cifar10", 32)
    assert repr(text) in str(info.value)


# ----- parse_device / parse_image_size ----------------------------------------------------------


def test_parse_device_cpu_and_auto():
    assert parse_device("cpu") == "cpu"
    assert parse_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


@NO_GPU
@pytest.mark.parametrize("text", ["cuda", "cuda:0", "cuda:3"])
def test_parse_device_cuda_without_gpu(text):
    with pytest.raises(SpecError) as info:
        parse_device(text)
    message = str(info.value)
    assert text in message and "cpu" in message


@pytest.mark.parametrize("text", ["tpu", "gpu", "cuda:x", "CPU0"])
def test_parse_device_rejects_unknown(text):
    with pytest.raises(SpecError) as info:
        parse_device(text)
    assert repr(text) in str(info.value)


def test_parse_image_size():
    assert parse_image_size(None, "ddpm-cifar10") == 32
    assert parse_image_size(None, "tiny") == 16
    assert parse_image_size(64, "ddpm-cifar10") == 64
    assert parse_image_size(16, "tiny") == 16


@pytest.mark.parametrize("preset, size", [("ddpm-cifar10", 30), ("tiny", 15), ("tiny", 0)])
def test_parse_image_size_rejects(preset, size):
    with pytest.raises(SpecError) as info:
        parse_image_size(size, preset)
    message = str(info.value)
    assert message.startswith(f"--image-size {size}") and "\n" not in message


def test_image_size_checked_against_requested_attention_not_presets():
    args = build_parser("t", "", {}).parse_args(
        ["--preset", "tiny", "--image-size", "10", "--attention", "none", "--device", "cpu"]
    )
    (spec,) = specs_from_args(args)
    assert spec.image_size == 10 and spec.unet_config().attention_resolutions == ()


# ----- expand_grid, names, unet_config ---------------------------------------------------------


def test_expand_grid_product_and_order():
    base = BenchSpec(preset="tiny", image_size=16, attention="8")
    specs = expand_grid(base, batch=[1, 2, 4], accum=[1, 8], precision=["fp32", "bf16"])
    assert len(specs) == 3 * 2 * 2
    # The first axis varies slowest, the last fastest.
    assert [(s.batch, s.accum, s.precision) for s in specs[:5]] == [
        (1, 1, "fp32"),
        (1, 1, "bf16"),
        (1, 8, "fp32"),
        (1, 8, "bf16"),
        (2, 1, "fp32"),
    ]
    assert specs[-1].batch == 4 and specs[-1].accum == 8 and specs[-1].precision == "bf16"
    assert all(s.preset == "tiny" and s.attention == "8" for s in specs)  # the base's values
    assert len({s.spec_id for s in specs}) == len(specs)
    assert expand_grid(base) == [base]
    assert expand_grid(base, batch=[]) == []


def test_name_and_spec_id_are_stable():
    spec = BenchSpec(
        preset="tiny",
        image_size=16,
        batch=2,
        accum=4,
        precision="bf16",
        attention="16+8",
        device="cuda:1",
    )
    # --resume and the trace folders rely on these strings: they must not drift.
    assert spec.name == "tiny-16px-b2x4-bf16-attn16+8-compile-off-ckpt-off-cuda1"
    assert spec.spec_id == spec.name + "-seed0-steps1-warmup1-budget7976.96-context426"
    assert (
        BenchSpec(
            preset="tiny",
            image_size=16,
            batch=2,
            accum=4,
            precision="bf16",
            attention="16+8",
            device="cuda:1",
        ).spec_id
        == spec.spec_id
    )
    assert BenchSpec(**spec.to_dict()) == spec  # the worker's round trip through JSON fields


# Run settings: how a spec is run, in its id but not an axis.
VARIANTS = {
    "seed": 1,
    "measure_steps": 5,
    "warmup_steps": 0,
    "budget": 4096.0,
    "context_mib": 300.0,
    "find_max_batch": True,
    "predict_only": True,
}
AXIS_FIELDS = [f for f in dataclasses.fields(BenchSpec) if f.metadata.get("axis")]


def test_variants_cover_every_run_setting():
    # A new run setting needs a variant here, so the test below checks --resume tells it apart.
    assert set(VARIANTS) == {
        f.name for f in dataclasses.fields(BenchSpec) if not f.metadata.get("axis")
    }


@pytest.mark.parametrize("field", [f for f in VARIANTS if f != "context_mib"])
def test_spec_id_distinct_across_run_settings(field):
    assert BenchSpec().replace(**{field: VARIANTS[field]}).spec_id != BenchSpec().spec_id


@pytest.mark.parametrize("field", AXIS_FIELDS, ids=[f.name for f in AXIS_FIELDS])
def test_every_axis_is_in_the_name(field):
    """Any axis, a new one too, tells specs apart in the readable name (repeat: in the id)."""
    other_value = field.default + 1 if isinstance(field.default, int) else field.default + "x"
    other_value = {"card": "t4"}.get(field.name, other_value)  # a card is one of bench.cards
    other = BenchSpec().replace(**{field.name: other_value})
    assert other.spec_id != BenchSpec().spec_id
    if field.name != "repeat":
        assert other.name != BenchSpec().name


def test_spec_id_distinct_across_context():
    assert BenchSpec().replace(context_mib=300.0).spec_id != BenchSpec().spec_id


def test_unet_config_reflects_axes():
    spec = BenchSpec(preset="ddpm-cifar10", image_size=32, attention="16+8", checkpointing="on")
    config = spec.unet_config()
    assert config.attention_resolutions == (16, 8)
    assert config.gradient_checkpointing is True
    assert config.base_channels == PRESETS["ddpm-cifar10"].base_channels

    plain = spec.replace(attention="none", checkpointing="off", image_size=64).unet_config()
    assert plain.attention_resolutions == () and plain.gradient_checkpointing is False
    assert plain.image_size == 64

    tiny = BenchSpec(preset="tiny", image_size=16, attention="8")
    assert tiny.unet_config() == PRESETS["tiny"]
    assert tiny.attention_resolutions == (8,)
    assert tiny.replace(batch=4, accum=8).effective_batch == 32


def test_train_config_is_the_spec_in_trainconfig_names():
    spec = BenchSpec(
        batch=4, accum=3, precision="bf16", seed=7, ranks=2, parallel="ddp", grad_sync="every"
    )
    config = spec.train_config(lr=1e-3, lr_warmup_steps=5)
    assert (
        config.batch_size,
        config.accum_steps,
        config.precision,
        config.seed,
        config.grad_sync,
        config.lr,
        config.lr_warmup_steps,
    ) == (4, 3, "bf16", 7, "every", 1e-3, 5)
    assert config.effective_batch * spec.ranks == spec.effective_batch
    # An axis's field is the spec's to say: a second route to it is refused.
    with pytest.raises(TypeError, match="accum_steps.*spec.replace"):
        spec.train_config(accum_steps=1)
