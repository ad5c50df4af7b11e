"""--ranks: a plan on up to N cards of one kind shares the effective batch across them in DDP.
Each option on several cards is predicted as that spec alone is (traced at its own batch, no
lines: its memory per card with DDP's buckets, its step with the all-reduce), and an hour of it
costs every card it rents."""

from __future__ import annotations

import pytest

from bench.cards import CARDS
from bench.planning import planner, report
from bench.predict.fit import CUDNN_ALLOWANCE_MIB
from bench.predict.runtime import training_figures
from bench.predict.trace import predict
from bench.spec import DEFAULT_CONTEXT_MIB, MIB, BenchSpec

STEPS = 800_000

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(**changes) -> BenchSpec:
    fields = dict(preset="tiny", image_size=16, attention="8", predict_only=True)
    return BenchSpec(**{**fields, **changes})


def test_the_cards_share_the_effective_batch():
    """Every count of cards up to --ranks that divides the effective batch (not 3 of 4), the
    fewest first; more than one trains in DDP; one card is the default."""
    grid = planner.options(tiny(), "t4", 4, 4, ("split",), ranks=3)
    assert [(s.ranks, s.batch, s.accum, s.parallel) for s, _ in grid] == [
        (1, 4, 1, "none"),
        (1, 2, 2, "none"),
        (1, 1, 4, "none"),
        (2, 2, 1, "ddp"),
        (2, 1, 2, "ddp"),
    ]
    assert all(s.ranks * s.batch * s.accum == 4 for s, _ in grid)
    alone = planner.options(tiny(), "t4", 4, 4, ("split",))
    assert [s for s, _ in alone] == [s for s, _ in grid[:3]]


def test_an_option_on_two_cards_is_predicted_as_that_spec_alone():
    card = CARDS["t4"]
    ranked = planner.Planner().plan(tiny(), "t4", 4, 2, ("split",), STEPS, ranks=2)
    two = {(o.spec.batch, o.spec.accum): o for o in ranked if o.spec.ranks == 2}
    assert set(two) == {(2, 1), (1, 2)}
    for (batch, accum), option in two.items():
        spec = tiny(batch=batch, accum=accum, ranks=2, parallel="ddp", card="t4")
        reserved = predict(spec, card.capability).reserved_bytes / MIB
        cuda = reserved + CUDNN_ALLOWANCE_MIB + DEFAULT_CONTEXT_MIB
        assert option.fit.cuda_mib == pytest.approx(cuda, abs=1e-9)
        step = training_figures(spec, card)["predicted_step_s"]
        assert option.time.step_s == pytest.approx(step, rel=1e-9)
    rows = report.rows({"train_steps": STEPS}, "t4", ranked, 0.35)
    for row in rows:
        hours = row["predicted_train_h"]
        # Rounded hours times the price: the cent the row's own rounding may move.
        assert row["predicted_usd"] == pytest.approx(hours * 0.35 * row["ranks"], abs=0.02)
    said = report.card_lines(
        [{k: "" if v is None else str(v) for k, v in r.items()} for r in rows], 5
    )
    assert any("ddp-2" in line for line in said) == any(r["ranks"] == 2 for r in rows[:5])


def test_a_plan_csv_from_before_the_ranks_column_is_carried_forward(tmp_path):
    """Its rows stay, under this version's header, each on one card; a file with a column this
    version does not write is refused, untouched."""
    path = tmp_path / "plan.csv"
    older = [c for c in report.COLUMNS if c != "ranks"]
    path.write_text(
        ",".join(older) + "\n" + ",".join("old" if c == "run_id" else "" for c in older) + "\n"
    )
    report.append(path, [{"run_id": "new", "ranks": 2}])
    assert path.read_text().splitlines()[0] == ",".join(report.COLUMNS)
    old, new = report.read(path)
    assert (old["run_id"], report.cards_of(old)) == ("old", 1)
    assert (new["run_id"], report.cards_of(new)) == ("new", 2)
    stranger = tmp_path / "other.csv"
    stranger.write_text("run_id,colour\nx,red\n")
    with pytest.raises(report.ResultsError, match="has other columns than this version writes"):
        report.append(stranger, [{"run_id": "new"}])
    assert stranger.read_text() == "run_id,colour\nx,red\n"
