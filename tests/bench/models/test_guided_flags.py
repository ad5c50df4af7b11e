"""--impl guided-diffusion's flags: the named configs of the released models (parameter counts
pinned, built on the meta device), flag text typed as its own argparse types it, the axes mapped
onto flags, and every refusal one line."""

from __future__ import annotations

import argparse
import json
import shlex

import pytest
import torch

from bench import model_config
from bench.model_config import ModelConfigError
from bench.models import guided_flags
from bench.models.workload import parameter_count
from bench.parsers import SpecError
from tests.helpers.guided import TINY, guided_spec, needs_guided, tiny_file

pytestmark = needs_guided

# The released models (openai/guided-diffusion's README) and improved-diffusion's README models:
# the ADM paper gives 296M, 422M, 554M, 559M, 312M and 309M; improved-diffusion's checkpoints
# are named 50M, 100M, 270M and 100M.
COUNTS = {
    "adm-imagenet-64": 295_904_454,
    "adm-imagenet-128": 421_529_606,
    "adm-imagenet-256": 553_838_086,
    "adm-imagenet-256-uncond": 552_814_086,
    "adm-imagenet-512": 558_997_638,
    "adm-upsampler-64-256": 311_795_910,
    "adm-upsampler-128-512": 308_835_270,
    "adm-lsun-bedroom": 552_814_086,
    "adm-lsun-cat": 552_814_086,
    "adm-lsun-horse": 552_814_086,
    "iddpm-cifar10": 52_546_438,
    "iddpm-imagenet-64": 121_063_942,
    "iddpm-imagenet-64-cond": 273_049_350,
    "iddpm-lsun-bedroom": 113_676_678,
}


def their_model(text: str) -> torch.nn.Module:
    """The model its own scripts build from flag text: its argparse (add_dict_to_argparser
    over its defaults) parses the flags, its create_model_and_diffusion builds, on meta."""
    su = guided_flags.script_util()
    tokens = shlex.split(model_config.resolve(text).read_text(), comments=True)
    sr = "--large_size" in tokens
    defaults = su.sr_model_and_diffusion_defaults() if sr else su.model_and_diffusion_defaults()
    parser = argparse.ArgumentParser()
    su.add_dict_to_argparser(parser, defaults)
    args, _ = parser.parse_known_args(tokens)  # the iddpm files also give --lr
    flags = su.args_to_dict(args, defaults.keys())
    create = su.sr_create_model_and_diffusion if sr else su.create_model_and_diffusion
    with torch.device("meta"):
        return create(**flags)[0]


def test_every_named_config_is_pinned():
    assert sorted(model_config.named()) == sorted(COUNTS)


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_named_configs_build_the_released_models(name):
    spec = guided_spec(name)
    assert parameter_count(spec) == COUNTS[name]
    assert sum(p.numel() for p in their_model(name).parameters()) == COUNTS[name]
    text = model_config.resolve(name).read_text()
    assert "Source: github.com/openai/" in text and f"{COUNTS[name]:,}" in text


def test_the_named_configs_take_their_image_size_and_attention_from_their_flags():
    spec = guided_spec("adm-upsampler-128-512")
    assert (spec.image_size, spec.attention) == (512, "32+16")
    assert guided_spec("adm-imagenet-64").image_size == 64


def test_flag_text_is_typed_as_its_argparse_types_it(tmp_path):
    """Our typing of the text against its own parser's, flag by flag."""
    path = tiny_file(tmp_path, TINY + "--use_fp16 true --dropout 0.25 --ema_rate 0.9999,0.99\n")
    ours = guided_flags.read(path)
    su = guided_flags.script_util()
    parser = argparse.ArgumentParser()
    su.add_dict_to_argparser(parser, {**su.model_and_diffusion_defaults(), "ema_rate": "0.9999"})
    theirs = vars(
        parser.parse_args(
            shlex.split(TINY.split("=", 1)[1].strip().strip('"'))
            + ["--use_fp16", "true", "--dropout", "0.25", "--ema_rate", "0.9999,0.99"]
        )
    )
    assert ours.model == {k: theirs[k] for k in ours.model}
    assert ours.ema_rates == [0.9999, 0.99]
    assert ours.given >= {"image_size", "use_fp16", "ema_rate"}


