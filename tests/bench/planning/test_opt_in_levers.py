"""The opt-in levers (optimizer, EMA placement, attention backend, channels-last): offered only
where --levers names them, an attention backend the card cannot run left out and said (never
predicted as if it ran), and the choice with 8-bit AdamW allowed held to bench.memory
--predict-only."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench import memory as memory_command
from bench import plan
from bench.cards import CARDS
from bench.planning import planner, report
from bench.planning.levers import LEVERS
from bench.predict.attention import NoBackend
from bench.predict.fit import predict_fit
from bench.spec import BenchSpec
from bench.tables.results import read_rows

STEPS = 800_000
TINY = ["--preset", "tiny", "--image-size", "16", "--attention", "8"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**changes) -> BenchSpec:
    fields = dict(preset="tiny", image_size=16, attention="8", predict_only=True)
    return BenchSpec(**{**fields, **changes})


def test_the_opt_in_levers_are_offered_only_where_named():
    assert plan.build_parser().get_default("levers") == "split,precision,checkpointing,compile"
    default = planner.options(tiny(), "rtx3070", 4, 1, plan.DEFAULT_LEVERS)
    assert {(s.optimizer, s.ema, s.attention_backend, s.channels_last) for s, _ in default} == {
        ("adamw", "device", "auto", "off")
    }
    named = ("ema", "attention_backend", "channels_last", "optimizer")
    grid = planner.options(tiny(), "rtx3070", 4, 1, named)
    assert {s.ema for s, _ in grid} == {"device", "cpu"}  # never off: the EMA is sampled
    assert {s.attention_backend for s, _ in grid} == {"auto", "flash", "efficient", "math"}
    assert {s.channels_last for s, _ in grid} == {"off", "on"}
    assert {"adamw", "sgd", "adamw8bit"} <= {s.optimizer for s, _ in grid}
    help_text = plan.build_parser().format_help()
    for lever in named:
        assert f"{lever}:" in help_text


def test_named_values_keep_a_lever_to_those_the_card_runs():
    """--levers NAME=A+B: the grid keeps each lever to the values named that the card runs (a
    T4 has no bf16), in the lever's own order, whatever order they were named in."""
    allowed, only = planner.parse_levers(
        "split,optimizer=sgd+adamw,precision=bf16+fp32", ["rtx3070", "t4"]
    )
    assert allowed == ("split", "optimizer", "precision")
    assert only == {"optimizer": ("sgd", "adamw"), "precision": ("bf16", "fp32")}
    for card, precisions in (("rtx3070", ["fp32", "bf16"]), ("t4", ["fp32"])):
        grid = planner.options(tiny(), card, 4, 4, allowed, only)
        settings = {(s.precision, s.optimizer, s.batch, s.accum) for s, _ in grid}
        splits = [(4, 1), (2, 2), (1, 4)]
        assert settings == {
            (p, o, b, a) for p in precisions for o in ("adamw", "sgd") for b, a in splits
        }
        assert [s.precision for s, _ in grid][:: 2 * len(splits)] == precisions


def test_a_card_without_flash_is_never_offered_it_as_if_it_ran():
    """A T4 (sm75) has no flash attention: the option is left out with the dispatcher's reason,
    as bench.predict.fit refuses it, and every option ranked is one it runs."""
    with pytest.raises(NoBackend):
        predict_fit(tiny(card="t4", batch=4, attention_backend="flash"), CARDS["t4"].capability)
    ranked = planner.Planner().plan(tiny(), "t4", 4, 1, ("attention_backend",), STEPS)
    refused = [o for o in ranked if o.cannot_run]
    assert [o.spec.attention_backend for o in refused] == ["flash"]
    assert refused[0].fit is None and refused[0].time is None and ranked[-1] is refused[0]
    assert "flash cannot run on a sm75 card" in refused[0].cannot_run
    assert all(o.spec.attention_backend != "flash" for o in ranked if o.time is not None)
    rows = report.rows({"train_steps": STEPS}, "t4", ranked, None)
    assert rows[-1]["rank"] is None and rows[-1]["fits"] is False
    said = report.card_lines([{k: plan._text(v) for k, v in r.items()} for r in rows], 5)
    assert said[0].endswith("3 of 3 options fit; the fastest:")
    assert "Left out, 1 options that cannot run: attention backend flash" in " ".join(said)
    assert all("flash-attn" not in line for line in said)


def test_the_choice_with_8bit_adamw_fits_per_bench_memory(tmp_path, monkeypatch):
    """AdamW and 8-bit AdamW over two splits, a budget that leaves some out: the choice fits
    per bench.memory --predict-only with the same settings; 8-bit AdamW's step is timed as its
    own update (bench.predict.optimizer_update), not as AdamW's, and the plan says nothing of it
    as unseen."""
    two = tuple(
        dataclasses.replace(lever, values=lambda card: ("adamw", "adamw8bit"))
        if lever.field == "optimizer"
        else lever
        for lever in LEVERS
    )
    monkeypatch.setattr(planner, "LEVERS", two)
    monkeypatch.setattr(report, "LEVERS", two)
    card = "t4"
    every = planner.Planner().plan(tiny(), card, 4, 2, ("split", "optimizer"), STEPS)
    memories = sorted(o.fit.cuda_mib for o in every)
    assert memories[0] < memories[-1]
    budget = (memories[0] + memories[-1]) / 2
    ranked = planner.Planner().plan(tiny(budget=budget), card, 4, 2, ("split", "optimizer"), STEPS)
    fitting = [o for o in ranked if o.time is not None]
    assert fitting and len(fitting) < len(ranked)
    by = {(o.spec.batch, o.spec.optimizer): o for o in fitting}
    for (batch, optimizer), option in by.items():
        if optimizer == "adamw8bit":
            assert option.changes_loss == ["optimizer adamw8bit"]
            assert option.predicted_as == []
            if (batch, "adamw") in by:
                assert option.hours(STEPS) != by[batch, "adamw"].hours(STEPS)
    top = ranked[0]
    memory_command.main(
        [
            *TINY,
            *("--card", card, "--batch", str(top.spec.batch), "--accum", str(top.spec.accum)),
            *("--optimizer", top.spec.optimizer),
            *("--budget", f"{budget}MiB", "--predict-only", "--out", str(tmp_path)),
        ]
    )
    (row,) = read_rows(tmp_path / "memory.csv")
    assert row["fits"] is True
    assert row["predicted_cuda_mib"] == pytest.approx(top.fit.cuda_mib, abs=0.1)
    rows = report.rows({"train_steps": STEPS}, card, ranked, None)
    said = report.card_lines([{k: plan._text(v) for k, v in r.items()} for r in rows], 5)
    assert all(len(line) <= 80 for line in said)
    assert "timed as" not in " ".join(said)
