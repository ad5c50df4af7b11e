"""`python -m bench.sampling` as a user runs it (a subprocess per sweep: result files, the
projection's closed form, every bad-input path) and bench.measure.quality's Frechet distance against
closed forms and real digits. Every sweep uses the tiny preset and a few timed steps."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import sampling as sampling_command
from bench.cards import CARDS
from bench.core import RunContext
from bench.harnesses import sampling
from bench.measure.quality import (
    DigitsJudge,
    digit_images,
    frechet_between,
    frechet_distance,
    gaussian,
    to_digit_inputs,
)
from bench.parsers import SpecError
from bench.passes import sampling as sampling_pass
from bench.predict import denoise
from bench.spec import BenchSpec
from bench.tables.results import ResultsTable
from ddpm.config import PRESETS, TrainConfig
from ddpm.schedule import NoiseSchedule
from ddpm.train import Trainer
from ddpm.unet import UNet
from tests.helpers.spies import spy_on

# One thread per process: on a small shared CPU, OpenMP threads spin against each other.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
BASE = [
    "--preset",
    "tiny",
    "--device",
    "cpu",
    "--batch",
    "2",
    "--measure-steps",
    "2",
    "--warmup",
    "1",
]
COLUMNS = ResultsTable(Path("."), "sampling", sampling.HARNESS.figure_columns).columns


def run(*args, out: Path, base=BASE) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench.sampling", *base, *map(str, args), "--out", str(out)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )


def rows_of(out: Path) -> list[dict]:
    with (out / "sampling.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def num(value: str) -> float:
    return float(value)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny model on a 50-step schedule, saved as ddpm.cli.train saves."""
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    torch.manual_seed(0)
    trainer = Trainer(
        UNet(PRESETS["tiny"]), NoiseSchedule.linear(timesteps=50), TrainConfig(batch_size=2)
    )
    trainer.save(path)
    return path


# ----- the sweep ---------------------------------------------------------------------------------


def test_sweep_writes_rows_with_the_projection(tmp_path):
    out = tmp_path / "r"
    proc = run("--sampler", "ddpm,ddim", "--sampling-steps", "5", out=out)
    assert proc.returncode == 0, proc.stderr
    rows = rows_of(out)
    assert [(r["sampler"], r["sampling_steps"]) for r in rows] == [
        ("ddpm", "1000"),
        ("ddim", "5"),
    ]  # ddpm: every timestep of T = 1000
    assert len({r["spec_id"] for r in rows}) == 2
    for r in rows:
        assert r["status"] == "ok", r["error"]
        assert r["preset"] == "tiny" and r["batch"] == "2" and r["measured_steps"] == "2"
        step_s, steps, batch = num(r["step_s"]), int(r["sampling_steps"]), int(r["batch"])
        assert 0 < num(r["step_s_min"]) <= step_s <= num(r["step_s_max"])
        assert num(r["warmup_s"]) > 0
        # The projection and its derived figures, in closed form.
        full = num(r["projected_full_run_s"])
        assert math.isclose(full, step_s * steps, rel_tol=1e-9)
        assert math.isclose(num(r["projected_s_per_image"]), full / batch, rel_tol=1e-9)
        assert math.isclose(num(r["projected_img_per_s"]), batch / full, rel_tol=1e-9)
        assert math.isclose(num(r["step_ms_per_image"]), step_s / batch * 1000, rel_tol=1e-9)
        # A CPU cannot give CUDA allocator figures, and quality needs --checkpoint: empty.
        for column in (
            "peak_alloc_mib",
            "peak_reserved_mib",
            "quality_samples",
            "frechet_digits",
            "frechet_digits_real",
        ):
            assert r[column] == ""
    report = (out / "sampling.md").read_text()
    assert "projected_full_run_s" in report and "PROJECTED" in report
    assert "python -m bench.sampling" in report and "--sampling-steps 5" in report
    assert (out / "sampling.json").exists()


