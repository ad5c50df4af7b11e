"""--impl package.module:callable: a user's factory runs in every harness, and each way it can be
unusable is one line and exit status 2 before any row is written."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench import memory, throughput
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

    class DropPath(Net):  # timm's and DiT's pattern: rates read from a tensor while building
        def __init__(self, depth=4):
            super().__init__()
            self.rates = [x.item() for x in torch.linspace(0, 0.1, depth)]

    class BatchNormed(Net):  # BatchNorm1d trains at batch 2, not at batch 1
        def __init__(self):
            super().__init__()
            self.norm = nn.BatchNorm1d(8)

        def forward(self, x, t):
            h = self.a(x)
            return self.b(h + self.norm(h.mean((2, 3)))[:, :, None, None])

    class ValueReading(Net):  # reads a value in its forward: fake tensors have none
        def forward(self, x, t):
            h = self.a(x)
            return self.b(h / h.abs().max().item() if h.abs().max().item() > 1e6 else h)

    class FirstOnly(Net):  # a loss against it would broadcast over the batch
        def forward(self, x, t):
            return super().forward(x, t)[:1]

    class Integers(Net):
        def forward(self, x, t):
            return super().forward(x, t).long()

    class Parameterless(nn.Module):
        def forward(self, x, t):
            return x * 0.5

    def frozen():
        return Net().requires_grad_(False)

    number = 3
    """
)


# Factories whose code ends, interrupts or stalls the process it runs in.
ENDINGS = {
    "exit_at_import": "import sys\nsys.exit(0)\n",
    "exit_in_factory": "import sys\n\ndef make():\n    sys.exit(3)\n",
    "os_exit_at_import": "import os\nos._exit(0)\n",
    "interrupting": "def make():\n    raise KeyboardInterrupt\n",
    # Says where it is built, and prints: the command's stdout holds its answer alone.
    "telling": """
        import os
        from mynets import Net

        def make():
            with open(os.environ["BUILT_IN"], "a") as f:
                f.write(f"{os.getpid()}\\n")
            print("building the model")
            return Net()
    """,
    "hanging": """
        import os, time
        from pathlib import Path

        def make():
            if os.environ.get("HANG_MARK"):
                Path(os.environ["HANG_MARK"]).touch()
            time.sleep(1000)
    """,
}


@pytest.fixture
def user_path(tmp_path, monkeypatch):
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "mynets.py").write_text(FACTORY)
    (folder / "broken.py").write_text("import no_such_package_here\n")
    for name, text in ENDINGS.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(text))
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
        throughput.main(
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
        (
            "mynets:wrong_shape",
            None,
            "shape (8, 3, 8, 8) like x_t; a fp32 training forward of a (8, 3, 8, 8) batch "
            "returned (8, 8, 8, 8)",
        ),
        ("mynets:make", "typo.json", "rejects its arguments from --model-config"),
    ],
)
def test_an_unusable_factory_is_one_line_before_any_row(user_path, capsys, impl, config, says):
    args = ["--impl", impl] + (["--model-config", str(user_path / config)] if config else [])
    captured = _main(args, user_path, capsys)
    check_one_line_error(says, 2, captured.err, captured.out)


@pytest.mark.parametrize(
    "impl, extra, status, says",
    [
        # A false success before: exit 0 with nothing written; sys.exit(3): exit 3, no message.
        ("exit_at_import:make", [], 2, "--impl exit_at_import:make: its code called sys.exit(0)"),
        ("exit_in_factory:make", [], 2, "--impl exit_in_factory:make: its code called sys.exit(3)"),
        ("interrupting:make", [], 130, "Interrupted (SIGINT) while the specs were checked"),
        ("hanging:make", ["--timeout", "5"], 2, "took longer than --timeout 5 s; it was stopped"),
    ],
)
def test_user_code_that_ends_or_stalls_the_check_is_one_line(
    user_path, capsys, impl, extra, status, says
):
    """Any exit from the factory's code while its model is checked is one line naming --impl
    (exit 2), an interrupt one line and 130, a hang bounded by --timeout; nothing written."""
    before = snapshot(user_path)
    with pytest.raises(SystemExit) as info:
        throughput.main(
            ["--impl", impl, *extra, "--preset", "ddpm-cifar10", "--image-size", "8"]
            + ["--attention", "none", "--device", "cpu", "--inline", "--out", str(user_path)]
        )
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert info.value.code == status and captured.out == "", captured.err
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in captured.err, lines
    assert snapshot(user_path) == before


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background job inherits it ignored


@pytest.mark.parametrize("case", ["os._exit(0) at import", "Ctrl-C during the check"])
def test_a_process_ending_or_interrupted_check_is_one_line(user_path, tmp_path, case):
    """As a user runs it, in a process of its own: os._exit(0) at import was exit 0 with
    nothing written; a real Ctrl-C while a factory builds was a traceback."""
    mark = tmp_path / "building"
    impl = "os_exit_at_import:make" if case.startswith("os") else "hanging:make"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(user_path)])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.throughput", "--impl", impl, "--out", str(tmp_path / "o")]
        + ["--preset", "ddpm-cifar10", "--image-size", "8", "--attention", "none"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**env, "HANG_MARK": str(mark)},
        preexec_fn=_default_sigint,
    )
    if case.startswith("Ctrl-C"):
        deadline = time.monotonic() + 240
        while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and "Traceback" not in err, err
    if case.startswith("os"):
        assert proc.returncode == 2 and "--impl os_exit_at_import:make: the process" in lines[0]
    else:
        assert proc.returncode == 130 and lines[0].startswith("Interrupted (SIGINT)"), err
    assert not (tmp_path / "o").exists()


