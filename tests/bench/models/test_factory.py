"""--impl package.module:callable: a user's factory runs in every harness, and each way it can be
unusable is one line and exit status 2 before any row is written."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench import throughput as throughput_command
from bench.models.factory import FactoryModel
from tests.helpers.cli_checks import check_one_line_error, snapshot

ROOT = Path(__file__).resolve().parents[3]
FACTORY = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, width=8, channels=3):
            super().__init__()
            self.a = nn.Conv2d(channels, width, 3, padding=1)
            self.b = nn.Conv2d(width, channels, 3, padding=1)

        def forward(self, x, t):
            return self.b(torch.relu(self.a(x)))

    class Output:
        def __init__(self, sample):
            self.sample = sample

    class WithSample(Net):
        def forward(self, x, t):
            return Output(super().forward(x, t))

    def make(width=8, channels=3):
        return Net(width, channels)

    def make_with_sample():
        return WithSample()

    class Features(Net):
        def forward(self, x, t):
            return self.a(x)

    def wrong_shape():
        return Features()

    def not_a_module():
        return 3

    number = 3
    """
)


@pytest.fixture
def user_path(tmp_path, monkeypatch):
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "mynets.py").write_text(FACTORY)
    (folder / "broken.py").write_text("import no_such_package_here\n")
    (folder / "width.json").write_text('{"width": 4}')
    (folder / "typo.json").write_text('{"widht": 4}')
    monkeypatch.syspath_prepend(str(folder))
    return folder


def test_a_factory_built_with_its_config_and_dot_sample_unwrapped(user_path):
    import torch

    model = FactoryModel("mynets:make", str(user_path / "width.json"))
    assert model.net.a.out_channels == 4  # the file's keyword argument reached the factory
    x = torch.randn(2, 3, 8, 8)
    wrapped = FactoryModel("mynets:make_with_sample")
    assert torch.equal(wrapped(x, torch.zeros(2)), wrapped.net.b(torch.relu(wrapped.net.a(x))))


def _main(args, out, capsys):
    before = snapshot(out)
    with pytest.raises(SystemExit):
        throughput_command.main(
            [*args, "--preset", "ddpm-cifar10", "--image-size", "8", "--attention", "none"]
            + ["--device", "cpu", "--inline", "--out", str(out)]
        )
    captured = capsys.readouterr()
    assert snapshot(out) == before  # nothing written
    return captured


@pytest.mark.parametrize(
    "impl, config, says",
    [
        ("broken:make", None, "module 'broken' does not import (ModuleNotFoundError"),
        ("mynets:missing", None, "'mynets' has no attribute 'missing'"),
        ("mynets:number", None, "'number' is not callable"),
        ("mynets:not_a_module", None, "returned a int, not a torch.nn.Module"),
        ("mynets:wrong_shape", None, "shape (1, 3, 8, 8) like x_t; it returned (1, 8, 8, 8)"),
        ("mynets:make", "typo.json", "rejects its arguments from --model-config"),
    ],
)
def test_an_unusable_factory_is_one_line_before_any_row(user_path, capsys, impl, config, says):
    args = ["--impl", impl] + (["--model-config", str(user_path / config)] if config else [])
    captured = _main(args, user_path, capsys)
    check_one_line_error(says, 2, captured.err, captured.out)


@pytest.mark.parametrize(
    "impl, body, says",
    [
        ("ddpm", '{"base_chanels": 64}', "unknown UNetConfig field 'base_chanels'"),
        ("ddpm", '{"dropout": 2}', "dropout=2 is not allowed"),
        ("ddpm", '{"image_size": 64}', "field 'image_size' is an axis of its own"),
        ("ddpm", "[1, 2]", "must hold a table of keyword arguments, not a list"),
        ("ddpm", "{not json", "is not valid JSON"),
        ("ddpm,mynets:make", '{"width": 4}', "give a single --impl with it"),
    ],
)
def test_a_bad_model_config_is_one_line_naming_file_and_field(user_path, capsys, impl, body, says):
    path = user_path / "model.json"
    path.write_text(body)
    captured = _main(["--impl", impl, "--model-config", str(path)], user_path, capsys)
    check_one_line_error(says, 2, captured.err, captured.out)
    if "field" in says:
        assert str(path) in captured.err


def test_a_factory_trains_in_spec_processes_and_its_file_names_the_spec(user_path, tmp_path):
    """End to end, in a fresh process per spec: the factory is imported there too."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(user_path)])}
    out = tmp_path / "out"
    args = ["--preset", "ddpm-cifar10", "--image-size", "8", "--attention", "none"]
    args += ["--device", "cpu", "--precision", "fp32", "--out", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "bench.throughput", "--impl", "mynets:make"]
        + ["--model-config", str(user_path / "width.json"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (row,) = csv.DictReader((out / "throughput.csv").open())
    assert row["status"] == "ok" and row["impl"] == "mynets:make"
    assert "-mynets.make-configwidth" in row["spec_id"]
    # The same file name with other contents is another spec (--resume keeps them apart).
    from bench.model_config import tag

    first = tag(str(user_path / "width.json"))
    assert f"-config{first}-" in row["spec_id"] and len(first) == len("width") + 8
    (user_path / "width.json").write_text('{"width": 6}')
    assert tag(str(user_path / "width.json")) != first