def test_checkpoint_gives_quality_and_a_grid(tmp_path, checkpoint):
    # The preset, size, attention and schedule all come from the checkpoint.
    out = tmp_path / "r"
    proc = run(
        "--checkpoint",
        checkpoint,
        "--sampler",
        "ddpm,ddim",
        "--sampling-steps",
        "4",
        "--quality-samples",
        "8",
        "--inline",
        out=out,
        base=["--device", "cpu", "--batch", "2", "--measure-steps", "1", "--warmup", "0"],
    )
    assert proc.returncode == 0, proc.stderr
    rows = rows_of(out)
    assert [(r["preset"], r["sampler"], r["sampling_steps"]) for r in rows] == [
        ("tiny", "ddpm", "50"),
        ("tiny", "ddim", "4"),
    ]  # T = 50: the checkpoint's schedule
    for r in rows:
        assert r["status"] == "ok", r["error"]
        assert r["quality_samples"] == "8"
        # An untrained model draws noise: far from real digits, and farther than real digits.
        assert num(r["frechet_digits"]) > num(r["frechet_digits_real"]) > 0
    grids = sorted(p.name for p in (out / "sampling").rglob("*.png"))
    assert grids == [
        f"tiny-16px-b2x1-fp32-attn8-compile-off-ckpt-off-cpu-{s}.png" for s in ("ddim4", "ddpm50")
    ]


def test_specs_pair_each_sampler_with_its_steps():
    """ddpm takes every timestep of the schedule; ddim each --sampling-steps; the other axes
    multiply both."""
    args = sampling_command.build_sampling_parser().parse_args(
        ["--preset", "tiny", "--device", "cpu", "--batch", "1,4", "--sampling-steps", "10,50"]
    )
    specs = sampling_command.make_specs(args)
    assert [(s.batch, s.sampler, s.sampling_steps) for s in specs] == [
        (b, sampler, steps)
        for b in (1, 4)
        for sampler, steps in (("ddpm", 1000), ("ddim", 10), ("ddim", 50))
    ]
    # The defaults:
    assert all(s.measure_steps == 5 and s.warmup_steps == 2 and s.accum == 1 for s in specs)
    assert len({s.spec_id for s in specs}) == len(specs)
    args = sampling_command.build_sampling_parser().parse_args(["--sampler", "ddim"])
    assert [(s.preset, s.batch, s.sampling_steps) for s in sampling_command.make_specs(args)] == [
        ("ddpm-cifar10", 16, 10),
        ("ddpm-cifar10", 16, 50),
        ("ddpm-cifar10", 16, 100),
    ]


# ----- bad input: one line, exit 2, nothing written ------------------------------------------


def one_line_error(proc_or_capture, returncode: int) -> str:
    assert returncode == 2
    lines = proc_or_capture.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc_or_capture
    return lines[0]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--sampling-steps", "0"], ["--sampling-steps 0", ">= 1"]),
        (["--sampling-steps", "10,1001"], ["--sampling-steps 1001", "1000"]),
        (["--sampler", "euler"], ["--sampler 'euler'", "ddpm, ddim"]),
    ],
)
def test_bad_input_as_a_user_meets_it(tmp_path, args, words):
    out = tmp_path / "r"
    proc = run(*args, out=out)
    line = one_line_error(proc.stderr, proc.returncode)
    for word in words:
        assert word in line
    assert "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["--sampling-steps", "ten"], ["--sampling-steps 'ten'"]),
        (["--sampler", "ddpm,"], ["--sampler"]),
        (["--measure-steps", "0"], ["--measure-steps 0"]),
        (["--warmup", "-1"], ["--warmup -1"]),
        (["--accum", "2"], ["--accum 2"]),
        (["--checkpointing", "on"], ["--checkpointing on"]),
        (["--find-max-batch"], ["--find-max-batch applies to the predicted memory on a --card"]),
        (["--card", "rtx3070", "--find-max-batch"], ["--find-max-batch", "add --predict-only"]),
        (["--train-batch", "4"], ["--train-batch applies to the predicted memory on a --card"]),
        (["--budget", "4GiB"], ["--budget applies to the predicted memory on a --card"]),
        (["--cuda-context-mib", "300"], ["--cuda-context-mib applies", "--card"]),
        (["--card", "rtx3070", "--train-batch", "0"], ["--train-batch 0", ">= 1"]),
        (
            ["--card", "rtx3070", "--sampler", "ddim", "--train-batch", "4", "--resume"],
            ["--resume cannot tell a --train-batch row"],
        ),
        (
            ["--card", "rtx3070", "--train-batch", "4", "--sampler", "ddpm"],
            ["--train-batch models ddpm.cli.train's sampling pass", "--sampler ddim"],
        ),
        (["--quality-samples", "1"], ["--quality-samples 1"]),
        (["--batch", "0"], ["--batch 0"]),
        (["--precision", "fp8"], ["--precision 'fp8'"]),
        # Refused with DDIM's bound before, though no DDIM spec was asked for.
        (
            ["--sampler", "ddpm", "--sampling-steps", "2000"],
            ["--sampling-steps 2000 sets the steps of --sampler ddim; ddpm takes every one"],
        ),
    ],
)
def test_bad_input(tmp_path, capsys, args, words):
    out = tmp_path / "r"
    with pytest.raises(SystemExit) as exit_:
        sampling_command.main([*BASE, *args, "--out", str(out)])
    line = one_line_error(capsys.readouterr().err, exit_.value.code)
    for word in words:
        assert word in line
    assert not out.exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["--sampling-steps", "51"], ["--sampling-steps 51", "50 timesteps"]),
        (["--preset", "ddpm-mnist"], ["--preset ddpm-mnist", "tiny"]),
        (["--attention", "none"], ["--attention none", "attention 8"]),
        (["--image-size", "32"], ["--image-size 32", "16px"]),
        (["--channels", "32"], ["--channels does not apply with --checkpoint"]),
    ],
)
def test_bad_input_against_the_checkpoint(tmp_path, capsys, checkpoint, args, words):
    out = tmp_path / "r"
    with pytest.raises(SystemExit) as exit_:
        sampling_command.main(["--checkpoint", str(checkpoint), *args, "--out", str(out)])
    line = one_line_error(capsys.readouterr().err, exit_.value.code)
    for word in words:
        assert word in line
    assert not out.exists()


