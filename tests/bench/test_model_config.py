"""--model-config FILE: JSON or TOML read alike, UNetConfig's fields for --impl ddpm, and the tag
that tells two files apart in spec names."""

from __future__ import annotations

import pytest

from bench import model_config
from bench.spec import BenchSpec
from ddpm.config import PRESETS


def test_json_and_toml_give_the_same_table(tmp_path):
    (tmp_path / "a.json").write_text('{"base_channels": 64, "channel_mults": [1, 2]}')
    (tmp_path / "a.toml").write_text("base_channels = 64\nchannel_mults = [1, 2]\n")
    read = model_config.load
    assert read(str(tmp_path / "a.json")) == read(str(tmp_path / "a.toml")) != {}


def test_ddpm_fields_replace_the_presets(tmp_path):
    path = tmp_path / "unet.toml"
    path.write_text("base_channels = 64\nchannel_mults = [1, 2]\nnum_heads = 2\n")
    spec = BenchSpec(image_size=16, attention="8", model_config=str(path))
    expected = PRESETS["ddpm-cifar10"].replace(
        image_size=16,
        attention_resolutions=(8,),
        base_channels=64,
        channel_mults=(1, 2),
        num_heads=2,
    )
    assert spec.unet_config() == expected
    # Another implementation reads the file as its own arguments: the preset stays ours.
    assert spec.replace(impl="lucidrains").unet_config().base_channels == 128


def test_the_tag_is_the_stem_and_the_contents_hash(tmp_path):
    import hashlib

    path = tmp_path / "unet.json"
    path.write_text("{}")
    assert model_config.tag(str(path)) == "unet" + hashlib.sha256(b"{}").hexdigest()[:8]
    assert model_config.tag(str(tmp_path / "gone.json")) == "gonemissing"


def test_an_unreadable_file_is_one_line(tmp_path):
    with pytest.raises(model_config.ModelConfigError, match="cannot read it"):
        model_config.load(str(tmp_path / "nope.json"))
    (tmp_path / "bad.toml").write_text("x = [")
    with pytest.raises(model_config.ModelConfigError, match="is not valid TOML"):
        model_config.load(str(tmp_path / "bad.toml"))


def test_flag_text_reads_as_a_shell_passes_it_to_argparse(tmp_path):
    path = tmp_path / "readme.txt"
    path.write_text(
        "# copied from a README\n"
        'MODEL_FLAGS="--image_size 64 --num_channels 128"  # the model\n'
        "--learn_sigma True \\\n  --dropout=0.1 --num_channels 192\n"
    )
    flags = model_config.load(str(path))
    # Text as argparse receives it; a flag given twice keeps its last value.
    assert flags == {
        "image_size": "64",
        "num_channels": "192",
        "learn_sigma": "True",
        "dropout": "0.1",
    }
    path.write_text("--image_size 64 --class_cond")
    with pytest.raises(model_config.ModelConfigError, match="--class_cond has no value"):
        model_config.load(str(path))
    path.write_text("python scripts/image_train.py --image_size 64")
    with pytest.raises(model_config.ModelConfigError, match="'python' is not a flag"):
        model_config.load(str(path))


def test_a_name_is_a_named_config_unless_a_file_has_it(tmp_path, monkeypatch):
    import hashlib

    shipped = model_config.named()["adm-imagenet-256"]
    assert model_config.load("adm-imagenet-256")["image_size"] == "256"
    digest = hashlib.sha256(shipped.read_bytes()).hexdigest()[:8]
    assert model_config.tag("adm-imagenet-256") == "adm-imagenet-256" + digest
    assert model_config.is_named("adm-imagenet-256")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adm-imagenet-256").write_text('{"image_size": 64}')  # a file of that name wins
    assert model_config.load("adm-imagenet-256") == {"image_size": 64}
    assert not model_config.is_named("adm-imagenet-256")


def _fifo(tmp_path):
    import os

    path = tmp_path / "pipe.json"
    os.mkfifo(path)  # no writer: a blocking open or read would wait for ever
    return path


@pytest.mark.parametrize(
    "make, says",
    [
        (lambda tmp: tmp, "is not a regular file"),
        (_fifo, "is not a regular file"),
        (lambda tmp: "/dev/zero", "is not a regular file"),  # a read that never ends
        (lambda tmp: _write(tmp / "deep.json", "[" * 100_000), "is not valid JSON: nested too"),
        (lambda tmp: _write(tmp / "deep.toml", "a = " + "[" * 100_000), "is not valid TOML"),
        (
            lambda tmp: _write(tmp / "inline.toml", "a = " + "{b = " * 3000 + "1" + "}" * 3000),
            "is not valid TOML: nested too deeply",
        ),
        (lambda tmp: _write(tmp / "big.json", " " * (2**20) + "{}"), "is larger than 1 MiB"),
    ],
)
def test_only_a_bounded_regular_file_is_read(tmp_path, make, says):
    """What the path is and what it holds are the user's: a folder, a FIFO, a device, a
    nesting deeper than the parser's recursion or a huge file are one line, never a hang, a
    read until memory runs out or a RecursionError's traceback."""
    path = str(make(tmp_path))
    with pytest.raises(model_config.ModelConfigError, match=says) as info:
        model_config.load(path)
    assert str(info.value).startswith(f"--model-config {path}") and "\n" not in str(info.value)
    if "regular" in says or "larger" in says:
        assert model_config.tag(path).endswith("missing")  # the tag reads the same way


def _write(path, text):
    path.write_text(text)
    return path


def test_a_file_nested_too_deeply_is_one_line_from_the_command_line(tmp_path, capsys):
    from bench import memory
    from tests.helpers.cli_checks import check_one_line_error

    _write(tmp_path / "deep.toml", "a = " + "[" * 100_000)
    with pytest.raises(SystemExit) as info:
        memory.main(["--model-config", str(tmp_path / "deep.toml"), "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    check_one_line_error("is not valid TOML: nested too deeply", info.value.code, *captured[::-1])
    assert not (tmp_path / "o").exists()
