"""The columns of every table and the shared command line come from BenchSpec's fields alone: a
spec class with one more axis (one declaration) gets that column in the CSV, the Markdown and
--resume, and an option that sweeps; and a table written before an axis or a figure existed is
upgraded, every old row keeping its values."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest
from rich.console import Console

from bench import spec as spec_module
from bench.axis import axis, int_list
from bench.core import Harness, axes, column_dtypes, spec_columns
from bench.figure import Figure
from bench.spec import BenchSpec
from bench.sweep.cli import build_parser, run_cli, specs_from_args
from bench.sweep.runner import run_sweep
from bench.tables.results import ResultsTable, read_rows

MEASURED: list[str] = []


def measure(spec, context) -> dict:
    MEASURED.append(spec.spec_id)
    return {"value": 10.0 * spec.wings}


HARNESS = Harness(name="winged", measure=measure, figures=[Figure("value", "", shown=True)])


@pytest.fixture
def winged(monkeypatch):
    """BenchSpec with one more axis, declared the way every axis is: one field, with its
    option's help and parser."""
    wings = axis(1, parse=int_list(), help="wings per spec, a comma list (default %(default)s)")
    cls = dataclasses.make_dataclass(
        "BenchSpec", [("wings", int, wings)], bases=(BenchSpec,), frozen=True
    )
    monkeypatch.setattr(spec_module, "BenchSpec", cls)
    monkeypatch.setattr("bench.harnesses.named", lambda name: HARNESS)  # inline runs find it
    MEASURED.clear()
    return cls


def quiet_console() -> Console:
    return Console(file=open("/dev/null", "w"), width=120)  # noqa: SIM115


def header(path: Path) -> list[str]:
    with path.open(newline="") as f:
        return next(csv.reader(f))


def test_a_new_axis_is_a_column_of_the_csv_the_markdown_and_resume(winged, tmp_path):
    specs = [winged(preset="tiny", image_size=16, attention="8", wings=w) for w in (1, 2)]
    assert "wings" in axes() and column_dtypes()["wings"] == "int64"
    run_sweep(
        HARNESS, specs, tmp_path, "python -m bench.winged", inline=True, console=quiet_console()
    )
    csv_path = tmp_path / "winged.csv"
    assert "wings" in header(csv_path)
    assert [(r["wings"], r["value"]) for r in read_rows(csv_path)] == [(1, 10.0), (2, 20.0)]
    rows = [
        line.split("|")[1:-1]
        for line in (tmp_path / "winged.md").read_text().splitlines()
        if line.startswith("|")
    ]
    assert [c.strip() for c in rows[0]] == ["wings", "status", "value"]
    assert [(r[0].strip(), r[2].strip()) for r in rows[2:]] == [("1", "10.00"), ("2", "20.00")]
    # The axis is in the spec id, so --resume tells the two specs apart and reruns neither.
    assert len(set(MEASURED)) == 2
    MEASURED.clear()
    more = specs + [winged(preset="tiny", image_size=16, attention="8", wings=3)]
    run_sweep(
        HARNESS,
        more,
        tmp_path,
        "python -m bench.winged",
        inline=True,
        resume=True,
        console=quiet_console(),
    )
    assert MEASURED == [more[2].spec_id]


TINY = ["--preset", "tiny", "--image-size", "16", "--attention", "8", "--device", "cpu"]


def test_a_new_axis_is_an_option_that_sweeps(winged, tmp_path, capsys):
    parser = build_parser("python -m bench.winged", "", {})
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    said = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width
    assert "--wings WINGS wings per spec, a comma list (default 1)" in said
    assert [s.wings for s in specs_from_args(parser.parse_args(TINY))] == [1]
    specs = specs_from_args(parser.parse_args([*TINY, "--wings", "2,3", "--batch", "1,2"]))
    assert [(s.batch, s.wings) for s in specs] == [(1, 2), (1, 3), (2, 2), (2, 3)]
    # Its values are checked by its declared parser: one line, exit status 2.
    with pytest.raises(SystemExit) as info:
        run_cli(HARNESS, parser, [*TINY, "--wings", "0", "--out", str(tmp_path)])
    assert info.value.code == 2
    assert "--wings 0 is not allowed: it must be >= 1." in capsys.readouterr().err
    # And a sweep along it is one row per value.
    rows = run_cli(HARNESS, parser, [*TINY, "--wings", "1,2", "--inline", "--out", str(tmp_path)])
    assert [(r["wings"], r["value"]) for r in rows] == [(1, 10.0), (2, 20.0)]
    assert [r["wings"] for r in read_rows(tmp_path / "winged.csv")] == [1, 2]