def test_bad_checkpoint_files(tmp_path, capsys):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    for path, word in (
        (corrupt, "corrupt"),
        (tmp_path / "missing.pt", "does not exist"),
        (tmp_path, "is a folder"),
    ):
        with pytest.raises(SystemExit) as exit_:
            sampling_command.main(["--checkpoint", str(path), "--out", str(tmp_path / "r")])
        assert word in one_line_error(capsys.readouterr().err, exit_.value.code)
        assert not (tmp_path / "r").exists()


# ----- the timed step is the sampler's step ----------------------------------------------------


@pytest.mark.parametrize("sampler, steps", [("ddpm", 6), ("ddim", 3)])
def test_timed_steps_follow_the_library_sampler(sampler, steps):
    """Stepping through two complete runs and into a third gives ddpm_sample / ddim_sample's
    images, run after run from one generator: what is timed is the library's sampler, step for
    step, and a new run starts from a fresh x_T once one is done."""
    from bench.models.workload import build_model
    from bench.spec import BenchSpec
    from ddpm.sample import ddim_sample, ddpm_sample

    schedule = NoiseSchedule.linear(timesteps=6)
    spec = BenchSpec(
        preset="tiny", image_size=16, attention="8", batch=2, sampler=sampler, sampling_steps=steps
    )
    model = build_model(spec)
    step = sampling_pass.denoising_steps(model, schedule, spec, torch.device("cpu"))
    taken = [step() for _ in range(2 * steps + 1)]
    assert [i for i, *_ in taken] == [*range(steps), *range(steps), 0]
    shape = (2, 1, 16, 16)
    generator = torch.Generator().manual_seed(spec.seed)
    for run in (1, 2):
        expected = (
            ddpm_sample(model, schedule, shape, generator=generator)
            if sampler == "ddpm"
            else ddim_sample(model, schedule, shape, steps=steps, generator=generator)
        )
        torch.testing.assert_close(taken[run * steps - 1][2], expected, rtol=0, atol=0)


def test_measure_times_the_shared_loop(monkeypatch):
    """bench.sampling's timed steps are steps of ddpm.sample.sample_progressive: warm-up and
    timed calls together take 1 + 3 = 4 steps, two complete DDIM-2 runs."""
    import ddpm.sample
    from bench.spec import BenchSpec

    calls = spy_on(monkeypatch, ddpm.sample.sample_progressive)
    spec = BenchSpec(
        preset="tiny",
        image_size=16,
        attention="8",
        batch=2,
        sampler="ddim",
        sampling_steps=2,
        measure_steps=3,
        warmup_steps=1,
    )
    figures = sampling.measure(spec)
    assert figures["measured_steps"] == 3
    assert [len(c.yielded) for c in calls] == [2, 2]
    for call in calls:
        used = call.args[1]
        assert isinstance(used, ddpm.sample.DDIMSampler) and used.timesteps == [500, 0]
        assert used.eta == 0 and call.args[2] == (2, 1, 16, 16)
        assert call.kwargs["precision"] == "fp32"


