"""Every harness's figures, declared once (bench.figure): names that say their unit, one
declaration per column, the displayed columns and the verdict's drawn from them, and a
--predict-only row told from a measured one by which figures it holds."""

from __future__ import annotations

import re

import pytest

from bench import harnesses
from bench.core import axes
from bench.figure import Figure

# A column's name ends with its unit, so a table read without the notes still says it.
SUFFIXES = {"_mib": "MiB", "_pct": "%", "_ms": "ms", "_h": "h", "_per_s": "/s", "_s": "s"}


def unit_of_name(name: str) -> str | None:
    for suffix, unit in SUFFIXES.items():
        if name.endswith(suffix):
            return unit
    return None


@pytest.mark.parametrize("name", harnesses.names())
def test_each_figure_is_declared_once_and_its_name_says_its_unit(name):
    harness = harnesses.named(name)
    names = harness.figure_columns
    assert len(names) == len(set(names)), "a column declared twice"
    assert not set(names) & set(axes()), "a figure named as an axis"
    for figure in harness.figures:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", figure.name), figure.name
        said = unit_of_name(figure.name)
        if said == "/s":
            assert figure.unit.endswith("/s"), figure
        elif said is not None:
            assert figure.unit == said, figure
        words = figure.name.split("_")
        assert (figure.unit == "MiB") == ("mib" in words), figure  # a size is always named so
        assert (figure.unit == "%") == ("pct" in words), figure  # and a share


@pytest.mark.parametrize("name", harnesses.names())
def test_the_displayed_and_verdict_columns_come_from_the_declarations(name):
    harness = harnesses.named(name)
    shown = [f.name for f in harness.figures if f.shown]
    assert harness.display_columns == [*harness.key_axes, "status", *shown]
    assert set(harness.key_axes) <= set(axes())
    needed = {f.name for f in harness.figures if f.verdict}
    assert set(harness.verdict_columns) | set(harness.predicted_verdict_columns) == needed
    assert not needed or harness.verdict is not None
    assert harness.kinds() == {f.name: f.kind for f in harness.figures}


@pytest.mark.parametrize("name", harnesses.names())
def test_a_predict_only_row_is_the_one_with_predicted_figures_alone(name):
    harness = harnesses.named(name)
    by_source = {}
    for f in harness.figures:
        by_source.setdefault(f.source, []).append(f.name)
    value = {float: 1.0, bool: True, str: "x"}
    kinds = harness.kinds()
    predicted = {c: value[kinds[c]] for c in by_source.get("predicted", [])}
    settings = {c: value[kinds[c]] for c in by_source.get("setting", [])}
    assert harness.predict_only(predicted) == bool(predicted)
    assert harness.predict_only({**predicted, **settings}) == bool(predicted)
    for measured in by_source.get("measured", []) + by_source.get("projected", []):
        assert not harness.predict_only({**predicted, measured: value[kinds[measured]]})
    assert not harness.predict_only({})


@pytest.mark.parametrize(
    "changes, bad",
    [
        (dict(kind=int), "kind"),
        (dict(source="guessed"), "source"),
        (dict(verdict="some rows"), "verdict"),
    ],
)
def test_a_declaration_out_of_its_vocabulary_is_refused(changes, bad):
    with pytest.raises(ValueError, match=bad):
        Figure("x_s", "s", **changes)


def test_a_shared_figure_is_shown_by_the_harness_that_shows_it():
    step = Figure("step_s", "s")
    assert step.show().shown and not step.shown
    assert step.show() == Figure("step_s", "s", shown=True)
