"""`python -m ddpm.cli.sample` as a user runs it: a subprocess, its images, exit status, stderr."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.helpers.cli_checks import check_one_line_error, snapshot

# A checkpoint with T = 20, so DDPM (one model call per timestep) samples in well under a second.
T = 20
# Many subprocesses share a small CPU (and other jobs): one thread each, or OpenMP threads
# spin against each other and a one-second run takes a minute.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(module: str, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )


def grid_size(n: int, columns: int, side: int = 16, pad: int = 2) -> tuple[int, int]:
    """(width, height) of torchvision's make_grid: `pad` pixels around and between images."""
    rows = -(-n // columns)
    return columns * (side + pad) + pad, rows * (side + pad) + pad


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """Two training steps of the tiny preset, saved by Trainer.save as `ddpm.cli.train` saves them.
    Made in-process: a training subprocess would spend seconds importing what is loaded here."""
    from ddpm.config import PRESETS, TrainConfig
    from ddpm.schedule import NoiseSchedule
    from ddpm.train import Trainer
    from ddpm.unet import UNet

    path = tmp_path_factory.mktemp("sample_cli") / "run" / "last.pt"
    with torch.random.fork_rng(devices=[]):  # leave the global generator as other tests expect
        torch.manual_seed(0)
        trainer = Trainer(
            UNet(PRESETS["tiny"]),
            NoiseSchedule.linear(timesteps=T),
            TrainConfig(batch_size=4, ema_decay=0.9),
            device="cpu",
        )
        for _ in range(2):
            trainer.step(torch.rand(4, 1, 16, 16) * 2 - 1)
        trainer.save(path)
    return path


@pytest.fixture(scope="module")
def sampled(checkpoint) -> dict:
    """The DDIM and DDPM runs, side by side (each spends most of its time importing torch)."""
    root = checkpoint.parent.parent
    jobs = {
        "ddim": ("--sampler", "ddim", "--steps", "5", "-n", "6", "--out", root / "ddim.png"),
        "ddpm": (
            "--sampler",
            "ddpm",
            "--variance",
            "beta",
            "--no-ema",
            "-n",
            "10",
            "--x0-every",
            "5",
            "--out",
            root / "sub" / "ddpm.png",
        ),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            k: pool.submit(cli, "ddpm.cli.sample", "--checkpoint", checkpoint, *v, cwd=root)
            for k, v in jobs.items()
        }
        return {"root": root, **{k: f.result() for k, f in futures.items()}}


def test_ddim_writes_grid(sampled):
    result = sampled["ddim"]
    assert result.returncode == 0, result.stderr
    with Image.open(sampled["root"] / "ddim.png") as image:
        assert image.size == grid_size(6, columns=3)  # ceil(sqrt(6)) = 3 columns, 2 rows
    assert "6 ddim samples (5 steps, EMA weights" in result.stdout


def test_ddpm_writes_grid_and_x0_strip(sampled):
    result = sampled["ddpm"]
    assert result.returncode == 0, result.stderr
    out = sampled["root"] / "sub"  # a folder that did not exist: created
    with Image.open(out / "ddpm.png") as image:
        assert image.size == grid_size(10, columns=4)
    # Every 5th of T = 20 steps: t = 15, 10, 5, 0, one row each, 8 images (STRIP_IMAGES) across.
    with Image.open(out / "ddpm_x0.png") as strip:
        assert strip.size == grid_size(4 * 8, columns=8)
    assert f"{10} ddpm samples ({T} steps, raw weights" in result.stdout
    assert "t = 15, 10, 5, 0" in result.stdout


# -- bad input: one line, exit 2, no traceback, nothing written ------------------------------------

BAD = {
    # name: (arguments after --checkpoint <good>, text the error line must contain).
    "n 0": (["-n", "0"], "0"),
    "n negative": (["-n", "-3"], "-3"),
    "steps 0": (["--steps", "0"], "0"),
    "ddim steps over T": (["--steps", "50"], "50"),
    "sampler": (["--sampler", "euler"], "euler"),
    "variance": (["--sampler", "ddpm", "--variance", "large"], "large"),
    "eta": (["--eta", "2"], "2"),
    "x0 strip with ddim": (["--x0-every", "5"], "--x0-every"),
    "not an image suffix": (["--out", "{tmp}/samples.txt"], "samples.txt"),
    "missing checkpoint": (["--checkpoint", "{tmp}/no-such.pt"], "no-such.pt"),
    "corrupt checkpoint": (["--checkpoint", "{tmp}/corrupt.pt"], "corrupt.pt"),
    "checkpoint that is a FIFO": (["--checkpoint", "{tmp}/fifo.pt"], "is not a regular file"),
    "checkpoint that runs code": (["--checkpoint", "{tmp}/evil.pt"], "was refused"),
    # Refused from its config alone: building 10^6 residual blocks took a minute, then bad_alloc.
    "absurd model in a checkpoint": (
        ["--checkpoint", "{tmp}/absurd.pt"],
        "num_res_blocks=1000000 is not allowed: at most 64",
    ),
    # Weights that do not fit: what mismatched, in one line, and no warning before it.
    "weights of another width": (
        ["--checkpoint", "{tmp}/wide.pt"],
        "conv_in.weight has shape (16, 1, 3, 3), not (32, 1, 3, 3)",
    ),
    "weights renamed": (
        ["--checkpoint", "{tmp}/renamed.pt"],
        "the weights do not fit the UNet: missing conv_in.weight; unexpected extra.weight.",
    ),
    "complex weights": (["--checkpoint", "{tmp}/complex.pt"], "conv_in.bias holds torch.complex64"),
    "out is a folder": (["--out", "{tmp}/grid.png"], "grid.png is a folder"),
    "out under a file": (["--out", "{tmp}/afile/samples.png"], "afile"),
    "device name": (["--device", "gpu0"], "gpu0"),
}
if not torch.cuda.is_available():
    BAD["cuda without GPU"] = (["--device", "cuda"], "cuda")


@pytest.fixture
def bad_folder(tmp_path, checkpoint) -> Path:
    changes = {
        "absurd": lambda data: data["unet_config"].update(num_res_blocks=10**6),
        "wide": lambda data: data["unet_config"].update(base_channels=32),
        "renamed": lambda data: data["model"].update(
            {"extra.weight": data["model"].pop("conv_in.weight")}
        ),
        "complex": lambda data: data["model"].update(
            {"conv_in.bias": data["model"]["conv_in.bias"].to(torch.complex64)}
        ),
    }
    for name, change in changes.items():
        data = torch.load(checkpoint, weights_only=True)
        change(data)
        torch.save(data, tmp_path / f"{name}.pt")
    os.mkfifo(tmp_path / "fifo.pt")  # there, but no file to read: "does not exist" was wrong
    (tmp_path / "afile").write_text("a file, not a folder")
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    torch.save({"payload": _RunsCode()}, tmp_path / "evil.pt")
    (tmp_path / "grid.png").mkdir()
    return tmp_path


class _RunsCode:
    def __reduce__(self):  # what a malicious pickle does: call a function while loading
        return (print, ("this ran while loading",))


def bad_args(name: str, tmp: Path, checkpoint: Path) -> list[str]:
    # A valid request but for the case's own arguments: argparse keeps the last of a repeated
    # option, so a case may override --checkpoint, --steps or --out.
    return [
        "--checkpoint",
        str(checkpoint),
        "--steps",
        "5",
        "--out",
        str(tmp / "out" / "samples.png"),
        *(a.replace("{tmp}", str(tmp)) for a in BAD[name][0]),
    ]


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_one_line_exit_2_nothing_written(checkpoint, bad_folder, name, capsys):
    # In-process, so a dozen cases cost milliseconds rather than a torch import each; any
    # exception other than SystemExit(2) would fail the test, so "no traceback" holds here too.
    from ddpm.cli.sample import main

    before = snapshot(bad_folder)
    with pytest.raises(SystemExit) as exit_info:
        main(bad_args(name, bad_folder, checkpoint))
    captured = capsys.readouterr()
    check_one_line_error(BAD[name][1], exit_info.value.code, captured.err, captured.out)
    assert snapshot(bad_folder) == before, "nothing may be written on bad input"


def test_bad_input_as_subprocess(checkpoint, bad_folder):
    # End to end, as a user meets it: one error from argparse, one found after loading.
    before = snapshot(bad_folder)
    names = ("n 0", "ddim steps over T")
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = pool.map(
            lambda name: cli(
                "ddpm.cli.sample", *bad_args(name, bad_folder, checkpoint), cwd=bad_folder
            ),
            names,
        )
        for name, result in zip(names, results, strict=True):
            check_one_line_error(BAD[name][1], result.returncode, result.stderr, result.stdout)
    assert snapshot(bad_folder) == before


# -- interruption: one line, the shell's status for the signal, nothing half-written --------------


def _default_sigint():
    # A background job inherits SIGINT ignored; a user's terminal delivers it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_is_one_line_with_the_signal_status(tmp_path, sig):
    from ddpm.config import PRESETS, TrainConfig
    from ddpm.schedule import NoiseSchedule
    from ddpm.train import Trainer
    from ddpm.unet import UNet

    # T = 1000 model calls: sampling is still running when the signal comes.
    with torch.random.fork_rng(devices=[]):
        Trainer(
            UNet(PRESETS["tiny"]),
            NoiseSchedule.linear(timesteps=1000),
            TrainConfig(batch_size=4),
            device="cpu",
        ).save(tmp_path / "last.pt")
    out = tmp_path / "new" / "samples.png"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ddpm.cli.sample",
            "--checkpoint",
            str(tmp_path / "last.pt"),
            "--sampler",
            "ddpm",
            "-n",
            "32",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    try:
        while not out.parent.exists():  # made by the last check before sampling starts
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.01)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == f"interrupted ({sig.name}): wrote nothing"
    assert stdout == "" and list(out.parent.iterdir()) == []


# -- a closed pipe: the file written, no traceback, 141 -------------------------------------------


def test_a_closed_stdout_costs_no_file_and_shows_no_traceback(checkpoint, tmp_path):
    """`python -m ddpm.cli.sample ... | head -0`: the grid is written and the summary line that
    nobody reads ends in os.devnull; exit status 141 (128 + SIGPIPE), as a shell reports it."""
    out = tmp_path / "grid.png"
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ddpm.cli.sample",
                "--checkpoint",
                str(checkpoint),
                "--steps",
                "2",
                "-n",
                "4",
                "--device",
                "cpu",
                "--out",
                str(out),
            ],
            cwd=tmp_path,
            env=ENV,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        os.close(write)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 141, stderr
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    with Image.open(out) as image:
        assert image.size == grid_size(4, columns=2)