# ----- Frechet distance --------------------------------------------------------------------------


def test_frechet_closed_forms():
    rng = np.random.default_rng(0)
    d = 5
    mu = rng.normal(size=d)
    # N(0, I) vs N(mu, I): |mu|^2.
    assert math.isclose(
        frechet_distance(np.zeros(d), np.eye(d), mu, np.eye(d)), mu @ mu, rel_tol=1e-12
    )
    # Commuting covariances: sum (sqrt(a) - sqrt(b))^2 over the eigenvalues.
    a, b = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    expected = mu @ mu + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert math.isclose(
        frechet_distance(mu, np.diag(a), np.zeros(d), np.diag(b)), expected, rel_tol=1e-10
    )
    # Any Gaussian against itself, a full covariance included: 0.
    m = rng.normal(size=(d, d))
    sigma = m @ m.T
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0, abs=1e-9)
    # Symmetric in its arguments.
    s2 = np.diag(b)
    assert math.isclose(
        frechet_distance(mu, sigma, np.zeros(d), s2),
        frechet_distance(np.zeros(d), s2, mu, sigma),
        rel_tol=1e-9,
    )


def test_frechet_of_samples():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4000, 3))
    assert frechet_between(x, x) == pytest.approx(0, abs=1e-9)
    shift = np.array([1.0, -2.0, 0.5])
    # Two large samples of N(0, I) and N(shift, I): close to |shift|^2 = 5.25.
    assert frechet_between(x, rng.normal(size=(4000, 3)) + shift) == pytest.approx(5.25, abs=0.2)
    with pytest.raises(ValueError, match="N >= 2"):
        gaussian(x[:1])


