"""UNetConfig and TrainConfig: presets as published, and every bad value refused with a message
that names it."""

import re

import pytest

from ddpm.config import PRECISIONS, PRESETS, TrainConfig, UNetConfig

# --------------------------------------------------------------------------- presets and derived


def test_cifar_preset_is_the_ddpm_paper_configuration():
    # Ho et al. 2020, Appendix B: 32x32, ch 128, ch_mult (1,2,2,2), 2 res blocks, attention at
    # 16x16 only, dropout 0.1.
    c = PRESETS["ddpm-cifar10"]
    assert (c.image_size, c.in_channels, c.base_channels) == (32, 3, 128)
    assert c.channel_mults == (1, 2, 2, 2) and c.num_res_blocks == 2
    assert c.attention_resolutions == (16,) and c.dropout == 0.1
    assert c.resolutions == (32, 16, 8, 4)
    assert c.level_channels == (128, 256, 256, 256)


def test_every_preset_is_valid_and_named():
    assert {"ddpm-cifar10", "ddpm-mnist", "tiny"} <= set(PRESETS)
    for config in PRESETS.values():
        # Rebuilding runs __post_init__'s validation again on the exact same values.
        assert UNetConfig(**{f: getattr(config, f) for f in config.__dataclass_fields__}) == config


def test_lists_are_stored_as_tuples_so_configs_stay_hashable():
    c = UNetConfig(channel_mults=[1, 2, 2, 2], attention_resolutions=[16])
    assert c.channel_mults == (1, 2, 2, 2) and c.attention_resolutions == (16,)
    assert hash(c) == hash(UNetConfig())
    t = TrainConfig(betas=[0.9, 0.99])
    assert t.betas == (0.9, 0.99)


def test_replace_validates_too():
    c = PRESETS["tiny"].replace(base_channels=32)
    assert c.base_channels == 32 and c.level_channels == (32, 64)
    # tiny has 2 levels: the side must be even, and its attention resolution 8 must be visited.
    with pytest.raises(ValueError, match=r"image_size=17 .*multiple of 2"):
        PRESETS["tiny"].replace(image_size=17)
    with pytest.raises(ValueError, match=r"resolution 8 is never visited.*visits 18, 9\."):
        PRESETS["tiny"].replace(image_size=18)


def test_train_config_effective_batch_and_replace():
    t = TrainConfig(batch_size=2, accum_steps=64)
    assert t.effective_batch == 128
    assert t.replace(accum_steps=4).effective_batch == 8
    assert PRECISIONS == ("fp32", "tf32", "fp16", "bf16")


# --------------------------------------------------------------------------- UNetConfig errors


