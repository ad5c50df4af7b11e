"""python -m bench.plan as a user meets it: the answer on stdout, plan.csv and plan.md under
--out, and each bad input one line with exit status 2 that leaves the folder as it was."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from bench import plan
from bench.planning import report
from tests.helpers.cli_checks import check_one_line_error, snapshot
from tests.helpers.guided import needs_guided, tiny_file

TINY = ["--preset", "tiny", "--image-size", "16", "--attention", "8"]


def test_a_plan_over_two_cards_says_the_soonest_and_the_cheapest(tmp_path, capsys):
    args = [*TINY, "--card", "t4,gtx1070", "--effective-batch", "4", "--levers", "split"]
    rows = plan.main([*args, "--price", "t4=0.35,gtx1070=0.1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    # Three splits of 4 on each card (4 x 1, 2 x 2, 1 x 4), all fitting a tiny model.
    assert len(rows) == 6 and all(r["fits"] for r in rows)
    assert "a T4 (sm75, 14.56 GiB): 3 of 3 options fit; the fastest:" in out
    fastest = {
        card: min((r for r in rows if r["card"] == card), key=lambda r: r["predicted_train_h"])
        for card in ("t4", "gtx1070")
    }
    soonest = min(fastest.values(), key=lambda r: r["predicted_train_h"])
    cheapest = min(fastest.values(), key=lambda r: r["predicted_usd"])
    assert f"Soonest: {'a T4' if soonest['card'] == 't4' else 'a GTX 1070'}" in out
    assert f"Cheapest: {'a T4' if cheapest['card'] == 't4' else 'a GTX 1070'}" in out
    for r in rows:
        assert r["predicted_usd"] == round(r["predicted_train_h"] * r["usd_per_hour"], 2)
        assert r["rank"] in (1, 2, 3)
    with (tmp_path / "plan.csv").open(newline="") as f:
        assert len(list(csv.DictReader(f))) == 6
    assert "## tiny at 16px at 4" in (tmp_path / "plan.md").read_text()
    # A second plan appends: the CSV keeps both, the markdown the latest.
    plan.main([*args, "--out", str(tmp_path)])
    with (tmp_path / "plan.csv").open(newline="") as f:
        assert len(list(csv.DictReader(f))) == 12


BAD = {
    "unknown card": (["--card", "rtx9090", "--effective-batch", "8"], "'rtx9090'"),
    "no card": (["--card", "", "--effective-batch", "8"], "--card is empty"),
    "no lever": (["--card", "t4", "--effective-batch", "8", "--levers", ","], "allows no lever"),
    "unknown lever": (
        ["--card", "t4", "--effective-batch", "8", "--levers", "ema,optimiser"],
        "'optimiser'",
    ),
    "a value no card gives the lever": (
        ["--card", "t4", "--effective-batch", "8", "--levers", "split,precision=fp32+fp64"],
        "'fp64' is not a value of precision (fp32+tf32+bf16+fp16)",
    ),
    "values the card runs none of": (
        ["--card", "rtx3070,t4", "--effective-batch", "8", "--levers", "precision=bf16"],
        "the t4 runs none of them (precision: fp32+fp16)",
    ),
    "values of the split": (
        ["--card", "t4", "--effective-batch", "8", "--levers", "split=2"],
        "the split takes no values",
    ),
    "price of a card not asked": (
        ["--card", "t4", "--effective-batch", "8", "--price", "rtx4090=0.7"],
        "'rtx4090' is not a card asked",
    ),
    "a price that is not one": (
        ["--card", "t4", "--effective-batch", "8", "--price", "t4=cheap"],
        "USD per hour",
    ),
    "a zero batch": (["--card", "t4", "--effective-batch", "0"], "positive integer"),
    "no cards": (["--card", "t4", "--effective-batch", "8", "--ranks", "0"], "positive integer"),
    "nothing fits": (
        ["--card", "t4", "--effective-batch", "4", "--levers", "split", "--budget", "100MiB"],
        "no option fits on t4; the nearest,",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_exit_2_and_nothing_is_touched(tmp_path, capsys, case):
    args, says = BAD[case]
    (tmp_path / "plan.csv").write_text("kept\n")
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as info:
        plan.main([*TINY, *args, "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    if case == "nothing fits":  # found after the options' progress lines: the error is last
        *progress, err = err.strip().splitlines()
        assert all(line.startswith("t4: ") for line in progress)
    check_one_line_error(says, info.value.code, err, out)
    if case == "nothing fits":
        assert re.search(r"needs [\d,]+ MiB, [\d,]+ MiB over its 100\.$", err)
    assert snapshot(tmp_path) == before


@needs_guided
def test_guided_diffusion_is_planned_as_its_file_describes_it(tmp_path):
    """The model a plan predicts is the one its file describes (16 px, attention at 8, not the
    default preset's 32 px), as every harness settles guided-diffusion's flags, and named by
    its file, not by a preset it does not use."""
    config = tiny_file(tmp_path)
    args = plan.build_parser().parse_args(
        ["--impl", "guided-diffusion", "--model-config", config]
        + ["--card", "t4", "--effective-batch", "2"]
    )
    args.argv = []
    base = plan.model_spec(args)
    assert (base.image_size, base.attention) == (16, "8")
    assert plan.question(args, base)["model"] == f"guided-diffusion from {config} at 16px"


def test_the_committed_plans_are_their_rows():
    """results/plan.md is what this version makes of results/plan.csv (rows written before
    --ranks included)."""
    results = Path(__file__).resolve().parents[2] / "results"
    markdown = report.markdown(report.read(results / "plan.csv"), 5)
    assert (results / "plan.md").read_text() == markdown


def _row(**changes: str) -> dict:
    """plan.csv's row of an option that fits an RTX 3070 (128 x 1, fp32, every other lever at
    its default), with `changes` over it."""
    row = {c: "" for c in report.COLUMNS}
    row.update(
        card="rtx3070", batch="128", accum="1", fits="True", precision="fp32",
        checkpointing="off", compile="off", optimizer="adamw", ema="device",
        attention_backend="auto", channels_last="off", predicted_cuda_mib="6000",
        headroom_mib="1000", predicted_step_s="0.5",
    )  # fmt: skip
    return row | changes


def _precision_row(precision: str, hours: float) -> dict:
    return _row(
        precision=precision, predicted_train_h=str(hours), predicted_train_h_low=str(hours * 0.75),
        predicted_train_h_high=str(hours * 1.2),
        changes_loss=f"precision {precision}" if precision in ("bf16", "fp16") else "",
    )  # fmt: skip


def test_a_card_s_table_keeps_to_80_columns():
    """Five-digit hours and a setting of four levers: the setting and the range go on under
    their columns, every number still said."""
    row = _row(
        rank="1", batch="1", accum="256", checkpointing="on", optimizer="adamw8bit", ema="cpu",
        changes_loss="optimizer adamw8bit", predicted_cuda_mib="7772.2", headroom_mib="194.3",
        predicted_step_s="259.731", predicted_train_h="57718.1",
        predicted_train_h_low="43664.0", predicted_train_h_high="69112.8",
    )  # fmt: skip
    lines = report.card_lines([row], 5)
    assert all(len(line) <= 80 for line in lines), lines
    said = " ".join(lines)
    for words in ("1 x 256", "fp32 ckpt adamw8bit*", "ema-cpu", "259.731", "57,718"):
        assert words in said
    assert "(43,664-69,113)" in said


@pytest.mark.parametrize(
    "precisions, said",
    [
        # 150 h against 100 h: half as long again; 100.25 h: a quarter of a percent.
        (
            [("bf16", 100.0), ("fp16", 110.0), ("fp32", 150.0)],
            "#3, 128 x 1 fp32, 150 (112-180) h, 50% longer.",
        ),
        ([("fp16", 100.0), ("tf32", 100.25)], "#2, 128 x 1 tf32, 100 (75.2-120) h, 0.25% longer."),
        ([("bf16", 100.0), ("fp16", 110.0)], "Every option that fits changes the loss."),
        ([("fp32", 100.0), ("bf16", 110.0)], None),
    ],
)  # fmt: skip
def test_where_the_fastest_changes_the_loss_the_fastest_that_does_not_is_named(precisions, said):
    """The fastest option that leaves the loss as it is, its place and its hours beside the
    fastest's; nothing said where the fastest leaves the loss as it is."""
    lines = report.card_lines([_precision_row(p, h) for p, h in precisions], 5)
    text = " ".join(lines)
    if said is None:
        assert "loss as it is" not in text and "changes the loss" not in text
    else:
        assert said in text, lines
    assert all(len(line) <= 80 for line in lines), lines