def test_digit_inputs_are_the_classifier_view():
    from sklearn.datasets import load_digits

    raw = load_digits().images.reshape(-1, 64) / 16 * 2 - 1
    # At 8x8 and one channel, the classifier sees the bundled digits exactly.
    images, labels = digit_images(8, 1)
    np.testing.assert_allclose(to_digit_inputs(images), raw, atol=1e-6)
    assert labels.shape == (1797,)
    # At a training size, three equal channels: grey again, and the same digits, resampled.
    images, _ = digit_images(16, 3)
    assert images.shape == (1797, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    inputs = to_digit_inputs(images)
    assert inputs.shape == (1797, 64)
    assert np.corrcoef(inputs.ravel(), raw.ravel())[0, 1] > 0.9


@pytest.fixture(scope="module")
def judge() -> DigitsJudge:
    return DigitsJudge.build(16, 1)


def test_real_digits_score_near_zero_and_noise_far(judge):
    assert judge.accuracy > 0.9  # the features separate the digits
    floor = judge.floor(256)
    g = torch.Generator().manual_seed(0)
    noise = judge.score(torch.rand(256, 1, 16, 16, generator=g) * 2 - 1)
    blank = judge.score(torch.full((256, 1, 16, 16), -1.0))
    assert 0 < floor < 5 and noise > 20 * floor and blank > 20 * floor
    # Fewer images, a noisier estimate: the floor rises as N falls.
    assert judge.floor(32) > floor
    # Real digits blurred: worse than real, far better than noise.
    images, _ = digit_images(16, 1)
    blurred = judge.score(torch.nn.functional.avg_pool2d(images[:256], 3, 1, 1))
    assert floor < blurred < noise


# ----- the memory prediction: its rows and verdicts ----------------------------------------------


def test_predict_only_finds_the_largest_sampling_batch(tmp_path):
    """--find-max-batch on a card, alone: the row's batch is the largest that fits (the
    library's answer; tests/bench/predict/test_denoise.py holds it to direct traces), its
    memory and time predicted there, and the verdict says it."""
    argv = ["--card", "rtx3070", "--predict-only", "--find-max-batch", "--preset", "tiny"]
    argv += ["--sampler", "ddim", "--sampling-steps", "10", "--budget", "80MiB"]
    argv += ["--cuda-context-mib", "0", "--inline", "--out", str(tmp_path)]
    (row,) = sampling_command.main(argv)
    spec = BenchSpec(preset="tiny", card="rtx3070", sampler="ddim", sampling_steps=10)
    spec = spec.replace(image_size=16, attention="8", budget=80.0, context_mib=0.0)
    best, figures = denoise.largest_sampling_batch(spec, CARDS["rtx3070"])
    assert row["status"] == "ok", row["error"]
    assert row["batch"] == best and row["max_batch_source"] == "predicted"
    assert row["predicted_cuda_mib"] == pytest.approx(figures["predicted_cuda_mib"])
    assert row["fits"] is True and row["predicted_cuda_mib"] <= 80
    assert row["predicted_img_per_s"] == pytest.approx(
        best / (row["predicted_step_s"] * row["sampling_steps"])
    )
    report = (tmp_path / "sampling.md").read_text()
    assert "Largest sampling batch that fits 0.0781 GiB on GeForce RTX 3070" in report
    assert f"alone): {best:,} (PREDICTED" in report


def predicted_row(**changes) -> dict:
    row = {
        "spec_id": "s",
        "status": "ok",
        "error": None,
        "sampler": "ddim",
        "sampling_steps": 50,
        "batch": 64,
        "precision": "bf16",
        "compile": "off",
        "card": "rtx3060",
        "predicted_step_s": 0.5,
        "predicted_full_run_s": 25.0,
        "predicted_img_per_s": 2.56,
        "predicted_cuda_mib": 9000.0,
        "predicted_reserved_mib": 8542.0,
        "cudnn_workspace_mib": 32.0,
        "context_mib": 426.0,
        "budget_mib": 11910.0,
        "fits": True,
        "headroom_mib": 2910.0,
        "train_batch": None,
    }
    return {**row, **changes}


def test_the_verdict_says_where_the_pass_runs_and_whether_it_fits():
    alone = sampling.verdict(predicted_row())
    assert "the pass alone fits in 11.6 GiB: 9,000 MiB (8,542 MiB reserved" in alone
    assert "headroom 2,910 MiB" in alone and "(nothing measured)" in alone
    inside = sampling.verdict(predicted_row(train_batch=8.0, fits=False, headroom_mib=-90.0))
    assert "inside ddpm.cli.train after its last step at training batch 8 in bf16" in inside
    assert "the pass in fp32 from the EMA weights" in inside and "does NOT fit" in inside
    # A row written before the memory figures says its time alone.
    memory = ("predicted_cuda_mib", "predicted_reserved_mib", "cudnn_workspace_mib", "fits")
    memory += ("context_mib", "budget_mib", "headroom_mib", "train_batch")
    old = {k: v for k, v in predicted_row().items() if k not in memory}
    assert "fits" not in sampling.verdict(old) and "PREDICTED 0.5 s" in sampling.verdict(old)


def test_a_measured_pass_alone_gets_the_predictions_error(monkeypatch):
    """On CUDA the pass alone is measured too: the predicted allocation's error against it."""
    monkeypatch.setattr(sampling, "measured", lambda spec, context: {"peak_alloc_mib": 50.0})
    monkeypatch.setattr(sampling, "sampling_figures", lambda spec, card: {})
    monkeypatch.setattr(
        sampling, "memory_figures", lambda spec, card, train: {"predicted_alloc_mib": 60.0}
    )
    spec = BenchSpec(preset="tiny", card="rtx3070")
    assert sampling.measure(spec)["alloc_error_pct"] == pytest.approx(20.0)
    context = RunContext(out=".", run_id="r", options={"train_batch": 4})
    assert "alloc_error_pct" not in sampling.measure(spec, context)


@pytest.mark.parametrize("impl", ["lucidrains", "diffusers", "guided-diffusion"])
def test_inside_training_names_why_another_implementation_is_not_predicted(impl):
    spec = BenchSpec(preset="tiny", impl=impl, sampler="ddim", card="rtx3070")
    with pytest.raises(SpecError, match=f"--train-batch is not predicted for --impl {impl}: "):
        sampling_command.check_inside_training([spec])