def test_a_model_that_reads_values_in_its_forward_is_checked_on_real_tensors(user_path):
    """Fake tensors cannot run it, real ones can: it trains (bench.loss) and samples
    (bench.sampling), where it was refused (DataDependentOutputException) before."""
    from bench import loss, sampling

    args = ["--impl", "mynets:ValueReading", "--preset", "ddpm-cifar10", "--image-size", "8"]
    args += ["--attention", "none", "--precision", "fp32", "--device", "cpu", "--inline"]
    (row,) = loss.main([*args, "--batch", "2", "--steps", "1", "--out", str(user_path / "l")])
    assert row["status"] == "ok", row["error"]
    sample = ["--sampler", "ddim", "--sampling-steps", "2", "--batch", "2", "--steps", "1"]
    (row,) = sampling.main([*args, *sample, "--warmup", "0", "--out", str(user_path / "s")])
    assert row["status"] == "ok", row["error"]


def test_the_params_column_counts_the_model_the_spec_process_built(
    user_path, tmp_path, capsys, monkeypatch
):
    """The sweep never builds a model to count it: it crashed on a model that reads values
    while built, ran the user's code in the command's process (its prints on stdout) and,
    outside --timeout, built for minutes after a spec had timed out."""
    built_in = tmp_path / "built_in.txt"
    monkeypatch.setenv("BUILT_IN", str(built_in))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(user_path)]))
    args = ["--impl", "telling:make", "--batch", "2", "--precision", "fp32", "--predict-only"]
    args += ["--preset", "ddpm-cifar10", "--image-size", "8", "--attention", "none"]
    (row,) = memory.main([*args, "--card", "rtx3070", "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert row["status"] == "ok", row["error"]
    # conv 3 -> 8 and conv 8 -> 3, 3x3 with biases, counted by hand
    assert row["params"] == (3 * 8 * 9 + 8) + (8 * 3 * 9 + 3) == 443
    assert "building the model" not in captured.out and "building the model" in captured.err
    builders = built_in.read_text().split()
    assert str(os.getpid()) not in builders  # built by the check's process and the spec's
    assert len(set(builders)) == 2, builders


@pytest.mark.parametrize(
    "impl, batch, says",
    [
        # Passed a batch-1 check, then the loss broadcast it and the row said ok.
        ("mynets:FirstOnly", "4", "a fp32 training forward of a (4, 3, 8, 8) batch returned (1, "),
        ("mynets:Integers", "2", "in floating point; a fp32 training forward of a (2, 3, 8, 8) "),
        ("mynets:Parameterless", "2", "the model has no parameters that train (none)"),
        ("mynets:frozen", "2", "no parameters that train (all 4 of its parameter tensors are"),
        ("mynets:BatchNormed", "1", "(1, 3, 8, 8) batch fails (ValueError: Expected more than 1"),
    ],
)
def test_a_model_is_checked_as_the_spec_calls_it(user_path, capsys, impl, batch, says):
    """At the spec's batch and precision, its output exactly the input's shape and floating
    point, with parameters that train: what fails is one line before any row."""
    captured = _main(["--impl", impl, "--batch", batch, "--precision", "fp32"], user_path, capsys)
    check_one_line_error(says, 2, captured.err, captured.out)


@pytest.mark.parametrize("impl", ["mynets:DropPath", "mynets:BatchNormed"])
def test_a_model_that_runs_for_real_is_not_refused(user_path, impl):
    """A model that reads a tensor's value while built (refused on fake tensors before), or
    one that needs a batch above 1 (refused at the check's batch 1 before), trains and is
    predicted."""
    args = ["--impl", impl, "--batch", "2", "--precision", "fp32", "--steps", "1"]
    args += ["--preset", "ddpm-cifar10", "--image-size", "8", "--attention", "none"]
    args += ["--device", "cpu", "--inline", "--out", str(user_path / "out")]
    (row,) = throughput.main(args)
    assert row["status"] == "ok", row["error"]
    (row,) = memory.main([*args, "--predict-only", "--card", "rtx3070"])
    assert row["status"] == "ok" and row["fits"], row["error"]


def test_a_factory_takes_a_size_the_preset_cannot_halve(user_path):
    """12 px: the preset's four levels cannot halve it, but the factory's model is not the
    preset's, and runs there (refused by the preset's check before)."""
    args = ["--impl", "mynets:make", "--image-size", "12", "--batch", "2", "--accum", "1"]
    args += ["--device", "cpu", "--inline", "--predict-only", "--out", str(user_path / "out")]
    (row,) = memory.main(args)
    assert row["status"] == "ok" and row["image_size"] == 12, row["error"]


@pytest.mark.parametrize(
    "impl, body, says",
    [
        ("ddpm", '{"base_chanels": 64}', "unknown UNetConfig field 'base_chanels'"),
        ("ddpm", '{"dropout": 2}', "dropout=2 is not allowed"),
        (
            "ddpm",
            '{"base_channels": "16"}',
            "base_channels='16' is not allowed: it must be an integer",
        ),
        ("ddpm", '{"norm_groups": 16.0}', "norm_groups=16.0 is not allowed: it must be an integer"),
        (
            "ddpm",
            '{"num_res_blocks": true}',
            "num_res_blocks=True is not allowed: it must be an integer",
        ),
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
    if "field" in says or "must be" in says:
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
