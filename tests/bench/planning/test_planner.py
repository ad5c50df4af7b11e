"""The plan (bench.planning) against an exhaustive prediction over the same grid: every option
traced at its own batch and accumulation and timed by the time model at its own accumulation,
no lines, no extension, no cache; the plan's choice is the fastest of those that fit."""

from __future__ import annotations

import itertools
from collections import OrderedDict

import pytest

from bench import memory as memory_command
from bench.cards import CARDS
from bench.planning import report, timing
from bench.planning.levers import BY_NAME, splits
from bench.planning.planner import Planner
from bench.planning.timing import step_time
from bench.predict import batches, stream
from bench.predict.fit import CUDNN_ALLOWANCE_MIB
from bench.predict.runtime import training_figures
from bench.predict.trace import predict
from bench.spec import DEFAULT_CONTEXT_MIB, MIB, BenchSpec
from bench.tables.results import read_rows

STEPS = 800_000


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(**changes) -> BenchSpec:
    fields = dict(preset="tiny", image_size=16, attention="8", predict_only=True)
    return BenchSpec(**{**fields, **changes})


def test_the_splits_keep_the_effective_batch():
    assert splits(12, 4) == [(12, 1), (6, 2), (4, 3), (3, 4)]
    assert splits(8, 100) == [(8, 1), (4, 2), (2, 4), (1, 8)]
    assert splits(7, 1) == [(7, 1)]


def test_each_card_is_offered_what_it_runs():
    """As NVIDIA lists them: TF32 and BF16 from sm80, tensor cores (fp16) from sm70; Triton,
    and so torch.compile, from sm70."""
    precision, compiled = BY_NAME["precision"], BY_NAME["compile"]
    assert precision.values(CARDS["rtx3070"]) == ("fp32", "tf32", "bf16", "fp16")
    assert precision.values(CARDS["t4"]) == ("fp32", "fp16")
    assert precision.values(CARDS["gtx1070"]) == ("fp32",)
    assert compiled.values(CARDS["gtx1070"]) == ("off",)
    assert compiled.values(CARDS["t4"]) == ("off", "default")


def test_a_step_time_past_accumulation_2_is_the_model_s_own():
    """The line through accumulation 1 and 2 is the time model asked at 4 and 5 itself."""
    card = CARDS["t4"]
    for accum in (4, 5):
        spec = tiny(batch=3, accum=accum, card="t4")
        found = step_time(spec, card)
        asked = training_figures(spec, card)["predicted_step_s"]
        assert found.step_s == pytest.approx(asked, rel=1e-9)
        assert found.low_s <= found.step_s <= found.high_s


def exhaustive(card: str, effective: int) -> list[dict]:
    """Every option of the grid, each traced and timed on its own."""
    precisions = ("fp32", "fp16")  # a T4's: tensor cores, no BF16 or TF32
    found = []
    for (p, precision), (batch, accum) in itertools.product(
        enumerate(precisions), [(effective // a, a) for a in (1, 2, 4) if effective % a == 0]
    ):
        spec = tiny(batch=batch, accum=accum, precision=precision, card=card)
        memory = predict(spec, CARDS[card].capability).reserved_bytes / MIB
        cuda = memory + CUDNN_ALLOWANCE_MIB + DEFAULT_CONTEXT_MIB
        step = training_figures(spec, CARDS[card])["predicted_step_s"]
        found.append(
            {
                "spec": (batch, accum, precision),
                "cuda_mib": cuda,
                "hours": step * STEPS / 3600,
                "simplicity": (p, accum),
            }
        )
    return found


def test_the_plan_picks_what_an_exhaustive_prediction_picks(tmp_path):
    """A budget between the grid's smallest and largest memory, so that some options do not
    fit: the plan's every fit and time is the exhaustive one's, and its choice is the fastest
    that fits (ties: fp32 before fp16, then less accumulation)."""
    card = "t4"
    expected = exhaustive(card, 4)
    memories = sorted(o["cuda_mib"] for o in expected)
    budget = (memories[0] + memories[-1]) / 2
    for o in expected:
        o["fits"] = o["cuda_mib"] <= budget
    assert any(o["fits"] for o in expected) and not all(o["fits"] for o in expected)
    best = min((o for o in expected if o["fits"]), key=lambda o: (o["hours"], o["simplicity"]))

    ranked = Planner().plan(tiny(budget=budget), card, 4, 4, ("split", "precision"), STEPS)
    by_spec = {(o.spec.batch, o.spec.accum, o.spec.precision): o for o in ranked}
    assert set(by_spec) == {o["spec"] for o in expected}
    for o in expected:
        option = by_spec[o["spec"]]
        assert option.fit.fits == o["fits"]
        assert option.fit.cuda_mib == pytest.approx(o["cuda_mib"], abs=1e-9)
        if o["fits"]:
            assert option.hours(STEPS)[0] == pytest.approx(o["hours"], rel=1e-9)
    top = ranked[0]
    assert (top.spec.batch, top.spec.accum, top.spec.precision) == best["spec"]
    # Held to bench.memory --predict-only: the choice fits there too.
    memory_command.main(
        [
            *("--preset", "tiny", "--image-size", "16", "--attention", "8", "--card", card),
            *("--batch", str(top.spec.batch), "--accum", str(top.spec.accum)),
            *("--precision", top.spec.precision),
            *("--budget", f"{budget}MiB", "--predict-only", "--out", str(tmp_path)),
        ]
    )
    (row,) = read_rows(tmp_path / "memory.csv")
    assert row["fits"] is True


def test_compile_is_predicted_as_eager_and_never_preferred():
    """Neither prediction models torch.compile: its options tie with eager ones, which the
    tie keeps first."""
    ranked = Planner().plan(tiny(), "t4", 4, 1, ("compile",), STEPS)
    eager, compiled = ranked
    assert (eager.spec.compile, compiled.spec.compile) == ("off", "default")
    assert eager.hours(STEPS) == compiled.hours(STEPS) and eager.fit == compiled.fit
    assert (
        compiled.predicted_as == ["compile default predicted as off"] and eager.predicted_as == []
    )
    # Said once, not shown: a twin of a row shown says nothing new.
    rows = report.rows({"train_steps": STEPS}, "t4", ranked, None)
    said = report.card_lines(
        [{k: "" if v is None else str(v) for k, v in r.items()} for r in rows], 5
    )
    assert said[0].endswith("2 of 2 options fit; the fastest:") and len(said) == 5, said
    assert " ".join(said[3:]) == (
        "Not ranked, 1 options predicted as another that ties with them: compile default "
        "predicted as off (both predictions trace the eager step)."
    )


def test_a_question_asked_again_is_answered_from_what_was_kept(monkeypatch):
    """A second process (nothing in memory) answers the same question from the answers kept
    beside the traces: the same options, predicted alike, with no trace, no kernels and no
    allocator replay."""
    first = Planner().plan(tiny(), "t4", 4, 4, ("split",), STEPS)
    monkeypatch.setattr(batches, "_models", OrderedDict())
    monkeypatch.setattr(timing, "_lines", {})

    def again(*_args, **_kwargs):
        raise AssertionError("worked out again")

    monkeypatch.setattr(batches, "allocation_stream", again)
    monkeypatch.setattr(timing, "train_step_kernels", again)
    monkeypatch.setattr(stream, "replay", again)
    repeated = Planner().plan(tiny(), "t4", 4, 4, ("split",), STEPS)
    assert [(o.spec, o.fit, o.time) for o in repeated] == [(o.spec, o.fit, o.time) for o in first]