def test_json_toml_and_flag_text_read_alike(tmp_path):
    flags = guided_flags.read(tiny_file(tmp_path))
    given = {k: flags.model[k] for k in flags.given}
    as_json = tmp_path / "tiny.json"
    as_json.write_text(json.dumps({**given, "channel_mult": [1, 2], "attention_resolutions": 8}))
    as_toml = tmp_path / "tiny.toml"
    as_toml.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in given.items()))
    for path in (as_json, as_toml):
        assert guided_flags.read(str(path)).model == flags.model


def test_the_axes_map_onto_its_flags(tmp_path):
    path = tiny_file(tmp_path)
    spec = guided_spec(path, channels="64", res_blocks="2", image_size=32, attention="32+16")
    flags = guided_flags.flags_of(spec)
    assert flags.model["num_channels"] == 64 and flags.model["num_res_blocks"] == 2
    assert (flags.model["image_size"], flags.model["attention_resolutions"]) == (32, "32,16")
    wide = (
        "--image_size 32 --num_channels 64 --num_res_blocks 2 --channel_mult 1,2 "
        "--attention_resolutions 32,16 --num_heads 2 --learn_sigma True --class_cond True "
        "--diffusion_steps 50 --noise_schedule cosine"
    )
    theirs = their_model(tiny_file(tmp_path, wide, "wide.flags"))
    assert parameter_count(spec) == sum(p.numel() for p in theirs.parameters())
    assert flags.model["use_fp16"] is False  # --precision fp32
    assert guided_flags.flags_of(spec.replace(precision="fp16")).model["use_fp16"] is True


@pytest.mark.parametrize(
    "text, words",
    [
        ("--num_chanels 64", ["unknown flag --num_chanels", "did you mean --num_channels?"]),
        ("--classifier_scale 1.0", ["unknown flag --classifier_scale"]),
        ("--image_size 64 --large_size 256", ["unknown flag --image_size", "--large_size"]),
        ("--class_cond maybe", ["--class_cond 'maybe' is not a boolean"]),
        ("--num_channels 12.5", ["--num_channels '12.5' is not an integer"]),
        ("--dropout lots", ["--dropout 'lots' is not a finite number"]),
        ("--lr nan", ["--lr 'nan' is not a finite number"]),
        ("--batch_size 128", ["--batch_size is set by bench's --batch and --accum"]),
        ("--microbatch 4", ["--microbatch is set by bench's --batch"]),
        ("--noise_schedule sigmoid", ["--noise_schedule sigmoid", "linear and cosine"]),
        ("--schedule_sampler loss-second-moment", ["is not modelled here"]),
        ("--ema_rate 1.5", ["--ema_rate 1.5", "[0, 1)"]),
        ("--dropout 1.0", ["--dropout 1.0", "[0, 1)"]),
        ("python scripts/image_train.py", ["'python' is not a flag"]),
        ("--image_size", ["--image_size has no value"]),
        ('--image_size "64', ["is not valid flag text"]),
    ],
)
def test_a_bad_flag_is_one_line_naming_it(tmp_path, text, words):
    with pytest.raises(ModelConfigError) as error:
        guided_flags.read(tiny_file(tmp_path, text))
    line = str(error.value)
    assert "\n" not in line and line.startswith("--model-config ")
    for word in words:
        assert word in line


def test_json_values_of_the_wrong_type_are_one_line(tmp_path):
    for value, words in (
        ({"num_channels": "64"}, "--num_channels '64' is not an integer"),  # text is typed
        ({"class_cond": 1}, "--class_cond 1 is not a boolean"),
        ({"num_res_blocks": True}, "--num_res_blocks True is not an integer"),
        ({"noise_schedule": 3}, "--noise_schedule 3 is not text"),
    ):
        path = tmp_path / "c.json"
        path.write_text(json.dumps(value))
        if isinstance(value.get("num_channels"), str):
            assert guided_flags.read(str(path)).model["num_channels"] == 64
            continue
        with pytest.raises(ModelConfigError, match=words.replace("(", r"\(")):
            guided_flags.read(str(path))


