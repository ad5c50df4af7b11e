"""python -m bench.gpucheck on a machine without a GPU: its refusal, and its whole control flow
under the strict torch.cuda / pynvml stand-in, up to the first real kernel."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from bench import gpucheck
from tests.helpers.cli_checks import check_one_line_error, snapshot
from tests.helpers.cuda_standin import NO_DRIVER


def test_refuses_without_cuda_in_one_line(tmp_path):
    (tmp_path / "keep.txt").write_text("already here")
    before = snapshot(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "bench.gpucheck", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    check_one_line_error("needs a CUDA GPU", result.returncode, result.stderr, result.stdout)
    assert snapshot(tmp_path) == before


def test_bad_small_budget_is_refused_before_anything_runs(fake_cuda, tmp_path, capsys):
    fake_cuda()
    with pytest.raises(SystemExit) as exit_:
        gpucheck.main(["--small-budget", "3XB", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert "--small-budget" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("tolerance", ["nan", "inf", "-5", "0"])
def test_a_tolerance_that_is_not_a_positive_number_is_refused(
    fake_cuda, tmp_path, capsys, tolerance
):
    """nan and inf passed every row ("within nan%"), a negative one failed every row."""
    fake_cuda()
    with pytest.raises(SystemExit) as exit_:
        gpucheck.main(["--tolerance", tolerance, "--out", str(tmp_path)])
    captured = capsys.readouterr()
    check_one_line_error(
        f"--tolerance {float(tolerance):g} is not allowed",
        exit_.value.code,
        captured.err,
        captured.out,
    )
    assert list(tmp_path.iterdir()) == []


def test_control_flow_under_the_standin_reaches_the_first_kernel(fake_cuda, tmp_path, capsys):
    """Every step runs (in this process, so the stand-in applies) with an indexed device; each
    spec stops at its first real CUDA operation, becomes an error row naming it, and the
    report names the card, lists the rows and fails its checks: exit status 1."""
    gpu = fake_cuda()
    with pytest.raises(SystemExit) as exit_:
        gpucheck.main(["--inline", "--out", str(tmp_path)])
    assert exit_.value.code == 1
    report = (tmp_path / "gpucheck.md").read_text()
    # The report is the answer, on stdout alone; the sweeps' own tables are steps on the way.
    captured = capsys.readouterr()
    assert captured.out == report + "\n"
    assert captured.err.count("Rows appended to ") == 5  # 3 memory sweeps, the search, profile
    assert gpu.card.name in report
    # main job 1 + sweep 8 + fp16 1 memory rows, each stopped by the missing driver.
    rows = [line for line in report.splitlines() if re.search(r"\| error +\|", line)]
    assert len(rows) == 10, report
    assert "12 did not" in report  # and the largest-batch search and the profile
    assert report.count("FAIL") == 5 and "PASS" not in report
    assert NO_DRIVER in report
    # Every harness selected the card by index, never an index-less "cuda".
    selected = [call for call in gpu.calls if call[0] == "set_device"]
    assert selected and all(index == 0 for _, index in selected)
    # Each harness wrote its own table under <out>/gpucheck.
    assert {p.name for p in (tmp_path / "gpucheck").glob("*.csv")} == {"memory.csv", "profile.csv"}


@pytest.mark.parametrize(
    "card, said",
    [
        ("rtx9999", "--card 'rtx9999' is not allowed: choose from gtx1070, gtx1080,"),
        ("rtx3070,t4", "--card 'rtx3070,t4' is not allowed: name one card"),
        ("", "--card '' is not allowed: name one card"),
    ],
)
def test_bad_card_is_refused_before_anything_runs(fake_cuda, tmp_path, capsys, card, said):
    """--card is read by the harnesses' own parser (bench.parsers.parse_cards), one card."""
    fake_cuda()
    with pytest.raises(SystemExit) as exit_:
        gpucheck.main(["--card", card, "--out", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert said in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_step_time_beside_the_prediction_and_its_band():
    """The error of each timed row by hand, and whether the measured step lies in the
    prediction's likely range; a row without its measured step fails the check."""
    rows = gpucheck.with_step_error(
        [
            {
                "precision": "fp32",
                "batch": 32,
                "step_s": 0.2,
                "predicted_step_s": 0.15,
                "predicted_step_s_low": 0.12,
                "predicted_step_s_high": 0.18,
            },
            {
                "precision": "bf16",
                "batch": 32,
                "step_s": 0.1,
                "predicted_step_s": 0.125,
                "predicted_step_s_low": 0.1,
                "predicted_step_s_high": 0.15,
            },
        ]
    )
    assert [r["step_error_pct"] for r in rows] == pytest.approx([-25.0, 25.0])
    assert [r["in_band"] for r in rows] == ["no", "yes"]
    ok, sentence = gpucheck.time_check(rows, "rtx3070")
    assert ok
    assert (
        "measured 0.2 s, predicted 0.15 s, likely 0.12-0.18 s (measured outside it) (-25.0%)"
        in sentence
    )
    assert "likely 0.1-0.15 s (measured inside it)" in sentence
    assert "emulated" not in sentence  # an RTX 3070 has BF16 tensor cores
    env = {"torch": "2.14", "device_name": "a card", "torch_threads": 1}
    report = gpucheck.render(env, [], [(ok, sentence)], 10.0, rows)
    assert "predicted_step_s_low" in report and "in_band" in report
    # A card that runs a precision otherwise than predicted says so beside it.
    _, sentence = gpucheck.time_check(rows, "gtx1070")
    assert "(measured inside it) (+25.0%) (bf16 is emulated on sm61" in sentence
    failed = gpucheck.with_step_error([{"precision": "fp32", "batch": 32, "status": "oom"}])
    assert gpucheck.time_check(failed, "rtx3070") == (
        False,
        "step time on this card beside the prediction for rtx3070: no result",
    )


def test_card_adds_the_timed_steps_under_the_standin(fake_cuda, tmp_path, capsys):
    """With --card, the throughput sweep runs too (each spec stopped at its first CUDA call
    under the stand-in), and the step-time check fails for want of a measured step."""
    fake_cuda()
    with pytest.raises(SystemExit) as exit_:
        gpucheck.main(["--inline", "--card", "rtx3070", "--out", str(tmp_path)])
    assert exit_.value.code == 1
    report = (tmp_path / "gpucheck.md").read_text()
    assert "FAIL: step time on this card beside the prediction for rtx3070: no result" in report
    assert (tmp_path / "gpucheck" / "throughput.csv").is_file()


def test_the_report_shows_a_specs_error_literally():
    """A failed spec's error is quoted in the checks: its escape sequences and newlines are
    shown as escapes, in gpucheck.md and on stdout alike."""
    failed = [{"spec_id": "tiny\nx", "status": "error", "error": "RuntimeError: \x1b]0;pwned\x07"}]
    checks = gpucheck.verdicts([], failed, [], 10.0)
    env = {"torch": "2", "device_name": "card", "torch_threads": 1}
    report = gpucheck.render(env, [], checks, 10.0)
    assert "\x1b" not in report and "\x07" not in report
    assert "tiny\\nx: error RuntimeError: \\x1b]0;pwned\\x07" in report
