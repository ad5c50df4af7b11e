"""Every grouping of rows reads BenchSpec's axes, so an axis added later (one declaration) is
never merged away: with a throw-away axis declared the way every axis is, rows that differ only
in it stay apart in the spec's name, every harness's command line, the loss comparisons, the
implementation and rank ratios, the displayed table and the plots."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bench import loss as loss_command
from bench import sampling as sampling_command
from bench import spec as spec_module
from bench.axis import axis, int_list
from bench.core import RunContext, axes, display_columns
from bench.spec import BenchSpec
from bench.sweep.cli import build_parser
from bench.tables import curves, plots, ratios

WINGS = (1, 2)


@pytest.fixture
def winged(monkeypatch):
    """BenchSpec with one more axis, declared the way every axis is: one field, with its
    option's help and parser."""
    wings = axis(1, parse=int_list(), help="wings per spec, a comma list (default %(default)s)")
    cls = dataclasses.make_dataclass(
        "BenchSpec", [("wings", int, wings)], bases=(BenchSpec,), frozen=True
    )
    monkeypatch.setattr(spec_module, "BenchSpec", cls)
    return cls


def rows_of(cls, tmp_path: Path, grid: list[dict], **figures) -> list[dict]:
    """An ok row per (wings, spec changes): its spec columns, `figures`, and a loss curve of its
    own (the same numbers in every row) for the loss comparisons."""
    rows = []
    for wings in WINGS:
        for changes in grid:
            spec = cls(preset="tiny", image_size=16, attention="8", wings=wings, **changes)
            curve = tmp_path / f"{spec.name}.csv"
            curve.write_text("step,loss\n1,1.0\n2,0.5\n")
            rows.append(
                {
                    "spec_id": spec.spec_id,
                    **{a: getattr(spec, a) for a in axes()},
                    "effective_batch": spec.effective_batch,
                    "status": "ok",
                    "curve_path": str(curve),
                    "val_images": 8,
                    "lr": 1e-3,
                    "threads": 1,
                    "final_loss": 0.5,
                    "val_loss": 0.5,
                    "skipped_steps": 0,
                    **figures,
                }
            )
    return rows


def test_the_name_tells_the_new_axis_apart(winged):
    one, two = (winged(wings=w) for w in WINGS)
    assert one.name != two.name and one.spec_id != two.spec_id
    assert two.name == one.name + "-wings2"  # named, off its default, after the spelled axes


def test_every_command_line_takes_the_new_axis(winged):
    parsers = {
        "memory": build_parser("python -m bench.memory", "", {}),
        "loss": loss_command.build_loss_parser(),
        "sampling": sampling_command.build_sampling_parser(),
    }
    for name, parser in parsers.items():
        assert parser.parse_args(["--wings", "1,2"]).wings == "1,2", name


def test_the_loss_comparisons_keep_the_new_axis_apart(winged, tmp_path):
    """Accumulation is compared within one value of every other axis: 8 x 1 against 2 x 4 once
    per wings value, never across; and each precision against fp32 alike."""
    split = rows_of(winged, tmp_path, [dict(batch=8, accum=1), dict(batch=2, accum=4)])
    said = [s for s in curves.compare(split, RunContext(tmp_path, "R")) if "accum" in s]
    assert len(said) == 2, said
    assert sorted(s.split(":")[0] for s in said) == [
        "Accumulation, effective batch 8 (wings 1)",
        "Accumulation, effective batch 8 (wings 2)",
    ]
    precisions = rows_of(winged, tmp_path, [dict(precision="fp32"), dict(precision="bf16")])
    said = [s for s in curves.compare(precisions, RunContext(tmp_path, "R")) if "vs fp32" in s]
    assert sorted(s.split(":")[0] for s in said) == [
        "precision bf16 vs fp32 (wings 1)",
        "precision bf16 vs fp32 (wings 2)",
    ]


def test_the_ratios_keep_the_new_axis_apart(winged, tmp_path):
    impls = rows_of(winged, tmp_path, [dict(impl="ddpm"), dict(impl="diffusers")], img_per_s=2.0)
    said = ratios.impl_ratios(impls, "img_per_s", "img/s")
    assert [s.split(":")[0] for s in said] == [
        "ddpm vs diffusers, wings 1",
        "ddpm vs diffusers, wings 2",
    ]
    ranked = rows_of(
        winged,
        tmp_path,
        [dict(ranks=1, parallel="ddp"), dict(ranks=2, parallel="ddp")],
        img_per_s=2.0,
    )
    said = [s for s in ratios.rank_scaling(ranked, "img_per_s", "img/s") if s.startswith("Scaling")]
    assert [s.split(":")[0] for s in said] == ["Scaling ddp, wings 1", "Scaling ddp, wings 2"]


def test_the_table_and_the_plots_show_the_new_axis(winged, tmp_path):
    rows = rows_of(winged, tmp_path, [dict(batch=2)], img_per_s=2.0)
    assert "wings" in axes()
    columns, fixed = display_columns(rows, ["status", "img_per_s"])
    assert columns[0] == "wings" and "wings" not in fixed
    assert plots.varying(rows) == ["wings"]
