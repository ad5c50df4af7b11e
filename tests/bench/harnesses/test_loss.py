"""`python -m bench.loss`: accumulation leaves the loss curve alone (fp32, to float rounding), the
fp32 vs bf16 difference is measured and reported, curves land in CSV and TensorBoard, the
validation loss uses fixed draws, divergence is flagged, and bad input is one line and exit 2.

One inline sweep (tiny preset, digits, 20 steps) serves most tests; one subprocess run checks the
command as a user types it."""

from __future__ import annotations

import csv
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench import loss as loss_command
from bench.core import RunContext
from bench.harnesses import loss
from bench.models.workload import build_model
from bench.passes import loss as loss_pass
from bench.spec import BenchSpec
from bench.tables import curves
from bench.tables.results import read_rows
from ddpm.data import load_dataset
from ddpm.schedule import NoiseSchedule

STEPS = 20
LAST_K = 5
# One thread: the CPU is small and shared, and OpenMP threads spin against other jobs.
ENV = os.environ | {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The default grid (8 x 1 and 2 x 4, fp32 and bf16), 20 steps, in this process."""
    out = tmp_path_factory.mktemp("loss")
    loss_command.main(
        [
            "--inline",
            "--steps",
            str(STEPS),
            "--last-k",
            str(LAST_K),
            "--val-every",
            "10",
            "--out",
            str(out),
        ]
    )
    rows = {(r["batch"], r["accum"], r["precision"]): r for r in read_rows(out / "loss.csv")}
    return out, rows, (out / "loss.md").read_text()


def curve(row: dict) -> list[dict]:
    with open(row["curve_path"], newline="") as f:
        return list(csv.DictReader(f))


def losses(row: dict) -> list[float]:
    return [float(r["loss"]) for r in curve(row)]


def sentence(md: str, start: str) -> str:
    found = [ln[2:] for ln in md.splitlines() if ln.startswith(f"- {start}")]
    assert len(found) == 1, f"no single sentence starting {start!r} in:\n{md}"
    return found[0]


def test_sweep_runs_the_pair_at_the_same_effective_batch(sweep):
    out, rows, md = sweep
    assert set(rows) == {(8, 1, "fp32"), (8, 1, "bf16"), (2, 4, "fp32"), (2, 4, "bf16")}
    for r in rows.values():
        assert r["status"] == "ok", r["error"]
        assert r["steps_done"] == STEPS and r["last_k"] == LAST_K
        assert r["diverged"] is False and r["diverged_step"] is None
        assert r["skipped_steps"] == 0
        assert (
            r["dataset"] == "digits" and r["lr"] == loss_pass.LossOptions.lr and r["threads"] == 1
        )
        assert 0 < r["val_images"] <= 256
        assert math.isfinite(r["final_loss"]) and math.isfinite(r["val_loss"])
        assert r["final_loss"] < r["val_loss_start"]  # it learns
    # The same initial weights, the same fixed validation draws: the same number, bit for bit.
    assert len({r["val_loss_start"] for r in rows.values()}) == 1
    with (out / "loss.csv").open(newline="") as f:
        assert len(list(csv.DictReader(f))) == 4


def test_accumulation_leaves_the_fp32_curve_alone(sweep):
    _, rows, md = sweep
    a, b = losses(rows[8, 1, "fp32"]), losses(rows[2, 4, "fp32"])
    assert len(a) == len(b) == STEPS
    assert max(abs(x - y) / abs(x) for x, y in zip(a, b)) <= 1e-5
    text = sentence(md, "Accumulation, effective batch 8 (precision fp32)")
    assert "batch 2 x accum 4 vs batch 8 x accum 1" in text
    assert "equal within float rounding" in text and "DIFFERENT" not in text
    reported = float(re.search(r"max relative loss difference (\S+) over", text).group(1))
    assert reported == pytest.approx(curves.max_relative_difference(a, b), rel=1e-2, abs=1e-12)


def test_bf16_against_fp32_reports_the_measured_difference(sweep):
    _, rows, md = sweep
    text = sentence(md, "precision bf16 vs fp32 (batch 8, accum 1)")
    match = re.search(
        r"final loss (\S+) vs (\S+) \(([-+]\d+\.\d+)%\), val loss (\S+) vs (\S+) "
        r"\(([-+]\d+\.\d+)%\)",
        text,
    )
    assert match, text
    bf16, fp32 = (float(match.group(i)) for i in (1, 2))
    # The numbers are the curves' own: the mean of the last k steps of each curve.
    for value, row in ((bf16, rows[8, 1, "bf16"]), (fp32, rows[8, 1, "fp32"])):
        assert value == pytest.approx(sum(losses(row)[-LAST_K:]) / LAST_K, rel=1e-5)
    assert float(match.group(3)) == pytest.approx((bf16 - fp32) / fp32 * 100, abs=0.01)
    assert float(match.group(4)) == pytest.approx(rows[8, 1, "bf16"]["val_loss"], rel=1e-5)
    assert float(match.group(5)) == pytest.approx(rows[8, 1, "fp32"]["val_loss"], rel=1e-5)
    assert bf16 != fp32  # bf16 autocast rounds: a difference is measured, not assumed away
    assert losses(rows[8, 1, "bf16"]) != losses(rows[8, 1, "fp32"])


def test_curve_csv_and_tensorboard_scalars(sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, rows, _ = sweep
    row = rows[2, 4, "fp32"]
    folder = Path(row["curve_path"]).parent
    assert (
        folder.parent.parent.name == "loss"
        and folder.name
        == BenchSpec(
            preset="tiny", image_size=16, batch=2, accum=4, attention="8", dataset="digits"
        ).name
    )
    lines = curve(row)
    assert list(lines[0]) == ["step", "loss", "grad_norm", "lr", "skipped", "val_loss"]
    assert [int(r["step"]) for r in lines] == list(range(1, STEPS + 1))
    assert [r["step"] for r in lines if r["val_loss"]] == ["10", "20"]
    assert float(lines[-1]["val_loss"]) == row["val_loss"]
    assert list(folder.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(folder))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/grad_norm", "train/lr", "train/skipped", "val/loss"} <= tags
    logged = [e.value for e in events.Scalars("train/loss")]
    assert logged == pytest.approx([float(r["loss"]) for r in lines], rel=1e-6)
    assert [e.step for e in events.Scalars("val/loss")] == [0, 10, 20]


def test_validation_loss_uses_fixed_timesteps_and_noise():
    spec = BenchSpec(preset="tiny", image_size=16, attention="8", batch=8, dataset="digits")
    images = load_dataset("digits", 16, 1, seed=0).validation()[:40]
    schedule = NoiseSchedule.linear()
    t, noise = loss_pass.validation_draws(images, schedule.timesteps, seed=0)
    t2, noise2 = loss_pass.validation_draws(images, schedule.timesteps, seed=0)
    assert torch.equal(t, t2) and torch.equal(noise, noise2)
    assert t.min() == 0 and t.max() < schedule.timesteps and len(set(t.tolist())) == 40

    # Two specs' models (8 x 1 and 2 x 4) start from the same weights: the same number.
    model_a, model_b = build_model(spec), build_model(spec.replace(batch=2, accum=4))
    cpu = torch.device("cpu")
    first = loss_pass.validation_loss(model_a, schedule, images, t, noise, cpu)
    assert loss_pass.validation_loss(model_a, schedule, images, t, noise, cpu) == first
    assert loss_pass.validation_loss(model_b, schedule, images, t, noise, cpu) == first
    assert model_a.training  # put back in training mode

    # Recomputed independently: the documented generator, stratified t, one batch, plain MSE.
    generator = torch.Generator().manual_seed(0 + loss_pass.VAL_SEED_OFFSET)
    eps = torch.randn(images.shape, generator=generator)
    tt = torch.arange(40) * schedule.timesteps // 40
    with torch.no_grad():
        model_a.eval()
        expected = F.mse_loss(model_a(schedule.q_sample(images, tt, eps), tt), eps).item()
    assert first == pytest.approx(expected, rel=1e-5)


def test_divergence_is_flagged(tmp_path):
    spec = BenchSpec(
        preset="tiny",
        image_size=16,
        attention="8",
        batch=8,
        measure_steps=10,
        warmup_steps=0,
        dataset="digits",
    )
    figures = loss_pass.train(spec, RunContext(tmp_path, "run"), loss_pass.LossOptions(lr=1e6))
    assert figures["diverged"] is True
    assert 1 <= figures["diverged_step"] == figures["steps_done"] <= 10  # stopped there
    assert not math.isfinite(losses(figures)[-1])
    row = {"batch": 8, "accum": 1, "precision": "fp32", "status": "ok", **figures}
    assert "DIVERGED" in loss.verdict(row)
    assert loss_pass.is_diverged(math.nan) and loss_pass.is_diverged(math.inf)
    assert loss_pass.is_diverged(-math.inf) and not loss_pass.is_diverged(1e30)
    assert curves.max_relative_difference([1.0, 2.0], [1.0, math.nan]) == math.inf


def fake_row(tmp_path: Path, name: str, curve_values: list[float], **axes) -> dict:
    path = tmp_path / f"{name}.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss"])
        writer.writerows(enumerate(curve_values, 1))
    row = {
        "preset": "tiny",
        "image_size": 16,
        "batch": 8,
        "accum": 1,
        "effective_batch": 8,
        "precision": "fp32",
        "attention": "8",
        "compile": "off",
        "checkpointing": "off",
        "device": "cpu",
        "status": "ok",
        "curve_path": str(path),
        "dataset": "digits",
        "sampler": "none",
        "sampling_steps": 0,
        "ranks": 1,
        "parallel": "none",
        "grad_sync": "last",
        "impl": "ddpm",
        "repeat": 1,
        "val_images": 180,
        "lr": 1e-3,
        "threads": 1,
        "final_loss": curve_values[-1],
        "val_loss": 0.5,
        "skipped_steps": 0,
    }
    return {**row, **axes}


def test_compare_says_different_when_accumulation_changes_the_curve(tmp_path):
    base = [1.0, 0.8, 0.6, 0.5]
    rows = [
        fake_row(tmp_path, "a", base),
        fake_row(tmp_path, "b", [v * 1.01 for v in base], batch=2, accum=4),
    ]
    text = [
        s for s in curves.compare(rows, RunContext(tmp_path, "r")) if s.startswith("Accumulation")
    ]
    assert len(text) == 1 and "DIFFERENT" in text[0] and "1.00e-02" in text[0]
    # With dropout, the masks differ with the split: said, so nobody hunts an accumulation bug.
    rows = [{**r, "preset": "ddpm-mnist"} for r in rows]
    text = [
        s for s in curves.compare(rows, RunContext(tmp_path, "r")) if s.startswith("Accumulation")
    ]
    assert "DIFFERENT" in text[0] and "dropout 0.1" in text[0]


def test_compare_sets_ranks_against_one_rank_with_the_same_effective_batch(tmp_path):
    base = [1.0, 0.8, 0.6, 0.5]
    rows = [
        fake_row(tmp_path, "one", base, batch=2, accum=4),
        fake_row(
            tmp_path,
            "two",
            [v * (1 + 1e-6) for v in base],
            batch=2,
            accum=2,
            ranks=2,
            parallel="fsdp",
            grad_sync="every",
        ),
    ]
    (text,) = [s for s in curves.compare(rows, RunContext(tmp_path, "r")) if "ranks" in s.lower()]
    assert text.startswith("Ranks and accumulation, effective batch 8")
    assert (
        "2 rank(s) fsdp x batch 2 x accum 2 (gradients synced every) vs batch 2 x accum 4" in text
    )
    assert "1.00e-06" in text and "equal within float rounding" in text


def test_compare_sets_each_optimizer_against_adamw(tmp_path):
    rows = [
        fake_row(tmp_path, "adamw", [1.0, 0.8, 0.5], optimizer="adamw"),
        fake_row(tmp_path, "8bit", [1.0, 0.84, 0.5], optimizer="adamw8bit", val_loss=0.55),
    ]
    text = curves.compare(rows, RunContext(tmp_path, "r"))
    (said,) = [s for s in text if s.startswith("optimizer ")]
    # final 0.5 vs 0.5, val 0.55 vs 0.5 (+10%), worst step |0.8 - 0.84| / 0.8 = 0.05
    assert said == (
        "optimizer adamw8bit vs adamw: final loss 0.5 vs 0.5 (+0.00%), val loss 0.55 vs 0.5 "
        "(+10.00%); max relative loss difference 5.00e-02 over the curve."
    )
    assert "(the others at their scale of it)" in text[0]


def test_compare_sets_attention_against_none_and_precision_against_fp32(tmp_path):
    base = [1.0, 0.8, 0.6, 0.5]
    rows = [
        fake_row(tmp_path, "none", base, attention="none"),
        fake_row(tmp_path, "attn", [1.0, 0.8, 0.6, 0.4], attention="8", val_loss=0.25),
        fake_row(
            tmp_path,
            "bf16",
            [1.0, 0.8, 0.6, 0.55],
            attention="none",
            precision="bf16",
            skipped_steps=0,
        ),
    ]
    text = curves.compare(rows, RunContext(tmp_path, "r"))
    (attn,) = [s for s in text if s.startswith("attention ")]
    # final 0.4 vs 0.5 (-20%), val 0.25 vs 0.5 (-50%), worst step |0.5 - 0.4| / 0.5 = 0.2
    assert attn.startswith(
        "attention 8 vs none (precision fp32): final loss 0.4 vs 0.5 "
        "(-20.00%), val loss 0.25 vs 0.5 (-50.00%); max relative loss "
        "difference 2.00e-01 over the curve."
    )
    (prec,) = [s for s in text if s.startswith("precision ")]
    assert (
        prec.startswith("precision bf16 vs fp32 (attention none): final loss 0.55 vs 0.5 (+10.00%)")
        and "0 skipped step(s)" in prec
    )


def test_accumulation_tolerance_grows_with_steps_and_knows_tf32_off_cuda():
    assert curves.accum_tolerance("fp32", "cpu", 20) == 1e-4
    assert curves.accum_tolerance("fp32", "cpu", 400) == pytest.approx(2e-4)
    assert curves.accum_tolerance("tf32", "cpu", 20) == 1e-4
    assert curves.accum_tolerance("tf32", "cuda", 20) > 1e-4


def test_accum_is_a_product_when_given_and_pairs_come_from_the_effective_batch():
    parser = loss_command.build_loss_parser()
    pairs = loss_command.batch_accum_pairs(parser.parse_args([]))
    assert pairs == [(8, 1, 8), (2, 4, 8)]
    assert loss_command.batch_accum_pairs(
        parser.parse_args(["--batch", "4", "--accum", "1,2"])
    ) == [
        (4, 1, None),
        (4, 2, None),
    ]
    assert loss_command.batch_accum_pairs(
        parser.parse_args(["--batch", "1,4", "--effective-batch", "4,8"])
    ) == [(1, 4, 4), (4, 1, 4), (1, 8, 8), (4, 2, 8)]
    assert parser.parse_args([]).preset == "tiny"


def test_ranks_share_the_effective_batch():
    parser = loss_command.build_loss_parser()
    args = parser.parse_args(
        [
            "--batch",
            "2",
            "--effective-batch",
            "8",
            "--ranks",
            "1,2",
            "--parallel",
            "ddp",
            "--precision",
            "fp32",
        ]
    )
    specs = loss_command.make_specs(args)
    assert [(s.ranks, s.batch, s.accum, s.effective_batch) for s in specs] == [
        (1, 2, 4, 8),
        (2, 2, 2, 8),
    ]


@pytest.mark.parametrize(
    "args, says",
    [
        (["--steps", "0"], "--steps 0"),
        (["--last-k", "0"], "--last-k 0"),
        (["--val-images", "0"], "--val-images 0"),
        (["--threads", "0"], "--threads 0"),
        (["--lr", "0"], "--lr 0"),
        (["--lr", "nan"], "--lr nan"),
        (["--dataset", "synthetic"], "--dataset 'synthetic'"),
        (["--batch", "3"], "--batch 3 does not divide --effective-batch 8"),
        (["--accum", "2", "--effective-batch", "8"], "--accum and --effective-batch"),
        (["--find-max-batch"], "--find-max-batch"),
        (["--precision", "fp8"], "--precision 'fp8'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, says):
    out = tmp_path / "results"
    with pytest.raises(SystemExit) as exc:
        loss_command.main([*args, "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and says in err, err
    assert not out.exists()


def test_missing_dataset_is_one_line_and_exit_2_before_anything_runs(tmp_path, capsys):
    empty, out = tmp_path / "empty", tmp_path / "results"
    empty.mkdir()
    with pytest.raises(SystemExit) as exc:
        loss_command.main(["--dataset", "mnist", "--data-root", str(empty), "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MNIST not found" in err, err
    assert not out.exists() and not any(empty.iterdir())


def test_a_data_root_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "images.tar").write_bytes(b"")
    with pytest.raises(SystemExit) as exc:
        loss_command.main(["--dataset", "folder", "--data-root", str(tmp_path / "images.tar")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1, err
    assert "images.tar is a file, not a folder: point it at the folder that holds the" in err


def test_resume_refuses_rows_trained_with_other_options(sweep, capsys):
    out, _, _ = sweep
    before = (out / "loss.csv").read_text()
    with pytest.raises(SystemExit) as exc:
        loss_command.main(
            [
                "--steps",
                str(STEPS),
                "--last-k",
                str(LAST_K),
                "--val-every",
                "10",
                "--lr",
                "0.5",
                "--resume",
                "--out",
                str(out),
            ]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--lr" in err and "0.5" in err, err
    assert (out / "loss.csv").read_text() == before


def test_command_line_in_fresh_processes(tmp_path):
    """As a user types it: one worker process per spec, files written, the verdict in words."""
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.loss",
            "--steps",
            "3",
            "--precision",
            "fp32",
            "--val-every",
            "0",
            "--val-images",
            "32",
            "--out",
            str(out),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (out / "loss.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["batch"], r["accum"], r["status"]) for r in rows] == [
        ("8", "1", "ok"),
        ("2", "4", "ok"),
    ]
    assert all(r["val_images"] == "32" and r["steps_done"] == "3" for r in rows)
    md = (out / "loss.md").read_text()
    assert "equal within float rounding" in sentence(md, "Accumulation, effective batch 8")
    assert "equal within float rounding" in proc.stdout  # the answer, not the progress
    for r in rows:
        assert Path(r["curve_path"]).is_file()
        assert list(Path(r["curve_path"]).parent.glob("events.out.tfevents.*"))