@pytest.mark.parametrize(
    "axes, text, words",
    [
        ({"precision": "bf16"}, TINY, ["--precision bf16", "give fp32 or fp16"]),
        ({}, TINY + "--use_fp16 True", ["sets --use_fp16 True", "contradicts --precision fp32"]),
        (
            {"checkpointing": "on"},
            TINY + "--use_checkpoint False",
            ["contradicts --checkpointing on"],
        ),
        ({"image_size": 17}, TINY, ["--image-size 17", "multiple of 2"]),
        ({"image_size": 48}, TINY.replace(" --channel_mult 1,2", ""), ["64, 128, 256 and 512"]),
        ({"attention": "none"}, TINY, ["--attention none", "at least one resolution"]),
        ({"attention": "4"}, TINY, ["attention resolution 4 is never visited", "16, 8"]),
        ({"heads": "4"}, TINY + "--num_head_channels 16", ["--heads 4", "--num_head_channels 16"]),
        ({"channel_mults": "1,2"}, "--large_size 64 --small_size 32", ["--channel-mults"]),
        ({}, TINY + "--timestep_respacing ddim30", ["--timestep_respacing ddim30", "stride"]),
    ],
)
def test_settling_the_axes_refuses_in_one_line(tmp_path, axes, text, words):
    with pytest.raises(SpecError) as error:
        guided_spec(tiny_file(tmp_path, text), **axes)
    line = str(error.value)
    assert "\n" not in line
    for word in words:
        assert word in line


def test_a_precision_the_file_agrees_with_is_taken(tmp_path):
    spec = guided_spec(tiny_file(tmp_path, TINY + "--use_fp16 True"), precision="fp16")
    assert spec.precision == "fp16" and guided_flags.flags_of(spec).model["use_fp16"]


# ----- bad input on the command line: one line, exit 2, nothing written ---------------------------


def run_memory(tmp_path, capsys, *args) -> str:
    from bench import memory

    out = tmp_path / "r"
    with pytest.raises(SystemExit) as exit_:
        memory.main([*args, "--predict-only", "--out", str(out)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and not out.exists()
    return lines[0]


@pytest.mark.parametrize(
    "text, args, words",
    [
        ("--num_channels abc", [], ["--num_channels 'abc' is not an integer"]),
        ("--num_chanels 64", [], ["unknown flag --num_chanels", "--num_channels?"]),
        (TINY, ["--precision", "fp32,bf16"], ["--precision bf16"]),
        (TINY + "--use_fp16 True", ["--precision", "fp32"], ["contradicts --precision fp32"]),
        (
            "--image_size 100 --channel_mult 1,2,2,2",
            [],
            ["--image_size 100", "halves it 3 times", "multiple of 8"],
        ),
        (
            TINY.replace("--channel_mult 1,2", "--channel_mult 1,1,2,2,4,4"),
            ["--image-size", "16"],
            ["--image-size 16", "6 levels halves it 5 times", "multiple of 32"],
        ),
        (TINY, ["--ranks", "2", "--parallel", "ddp"], ["runs one rank here"]),
        (TINY, ["--compile", "default"], ["trains eager"]),
    ],
)
def test_bad_input_on_the_command_line(tmp_path, capsys, text, args, words):
    path = tiny_file(tmp_path, text)
    line = run_memory(tmp_path, capsys, "--impl", "guided-diffusion", "--model-config", path, *args)
    for word in words:
        assert word in line


def test_a_missing_package_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(guided_flags, "installed", lambda: False)
    line = run_memory(tmp_path, capsys, "--impl", "guided-diffusion")
    assert "pip install 'ddpm-bench[guided-diffusion]'" in line


def test_a_named_config_belongs_to_guided_diffusion(tmp_path, capsys):
    line = run_memory(tmp_path, capsys, "--model-config", "adm-imagenet-64")
    assert (
        "adm-imagenet-64 is a named guided-diffusion config: give --impl guided-diffusion" in line
    )
    line = run_memory(tmp_path, capsys, "--impl", "guided-diffusion", "--model-config", "adm-x")
    assert "cannot read it" in line and "adm-imagenet-64" in line  # the names it knows