def test_a_table_from_before_an_axis_is_upgraded_with_its_default(winged, tmp_path):
    old_columns = [c for c in spec_columns() if c != "wings"] + ["value"]
    csv_path = tmp_path / "winged.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=old_columns)
        writer.writeheader()
        row = {c: "" for c in old_columns}
        row.update(
            run_id="r",
            timestamp="t",
            spec_id="old",
            preset="tiny",
            image_size=16,
            batch=4,
            accum=1,
            precision="fp32",
            attention="8",
            compile="off",
            checkpointing="off",
            device="cpu",
            ranks=1,
            parallel="none",
            grad_sync="last",
            impl="ddpm",
            dataset="synthetic",
            sampler="none",
            sampling_steps=0,
            repeat=1,
            params=5,
            effective_batch=4,
            status="ok",
            value=7.5,
        )
        writer.writerow(row)
    table = ResultsTable(tmp_path, "winged", ["value"])
    said = table.check_header()
    assert "wings = 1" in said and "1 rows" in said
    assert header(csv_path) == table.columns
    (upgraded,) = read_rows(csv_path)
    assert upgraded["wings"] == 1 and upgraded["batch"] == 4 and upgraded["value"] == 7.5
    assert table.check_header() is None  # once is enough


def test_a_table_from_before_a_figure_is_upgraded_with_it_empty(tmp_path):
    csv_path = tmp_path / "memory.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=spec_columns() + ["value"])
        writer.writeheader()
        writer.writerow(
            {
                **{a: getattr(BenchSpec, a) for a in axes()},
                "run_id": "r",
                "timestamp": "t",
                "spec_id": "old",
                "params": 5,
                "effective_batch": 2,
                "status": "ok",
                "error": "",
                "value": "7.5",
            }
        )
    table = ResultsTable(tmp_path, "memory", ["value", "later"])
    said = table.check_header()
    assert "later empty" in said and "1 rows" in said
    assert header(csv_path) == table.columns
    (upgraded,) = read_rows(csv_path)
    assert upgraded["value"] == 7.5 and upgraded["later"] is None  # not measured then
    assert table.check_header() is None


def test_a_table_with_a_column_no_version_knows_is_refused_untouched(tmp_path):
    csv_path = tmp_path / "memory.csv"
    text = (",".join(spec_columns() + ["value", "mystery"]) + "\r\n").encode()
    csv_path.write_bytes(text)
    with pytest.raises(ValueError, match="other columns than this version writes"):
        ResultsTable(tmp_path, "memory", ["value"]).check_header()
    assert csv_path.read_bytes() == text


def test_the_committed_tables_upgrade_to_the_same_rows(tmp_path):
    """The committed CSVs read back with every value, and those written before ranks, parallel
    and grad_sync existed with those axes at 1, none and last."""
    from bench import harnesses

    results = Path(__file__).resolve().parents[2] / "results"
    for csv_path in sorted(results.glob("*.csv")):
        if csv_path.stem not in harnesses.names():
            continue  # plan.csv: the plan's rows, no harness's (bench.planning.report)
        harness = harnesses.named(csv_path.stem)
        before = read_rows(csv_path, renamed=harness.renamed)
        copy = tmp_path / csv_path.name
        copy.write_bytes(csv_path.read_bytes())
        ResultsTable.of(harness, tmp_path).check_header()
        after = read_rows(copy)
        assert len(after) == len(before)
        for old, new in zip(before, after):
            assert {k: new[k] for k in old} == old
            if "ranks" not in header(csv_path):
                assert (new["ranks"], new["parallel"], new["grad_sync"]) == (1, "none", "last")


def test_a_renamed_column_is_read_under_its_new_name(tmp_path):
    """Sampling's img_per_s was a projection: old tables read as projected_img_per_s, the name
    its declaration says it had (Figure.was)."""
    from bench import harnesses

    sampling = harnesses.named("sampling")
    assert sampling.renamed == {"img_per_s": "projected_img_per_s"}
    figures = sampling.figure_columns
    old = [c if c != "projected_img_per_s" else "img_per_s" for c in spec_columns() + figures]
    csv_path = tmp_path / "sampling.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=old)
        writer.writeheader()
        writer.writerow(
            {c: "" for c in old}
            | {
                "run_id": "r",
                "timestamp": "t",
                "spec_id": "s",
                "preset": "tiny",
                "image_size": 16,
                "batch": 4,
                "accum": 1,
                "precision": "fp32",
                "attention": "8",
                "compile": "off",
                "checkpointing": "off",
                "device": "cpu",
                "ranks": 1,
                "parallel": "none",
                "grad_sync": "last",
                "impl": "ddpm",
                "dataset": "synthetic",
                "sampler": "ddim",
                "sampling_steps": 50,
                "repeat": 1,
                "params": 5,
                "effective_batch": 4,
                "status": "ok",
                "img_per_s": 2.5,
            }
        )
    (row,) = read_rows(csv_path, renamed=sampling.renamed)
    assert row["projected_img_per_s"] == 2.5 and "img_per_s" not in row
    said = ResultsTable.of(sampling, tmp_path).check_header()
    assert "img_per_s is now projected_img_per_s" in said
    assert header(csv_path) == spec_columns() + figures
