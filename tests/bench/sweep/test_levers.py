"""The memory levers' options (--optimizer, --ema, --ema-dtype, --attention-backend,
--channels-last): every training harness takes them and bench.sampling none; a bad value, a
missing optional package, a backend this CPU lacks or an implementation without SDPA is one line
and exit status 2, with nothing written."""

from __future__ import annotations

import importlib.util

import pytest

from bench import loss as loss_command
from bench import memory as memory_command
from bench import profile as profile_command
from bench import sampling as sampling_command
from bench import throughput as throughput_command
from tests.helpers.cli_checks import check_one_line_error, snapshot

LEVERS = ("--optimizer", "--ema", "--ema-dtype", "--attention-backend", "--channels-last")
TRAINING = (memory_command, throughput_command, loss_command, profile_command)


@pytest.mark.parametrize("command", TRAINING, ids=lambda c: c.__name__)
def test_every_training_harness_takes_the_levers(command, capsys):
    with pytest.raises(SystemExit):
        command.main(["--help"])
    text = capsys.readouterr().out
    assert all(flag in text for flag in LEVERS)


def test_sampling_takes_none_of_them(capsys):
    with pytest.raises(SystemExit):
        sampling_command.main(["--help"])
    text = capsys.readouterr().out
    assert not any(flag in text for flag in LEVERS)


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--optimizer", "adam"], "--optimizer 'adam' is not allowed: choose from adamw,"),
        (["--ema", "gpu"], "--ema 'gpu' is not allowed: choose from device, cpu, off"),
        (["--ema-dtype", "fp16"], "--ema-dtype 'fp16' is not allowed"),
        (["--attention-backend", "xformers"], "--attention-backend 'xformers' is not allowed"),
        (["--channels-last", "yes"], "--channels-last 'yes' is not allowed"),
        (["--attention-backend", "efficient"], "efficient does not run on the CPU"),
        (
            ["--attention-backend", "math", "--impl", "lucidrains"],
            "--impl lucidrains computes attention with einsum",
        ),
        (
            ["--attention-backend", "math", "--impl", "guided-diffusion"],
            "--impl guided-diffusion computes attention with einsum",
        ),
    ],
)
def test_bad_lever_values_are_one_line(argv, says, tmp_path, capsys):
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as info:
        memory_command.main(["--preset", "tiny", "--inline", "--out", str(tmp_path), *argv])
    captured = capsys.readouterr()
    check_one_line_error(says, info.value.code, captured.err, captured.out)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "name, package, extra",
    [
        ("adamw8bit", "bitsandbytes", "bnb"),
        ("ao-adamw4bit", "torchao", "torchao"),
        ("lion", "lion_pytorch", "lion"),
        ("prodigy", "prodigyopt", "prodigy"),
    ],
)
def test_a_missing_optimizer_package_names_its_extra(
    name, package, extra, monkeypatch, tmp_path, capsys
):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == package else find_spec(n, *a)
    )
    with pytest.raises(SystemExit) as info:
        memory_command.main(["--preset", "tiny", "--optimizer", name, "--out", str(tmp_path)])
    captured = capsys.readouterr()
    check_one_line_error(
        f"--optimizer {name} needs the", info.value.code, captured.err, captured.out
    )
    assert f"ddpm-bench[{extra}]" in captured.err
