"""The architecture axes (--channels, --channel-mults, --res-blocks, --heads, --dropout): each
changes the model as a config written out by hand says, the spec's name and id tell the models
apart, every bad value is one line and exit 2 before anything is written (each harness's real
command line once, the other values through bench.memory's main in this process), and a 256 px
prediction with new levels runs."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import memory as memory_command
from bench.core import axes
from bench.spec import BenchSpec
from bench.sweep.cli import build_parser, specs_from_args
from ddpm.config import PRESETS, UNetConfig
from ddpm.unet import UNet
from tests.helpers.cli_checks import check_one_line_error, exit_of

ROOT = Path(__file__).resolve().parents[2]


def spec_of(*argv: str) -> BenchSpec:
    (spec,) = specs_from_args(build_parser("t", "", {}).parse_args([*argv, "--device", "cpu"]))
    return spec


def n_params(config: UNetConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in UNet(config).parameters())


def test_wider_ddpm_256_is_the_large_preset_written_out():
    config = spec_of("--preset", "ddpm-256", "--channels", "192").unet_config()
    # ddpm-256's time embedding is ch -> 4 ch, as the paper's: it widens with the channels.
    written = UNetConfig(
        image_size=256,
        base_channels=192,
        channel_mults=(1, 1, 2, 2, 4, 4),
        num_res_blocks=2,
        attention_resolutions=(16,),
        num_heads=1,
        dropout=0.0,
        time_embed_dim=192,
        time_hidden_dim=768,
    )
    assert config == written == PRESETS["ddpm-256-large"]
    assert n_params(config) == 255_677_955


def test_every_override_reaches_the_config_as_written_by_hand():
    spec = spec_of(
        "--preset",
        "ddpm-cifar10",
        "--channels",
        "64",
        "--channel-mults",
        "1,2,4",
        "--res-blocks",
        "3",
        "--heads",
        "4",
        "--dropout",
        "0.25",
        "--attention",
        "8",
        "--checkpointing",
        "on",
    )
    written = UNetConfig(
        image_size=32,
        in_channels=3,
        base_channels=64,
        channel_mults=(1, 2, 4),
        num_res_blocks=3,
        attention_resolutions=(8,),
        num_heads=4,
        dropout=0.25,
        time_embed_dim=64,  # the CIFAR-10 model ties its time embedding to ch
        time_hidden_dim=256,
        gradient_checkpointing=True,
    )
    assert spec.unet_config() == written
    # Heads split channels and dropout has no weights: neither changes the count.
    same_weights = written.replace(num_heads=1, dropout=0.0)
    assert n_params(spec.unet_config()) == n_params(same_weights)
    assert n_params(spec.unet_config()) != n_params(PRESETS["ddpm-cifar10"])


def test_wider_cifar_model_counts_as_diffusers_counts_it():
    # diffusers' UNet2DModel always ties the time embedding to the first width (ch -> 4 ch):
    # the CIFAR-10 layout at ch 64, written out apart from bench.models.impl.
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        theirs = diffusers.UNet2DModel(
            sample_size=32,
            in_channels=3,
            out_channels=3,
            layers_per_block=2,
            block_out_channels=(64, 128, 128, 128),
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=None,
        )
    ours = n_params(spec_of("--preset", "ddpm-cifar10", "--channels", "64").unet_config())
    assert ours == sum(p.numel() for p in theirs.parameters())


def test_a_preset_with_its_own_time_embedding_keeps_it():
    # ddpm-mnist's embedding (128 -> 512) is not its width's (64): a new width leaves it be.
    config = spec_of("--preset", "ddpm-mnist", "--channels", "128").unet_config()
    assert config == PRESETS["ddpm-mnist"].replace(base_channels=128)
    assert (config.time_embed_dim, config.time_hidden_dim) == (128, 512)


def test_new_levels_move_the_attention_and_image_size_checks():
    # ddpm-256's 6 levels need a multiple of 32; 4 levels take 48 px and visit 48, 24, 12, 6.
    spec = spec_of(
        "--preset",
        "ddpm-256",
        "--channel-mults",
        "1,2,2,2",
        "--image-size",
        "48",
        "--attention",
        "12",
    )
    assert spec.unet_config().resolutions == (48, 24, 12, 6)
    assert spec.unet_config().attention_resolutions == (12,)
    assert spec_of("--preset", "ddpm-256", "--channel-mults", "1,1,2,2,4").attention == "16"


def test_names_and_ids_tell_the_models_apart():
    plain = spec_of("--preset", "ddpm-256")
    named = {
        ("--channels", "192"): "-channels192",
        ("--channel-mults", "1,1,2,2,4"): "-channel-mults1.1.2.2.4",
        ("--res-blocks", "3"): "-res-blocks3",
        ("--heads", "4"): "-heads4",
        ("--dropout", "0.1"): "-dropout0.1",
    }
    ids = {plain.spec_id}
    for argv, part in named.items():
        spec = spec_of("--preset", "ddpm-256", *argv)
        assert spec.name == plain.name + part
        ids.add(spec.spec_id)
    assert len(ids) == len(named) + 1
    # The preset's own value is the preset's model: one spec, so --resume does not run it twice.
    assert spec_of("--preset", "ddpm-256", "--channels", "128", "--dropout", "0") == plain
    assert spec_of("--preset", "ddpm-256", "--channel-mults", "1, 1,2,2,4,4") == plain
    # Each is a column of every table.
    assert {"channels", "channel_mults", "res_blocks", "heads", "dropout"} <= set(axes())


def run_bench(*argv: str, tmp_path: Path, module: str = "bench.memory"):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", module, *argv, "--device", "cpu", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    return done, out


BAD = {
    "channels-zero": (["--channels", "0"], "--channels 0: base_channels=0"),
    "channels-groups": (["--channels", "48"], "--channels 48: norm_groups=32 does not divide 48"),
    "channels-list": (["--channels", "64,128"], "--channels '64,128' is not allowed: it takes one"),
    "mults-words": (["--channel-mults", "a,b"], "--channel-mults 'a,b' is not allowed"),
    "mults-zero": (["--channel-mults", "1,0"], "--channel-mults 1,0: channel_mults=(1, 0)"),
    "res-blocks": (["--res-blocks", "0"], "--res-blocks 0: num_res_blocks=0"),
    # Absurd sizes: a storage-size overflow traceback, or minutes spent building, before.
    "channels-absurd": (
        ["--channels", "1000000000"],
        "--channels 1000000000: base_channels=1000000000 x channel_mults 2 = 2,000,000,000 "
        "channels is not allowed: at most 32,768 per level",
    ),
    "mults-absurd": (
        ["--channel-mults", "1,100000000"],
        "--channel-mults 1,100000000: base_channels=128 x channel_mults 100000000",
    ),
    "res-blocks-absurd": (
        ["--res-blocks", "1000000", "--timeout", "10"],
        "--res-blocks 1000000: num_res_blocks=1000000 is not allowed: at most 64",
    ),
    "heads-divide": (["--heads", "3"], "--heads 3: num_heads=3 does not divide the 256 channels"),
    "heads-word": (["--heads", "two"], "--heads 'two' is not allowed: give an integer"),
    "dropout": (["--dropout", "1.5"], "--dropout 1.5: dropout=1.5 is not allowed"),
    "size-given": (
        ["--channel-mults", "1,2,2,2,2,2,2", "--image-size", "48"],
        "--image-size 48: image_size=48 is not allowed: 7 levels halve it 6 times",
    ),
    "size-preset": (
        ["--channel-mults", "1,2,2,2,2,2,2"],
        "--channel-mults 1,2,2,2,2,2,2: image_size=32 is not allowed",
    ),
    "attention": (
        ["--channel-mults", "1,2", "--attention", "8"],
        "--attention 8 is never visited by ddpm-cifar10 with --channel-mults 1,2 at 32px",
    ),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_architecture_is_one_line_before_anything_runs(name, tmp_path, capsys):
    argv, says = BAD[name]
    out = tmp_path / "out"
    argv = [*argv, "--predict-only", "--device", "cpu", "--out", str(out)]
    check_one_line_error(says, *exit_of(memory_command.main, argv, capsys))
    assert not out.exists()


def test_bad_architecture_from_the_real_command_line(tmp_path):
    """One of the cases above as `python -m bench.memory`: the process's own exit and stderr."""
    argv, says = BAD["channels-absurd"]
    done, out = run_bench(*argv, "--predict-only", tmp_path=tmp_path)
    check_one_line_error(says, done.returncode, done.stderr, done.stdout)
    assert not out.exists()


@pytest.mark.parametrize(
    "module", ["bench.throughput", "bench.loss", "bench.sampling", "bench.profile"]
)
def test_every_harness_takes_the_architecture(module, tmp_path):
    done, out = run_bench("--preset", "tiny", "--heads", "3", module=module, tmp_path=tmp_path)
    check_one_line_error("--heads 3: num_heads=3", done.returncode, done.stderr, done.stdout)
    assert not out.exists()


def test_256px_prediction_with_new_levels_runs(tmp_path):
    argv = ["--preset", "ddpm-256", "--channel-mults", "1,1,2,2,4", "--batch", "1"]
    done, out = run_bench(*argv, "--accum", "1", "--predict-only", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    (row,) = csv.DictReader((out / "memory.csv").open())
    assert row["status"] == "ok" and row["channel_mults"] == "1,1,2,2,4"
    expected = PRESETS["ddpm-256"].replace(channel_mults=(1, 1, 2, 2, 4))
    assert int(row["params"]) == n_params(expected)
    assert "ddpm-256 with channel mults 1,1,2,2,4 at 256px" in done.stdout
