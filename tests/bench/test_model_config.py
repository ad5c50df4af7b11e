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