@pytest.mark.parametrize(
    "changes, pattern",
    [
        # 4 levels halve 3 times: the side must be a multiple of 8.
        ({"image_size": 30}, r"image_size=30 .*multiple of 8"),
        (
            {"attention_resolutions": (12,)},
            r"attention resolution 12 is never visited.*visits 32, 16, 8, 4\.",
        ),
        ({"base_channels": 48}, r"norm_groups=32 does not divide 48 channels"),
        ({"norm_groups": 24}, r"norm_groups=24 does not divide 128 channels"),
        ({"num_heads": 3}, r"num_heads=3 does not divide the 256 channels at resolution 16"),
        ({"image_size": 0}, r"image_size=0 is not allowed"),
        ({"image_size": -32}, r"image_size=-32 is not allowed"),
        ({"base_channels": -1}, r"base_channels=-1 is not allowed"),
        ({"num_res_blocks": 0}, r"num_res_blocks=0 is not allowed"),
        ({"in_channels": 0}, r"in_channels=0 is not allowed"),
        ({"num_heads": 0}, r"num_heads=0 is not allowed"),
        ({"norm_groups": 0}, r"norm_groups=0 is not allowed"),
        ({"time_hidden_dim": 0}, r"time_hidden_dim=0 is not allowed"),
        ({"channel_mults": ()}, r"channel_mults=\(\) is not allowed"),
        ({"channel_mults": (1, 0, 2)}, r"channel_mults=\(1, 0, 2\) is not allowed"),
        ({"dropout": 1.0}, r"dropout=1\.0 is not allowed"),
        ({"dropout": -0.1}, r"dropout=-0\.1 is not allowed"),
        ({"time_embed_dim": 33}, r"time_embed_dim=33 is not allowed"),
    ],
)
def test_bad_unet_config_names_the_value(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        UNetConfig(**changes)


def test_image_size_message_counts_levels():
    pattern = r"image_size=18 .*3 levels halve it 2 times.*multiple of 4"
    with pytest.raises(ValueError, match=pattern):
        UNetConfig(image_size=18, channel_mults=(1, 2, 2))


def test_attention_resolution_message_lists_visited_for_other_sizes():
    with pytest.raises(ValueError, match=re.escape("visits 64, 32, 16, 8.")):
        UNetConfig(image_size=64, attention_resolutions=(16, 4))


def test_heads_must_divide_the_middle_block_too():
    # Level 0 has 16 channels (16 heads divide it), the middle block 24 (they do not).
    pattern = "num_heads=16 does not divide the 24 channels of the middle block"
    with pytest.raises(ValueError, match=pattern):
        UNetConfig(
            image_size=32,
            base_channels=8,
            channel_mults=(2, 3),
            attention_resolutions=(32,),
            num_heads=16,
            norm_groups=8,
        )
    # Without attention the head count is irrelevant.
    UNetConfig(
        image_size=32,
        base_channels=8,
        channel_mults=(2, 3),
        attention_resolutions=(),
        num_heads=16,
        norm_groups=8,
    )


def test_valid_edge_configs_are_accepted():
    UNetConfig(dropout=0.0)
    UNetConfig(attention_resolutions=())
    UNetConfig(image_size=8, channel_mults=(1, 2, 2, 2), attention_resolutions=(1,))  # 8,4,2,1
    UNetConfig(
        image_size=64, channel_mults=(1, 2, 2, 2), attention_resolutions=(16, 8), num_heads=4
    )


# --------------------------------------------------------------------------- TrainConfig errors


@pytest.mark.parametrize(
    "changes, pattern",
    [
        ({"batch_size": 0}, r"batch_size=0 is not allowed"),
        ({"batch_size": -3}, r"batch_size=-3 is not allowed"),
        ({"accum_steps": -1}, r"accum_steps=-1 is not allowed"),
        ({"accum_steps": 0}, r"accum_steps=0 is not allowed"),
        (
            {"precision": "fp8"},
            r"precision='fp8' is not allowed: choose one of fp32, tf32, fp16, bf16\.",
        ),
        ({"precision": "FP16"}, r"precision='FP16' is not allowed"),
        ({"lr": 0}, r"lr=0 is not allowed"),
        ({"lr": -1e-4}, r"lr=-0\.0001 is not allowed"),
        ({"lr": float("nan")}, r"lr=nan is not allowed"),
        ({"grad_clip": 0}, r"grad_clip=0 is not allowed"),
        ({"grad_clip": -1.0}, r"grad_clip=-1\.0 is not allowed"),
        ({"weight_decay": -0.1}, r"weight_decay=-0\.1 is not allowed"),
        ({"betas": (0.9, 1.0)}, r"betas=\(0\.9, 1\.0\) is not allowed"),
        ({"betas": (0.9,)}, r"betas=\(0\.9,\) is not allowed"),
        ({"lr_warmup_steps": -1}, r"lr_warmup_steps=-1 is not allowed"),
        ({"ema_decay": 1.0}, r"ema_decay=1\.0 is not allowed"),
        ({"grad_sync": "first"}, r"grad_sync='first' is not allowed: choose one of last, every\."),
        ({"grad_sync": "Last"}, r"grad_sync='Last' is not allowed"),
    ],
)
def test_bad_train_config_names_the_value(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        TrainConfig(**changes)


def test_grad_clip_none_means_no_clipping_and_is_allowed():
    assert TrainConfig(grad_clip=None).grad_clip is None
    for precision in PRECISIONS:
        assert TrainConfig(precision=precision).precision == precision


def test_grad_sync_defaults_to_once_per_step():
    # Ranks average gradients once per optimizer step unless told to after every micro-batch.
    assert TrainConfig().grad_sync == "last"
    assert TrainConfig(grad_sync="every").grad_sync == "every"


# --------------------------------------------------------------------------- types, named


@pytest.mark.parametrize(
    "changes, pattern",
    [
        (
            {"base_channels": "16"},
            r"base_channels='16' is not allowed: it must be an integer, not text",
        ),
        ({"base_channels": 8.0}, r"base_channels=8\.0 is not allowed: it must be an integer"),
        ({"num_res_blocks": 1.5}, r"num_res_blocks=1\.5 is not allowed: it must be an integer"),
        ({"base_channels": float("nan")}, r"base_channels=nan is not allowed"),
        ({"image_size": float("inf")}, r"image_size=inf is not allowed"),
        (
            {"num_heads": True},
            r"num_heads=True is not allowed: it must be an integer, not true/false",
        ),
        ({"norm_groups": 16.0}, r"norm_groups=16\.0 is not allowed: it must be an integer"),
        (
            {"channel_mults": "1,2"},
            r"channel_mults='1,2' is not allowed: it must be a list of integers",
        ),
        ({"channel_mults": [1, "2"]}, r"channel_mults=\[1, '2'\] is not allowed: .*'2' is text"),
        ({"channel_mults": 2}, r"channel_mults=2 is not allowed: it must be a list of integers"),
        ({"attention_resolutions": [16.0]}, r"attention_resolutions=\[16\.0\] is not allowed"),
        ({"dropout": "0.1"}, r"dropout='0\.1' is not allowed: it must be a number, not text"),
        ({"dropout": float("nan")}, r"dropout=nan is not allowed"),
        ({"gradient_checkpointing": "yes"}, r"gradient_checkpointing='yes' is not allowed"),
    ],
)
def test_a_field_of_the_wrong_type_is_refused_by_name(changes, pattern):
    """JSON, TOML and checkpoints give any type: the field is named, never an operator."""
    with pytest.raises(ValueError, match=pattern):
        UNetConfig(**changes)


@pytest.mark.parametrize(
    "changes, pattern",
    [
        ({"batch_size": "2"}, r"batch_size='2' is not allowed: it must be an integer, not text"),
        ({"accum_steps": 2.0}, r"accum_steps=2\.0 is not allowed: it must be an integer"),
        ({"lr": "1e-3"}, r"lr='1e-3' is not allowed: it must be a number, not text"),
        ({"lr": float("inf")}, r"lr=inf is not allowed"),
        ({"weight_decay": float("nan")}, r"weight_decay=nan is not allowed"),
        ({"grad_clip": "1"}, r"grad_clip='1' is not allowed"),
        ({"betas": "0.9"}, r"betas='0\.9' is not allowed"),
        ({"lr_warmup_steps": 1.5}, r"lr_warmup_steps=1\.5 is not allowed"),
        ({"ema_warmup": 1}, r"ema_warmup=1 is not allowed: it must be true or false"),
    ],
)
def test_a_train_field_of_the_wrong_type_is_refused_by_name(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        TrainConfig(**changes)
