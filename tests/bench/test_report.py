"""`python -m bench.report`: rows read back from a CSV have the harness's own types, the .md a
sweep writes is rebuilt byte for byte, sections follow commands (a --resume run joins its
command's), bad input is one line and exit 2 with nothing touched, plots are reproducible PNGs,
and the committed results/*.md rebuild exactly from the committed CSVs."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import harnesses, report
from bench import memory as memory_command
from bench.core import Harness
from bench.figure import Figure
from bench.harnesses import loss, memory, sampling, throughput
from bench.spec import BenchSpec
from bench.sweep.runner import run_sweep, spec_row
from bench.tables import markdown, plots
from bench.tables.results import ResultsError, ResultsTable, parse_cell, read_rows, read_runs
from tests.helpers.cli_checks import check_one_line_error, snapshot

ROOT = Path(__file__).resolve().parents[2]
# PYTHONPATH: the subprocess runs this checkout's bench whatever its working directory.
ENV = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
TINY = BenchSpec(preset="tiny", image_size=16, attention="8", measure_steps=1, warmup_steps=0)
COMMAND = "python -m bench.memory --preset tiny --batch 1,2 --accum 1 --warmup 0 --steps 1"
PNG = b"\x89PNG\r\n\x1a\n"


def run_report(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench.report", *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=cwd,
        timeout=300,
    )


# ----- (a) the typed round trip -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -3,
        35_746_307,
        0.0,
        -0.0,
        0.1,
        1 / 3,
        1e-05,
        1.5e20,
        8192.0,
        2.5e-300,
        math.inf,
        -math.inf,
        "measured",
        "/abs/results/loss/run/curve.csv",
        "16+8",
        "1.2.3",
        "e5",
        "True story",
    ],
)
def test_a_figure_round_trips_with_its_type(tmp_path, value):
    table = ResultsTable(tmp_path, "fake", ["x"])
    row = {**spec_row(TINY, "run"), "status": "ok", "error": None, "x": value}
    table.append(row)
    (back,) = read_rows(table.csv_path)
    assert type(back["x"]) is type(value) and back["x"] == value
    assert back == row  # the spec columns too: attention stays the string "8", error None


def test_nan_round_trips():
    assert math.isnan(parse_cell("nan")) and parse_cell("") is None


def test_rows_of_a_sweep_read_back_as_the_harness_made_them(swept):
    out, rows = swept
    back = read_rows(out / "memory.csv")
    assert len(back) == len(rows) == 2
    for made, read in zip(rows, back):
        assert set(made) <= set(read)
        for column, value in read.items():  # a figure the harness did not give is None
            assert type(made.get(column)) is type(value) and made.get(column) == value, column
        assert memory.verdict(read) == memory.verdict(made)


def test_a_bad_cell_in_a_spec_column_is_a_results_error(tmp_path):
    table = ResultsTable(tmp_path, "fake", ["x"])
    table.append({**spec_row(TINY, "run"), "status": "ok", "x": 1, "accum": "two"})
    with pytest.raises(ResultsError, match="line 2: accum 'two' is not an integer"):
        read_rows(table.csv_path)


# ----- (b) the sweep's .md is what bench.report rebuilds --------------------------------------


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A real bench.memory sweep, inline: the tiny preset at batch 1 and 2, one step each."""
    out = tmp_path_factory.mktemp("swept") / "results"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = run_sweep(
            memory.HARNESS, [TINY.replace(batch=b) for b in (1, 2)], out, COMMAND, inline=True
        )
    finally:
        torch.set_num_threads(threads)
    assert [r["status"] for r in rows] == ["ok", "ok"], [r["error"] for r in rows]
    return out, rows


def test_report_rebuilds_the_sweeps_markdown_byte_for_byte(swept, tmp_path):
    out = tmp_path / "results"
    shutil.copytree(swept[0], out)
    written = (out / "memory.md").read_bytes()
    assert f"## Command: `{COMMAND}`".encode() in written
    (out / "memory.md").unlink()
    result = run_report("--out", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "memory.md").read_bytes() == written
    plot = out / "plots" / "memory_vs_batch.png"
    assert result.stdout.splitlines() == [f"wrote {out / 'memory.md'}", f"wrote {plot}"]
    assert plot.read_bytes().startswith(PNG)
    (out / "memory.md").write_text("edited by hand\n")
    assert run_report("--out", str(out), "--no-plots").returncode == 0
    assert (out / "memory.md").read_bytes() == written


def test_what_was_written_is_on_stdout_and_a_stray_csv_on_stderr(swept, tmp_path, capsys):
    out = tmp_path / "results"
    shutil.copytree(swept[0], out)
    (out / "notes.csv").write_text("mine,not a harness's\n")
    report.main(["--out", str(out), "--no-plots"])
    captured = capsys.readouterr()
    assert captured.out == f"wrote {out / 'memory.md'}\n"
    assert captured.err == "notes.csv: no harness named notes, skipped.\n"


def test_a_closed_stdout_blames_nothing_and_costs_no_file(swept, tmp_path):
    """`python -m bench.report | head -0`: every file is written, no traceback, no error line
    about --out, and exit status 141 (128 + SIGPIPE) for the output cut short."""
    out = tmp_path / "results"
    shutil.copytree(swept[0], out)
    written = (out / "memory.md").read_bytes()
    (out / "memory.md").unlink()
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.report", "--out", str(out)],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
    finally:
        os.close(write)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 141, stderr
    assert stderr == ""
    assert (out / "memory.md").read_bytes() == written
    assert (out / "plots" / "memory_vs_batch.png").read_bytes().startswith(PNG)


def test_sidecar_records_each_run_when_it_starts(swept):
    out, rows = swept
    data = json.loads((out / "memory.json").read_text())
    assert set(data) == {"harness", "runs"} and data["harness"] == "memory"
    (run_id,) = data["runs"]
    assert run_id == rows[0]["run_id"]
    record = data["runs"][run_id]
    assert record["command"] == COMMAND and record["options"] == {}
    assert record["environment"]["torch"] == torch.__version__
    assert record["started"] <= rows[0]["timestamp"]


# ----- (c) sections -----------------------------------------------------------------------------

ENVIRONMENT = {
    "torch": "2.x",
    "device_name": "Test CPU",
    "torch_threads": 1,
    "git_commit": "abc1234",
}


def never_measured(spec, context):
    raise AssertionError("report tests render rows; they measure nothing")


FAKE = Harness(
    name="fake",
    measure=never_measured,
    figures=[Figure("value", "", shown=True)],
    notes=["A note on value."],
    verdict=lambda r: f"{r['spec_id']}: {r['status']}, value {r['value']}.",
    compare=lambda rows, ctx: [
        f"Compared {len(rows)} rows; latest run {ctx.run_id}, options {ctx.options}."
    ],
)


def add_run(
    out: Path,
    run_id: str,
    command: str,
    stamp: str,
    rows: list[tuple],
    environment: dict = ENVIRONMENT,
) -> None:
    table = ResultsTable(out, FAKE.name, FAKE.figure_columns)
    table.record_run(run_id, command, environment, {"top": 3}, stamp)
    for batch, status, value in rows:
        table.append(
            {
                **spec_row(TINY.replace(batch=batch), run_id),
                "timestamp": stamp,
                "status": status,
                "error": None if status == "ok" else "boom",
                "value": value,
            }
        )


def test_base_command_drops_resume_only():
    assert (
        markdown.base_command("python -m bench.memory --batch 2 --resume")
        == "python -m bench.memory --batch 2"
    )
    assert (
        markdown.base_command("python -m bench.loss --res --data-root 'my data'")
        == "python -m bench.loss --data-root 'my data'"
    )
    assert (
        markdown.base_command("python -m bench.loss --data-root 'my  data'")
        == "python -m bench.loss --data-root 'my  data'"
    )


def test_sections_by_command_newest_first_and_resume_joins_its_command(tmp_path):
    add_run(
        tmp_path,
        "A",
        "python -m bench.fake --batch 1,2",
        "2026-01-01T00:00:00+00:00",
        [(1, "ok", 1.5), (2, "error", None)],
    )
    add_run(
        tmp_path,
        "B",
        "python -m bench.fake --batch 4",
        "2026-01-01T01:00:00+00:00",
        [(4, "ok", 4.0)],
    )
    add_run(
        tmp_path,
        "C",
        "python -m bench.fake --batch 1,2 --resume",
        "2026-01-01T02:00:00+00:00",
        [(2, "ok", 2.25)],
        environment={**ENVIRONMENT, "git_commit": "def5678"},
    )
    text, found = markdown.render(FAKE, tmp_path)
    assert [s.command for s in found] == [
        "python -m bench.fake --batch 1,2",
        "python -m bench.fake --batch 4",
    ]
    first, second = found
    assert [(r["batch"], r["run_id"], r["status"]) for r in first.rows] == [
        (1, "A", "ok"),
        (2, "C", "ok"),
    ]  # the resumed spec's latest row, in its first place
    assert first.latest_run == "C" and list(first.runs) == ["A", "C"]
    assert first.environment["git_commit"] == "def5678"
    assert "Compared 2 rows; latest run C, options {'top': 3}." in first.sentences
    assert [r["batch"] for r in second.rows] == [4] and list(second.runs) == ["B"]
    # In the text: newest first, the runs named where there are several, notes once.
    a = text.index("## Command: `python -m bench.fake --batch 1,2`\n")
    b = text.index("## Command: `python -m bench.fake --batch 4`\n")
    assert a < b < text.index("## Notes")
    assert "Environment: torch 2.x, Test CPU, 1 threads, commit def5678" in text[a:b]
    assert (
        "Rows from 2 runs, oldest first: `A` (1 row; environment: torch 2.x, Test CPU, "
        "1 threads, commit abc1234), `C` (1 row; `--resume`)."
    ) in text[a:b]
    assert "Rows from" not in text[b:]
    assert text.count("- A note on value.") == 1
    assert "2.25" in text[a:b]
    assert "boom" not in text  # the error row was replaced by the resumed run's ok row


def test_rows_without_a_run_record_are_their_own_section(tmp_path):
    add_run(tmp_path, "A", "python -m bench.fake", "2026-01-01T00:00:00+00:00", [(1, "ok", 1.0)])
    table = ResultsTable(tmp_path, FAKE.name, FAKE.figure_columns)
    table.append(
        {
            **spec_row(TINY, "X"),
            "timestamp": "2026-01-02T00:00:00+00:00",
            "status": "ok",
            "value": 2.0,
        }
    )
    text, found = markdown.render(FAKE, tmp_path)
    assert [s.command for s in found] == [None, "python -m bench.fake"]
    assert "## Run `X` (its command is not in `fake.json`)\n\nEnvironment: not recorded" in text


def test_a_sidecar_without_run_records_is_refused(tmp_path):
    path = tmp_path / "fake.json"
    path.write_text(json.dumps({"harness": "fake", "command": "python -m bench.fake"}))
    with pytest.raises(ResultsError, match="is not a run record \\(no 'runs'\\)"):
        read_runs(path)


# ----- (d) bad input ------------------------------------------------------------------------------


def test_missing_folder_is_one_line_exit_2(tmp_path):
    result = run_report("--out", str(tmp_path / "nope"))
    check_one_line_error("nope", result.returncode, result.stderr, result.stdout)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def good(swept, tmp_path):
    out = tmp_path / "results"
    shutil.copytree(swept[0], out)
    return out


BAD = {
    "unknown harness": (["--harness", "memory,nope"], None, "'nope' is not a harness"),
    "absent csv": (["--harness", "throughput"], None, "throughput.csv does not exist"),
    "not a folder": (["--out", "FILE"], None, "is not a folder"),
    "garbage csv": ([], ("memory.csv", b"\xff\xfe\x00garbage"), "memory.csv cannot be read"),
    "no columns": ([], ("memory.csv", b"a,b\n1,2\n"), "memory.csv is not a results table"),
    "bad cell": ([], ("memory.csv", "REPLACE"), "batch 'big' is not an integer"),
    "bad sidecar": ([], ("memory.json", b"{not json"), "memory.json is not a run record"),
    "another bad csv": ([], ("loss.csv", b"run_id\n"), "loss.csv is not a results table"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_exit_2_and_nothing_is_touched(good, capsys, case):
    args, damage, says = BAD[case]
    if damage is not None:
        name, data = damage
        if data == "REPLACE":
            header, first, *rest = (good / name).read_text().splitlines(keepends=True)
            cells = first.split(",")
            cells[header.split(",").index("batch")] = "big"
            data = "".join([header, ",".join(cells), *rest]).encode()
        (good / name).write_bytes(data)
    args = [str(good / "memory.md") if a == "FILE" else a for a in args]
    before = snapshot(good.parent)
    with pytest.raises(SystemExit) as info:
        report.main(["--out", str(good), *args] if "--out" not in args else args)
    captured = capsys.readouterr()
    check_one_line_error(says, info.value.code, captured.err, captured.out)
    assert snapshot(good.parent) == before  # memory.md too, though memory.csv may be fine


@pytest.mark.parametrize(
    "column, value",
    [("status", "weird"), ("step_s", "fast"), ("step_s", "True"), ("fits", "maybe"), ("fits", "1")],
)
def test_a_cell_of_the_wrong_kind_is_one_line_exit_2(good, capsys, column, value):
    path = good / "memory.csv"
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    rows[0][column] = value
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    before = snapshot(good.parent)
    with pytest.raises(SystemExit) as info:
        report.main(["--out", str(good), "--no-plots"])
    captured = capsys.readouterr()
    check_one_line_error(
        f"{path} line 2: {column} {value!r} is not", info.value.code, captured.err, captured.out
    )
    assert snapshot(good.parent) == before


def rewrite(path: Path, change) -> None:
    """memory.csv with change(rows, columns) applied, written as a CSV writer would."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns = change(rows, list(rows[0]))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.parametrize("column", memory.HARNESS.verdict_columns)
def test_a_table_without_a_column_the_verdict_needs_is_one_line_exit_2(good, capsys, column):
    rewrite(good / "memory.csv", lambda rows, columns: [c for c in columns if c != column])
    before = snapshot(good.parent)
    with pytest.raises(SystemExit) as info:
        report.main(["--out", str(good), "--no-plots"])
    captured = capsys.readouterr()
    spec_id = read_rows(good / "memory.csv")[0]["spec_id"]
    check_one_line_error(
        f"memory.csv: the ok row of {spec_id} (run ", info.value.code, captured.err, captured.out
    )
    assert f"has no {column} (an empty cell or no such column)" in captured.err
    assert snapshot(good.parent) == before


def test_an_emptied_cell_the_verdict_needs_is_one_line_exit_2(good, capsys):
    def empty(rows, columns):
        rows[1]["predicted_cuda_mib"] = rows[1]["headroom_mib"] = ""
        return columns

    rewrite(good / "memory.csv", empty)
    with pytest.raises(SystemExit) as info:
        report.main(["--out", str(good), "--no-plots"])
    captured = capsys.readouterr()
    check_one_line_error(
        "has no predicted_cuda_mib, headroom_mib", info.value.code, captured.err, captured.out
    )
    assert read_rows(good / "memory.csv")[1]["spec_id"] in captured.err


def test_a_predict_only_row_without_a_column_its_verdict_needs_is_one_line_exit_2(tmp_path, capsys):
    """A --predict-only row is known by its figures (predicted ones alone, Harness.predict_only),
    not by its spec id, and the columns its verdict reads are checked as a measured row's are:
    a memory row without predicted_cuda_mib is one line, not a traceback from the verdict."""
    table = ResultsTable.of(memory.HARNESS, tmp_path)
    table.record_run("R", "python -m bench.memory --predict-only", ENVIRONMENT, {}, "then")
    predicted = {
        "target_sm": 86,
        "predicted_reserved_mib": 32.0,
        "cudnn_workspace_mib": 32.0,
        "context_mib": 426.0,
        "budget_mib": 8192.0,
        "fits": True,
        "headroom_mib": 7702.0,
    }
    spec = TINY.replace(predict_only=True)
    table.append({**spec_row(spec, "R"), "status": "ok", **predicted})
    assert memory.HARNESS.predict_only(read_rows(table.csv_path, memory.HARNESS.kinds())[0])
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as info:
        report.main(["--out", str(tmp_path), "--no-plots"])
    captured = capsys.readouterr()
    check_one_line_error(
        f"the ok row of {spec.spec_id} (run R) has no predicted_cuda_mib",
        info.value.code,
        captured.err,
        captured.out,
    )
    assert snapshot(tmp_path) == before


def test_a_failed_row_needs_no_figure(good):
    """An oom or error row has no prediction to speak of: its verdict is its status."""

    def fail(rows, columns):
        rows[0].update(status="oom", error="out of memory", predicted_cuda_mib="", fits="")
        return columns

    rewrite(good / "memory.csv", fail)
    report.main(["--out", str(good), "--no-plots"])
    assert ": oom (out of memory)." in (good / "memory.md").read_text()


def test_a_failed_row_names_the_card_it_ran_out_on():
    row = {
        **dict(impl="ddpm", model_config="none", attention="16", preset="tiny", precision="fp32"),
        **dict(image_size=32, batch=1, accum=1, status="oom", error="out of memory"),
    }
    assert memory.verdict({**row, "card": "t4", "target_sm": 75}).endswith(
        "32px) on a T4 (sm75, 14.56 GiB): oom (out of memory)."
    )
    assert " on a CUDA sm86 card: oom" in memory.verdict({**row, "card": "", "target_sm": 86})


@pytest.mark.parametrize("name", harnesses.names())
def test_a_verdicts_columns_are_the_harness_figures(name):
    harness = harnesses.named(name)
    assert set(harness.verdict_columns) <= set(harness.figure_columns)
    assert not harness.verdict_columns or harness.verdict is not None


def test_help_explains(capsys):
    with pytest.raises(SystemExit) as info:
        report.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "--harness" in text and "--no-plots" in text and "byte for byte" in text


# ----- (e) plots ----------------------------------------------------------------------------------


def synthetic_results(out: Path) -> None:
    """Rows for every plot: two precisions x two attentions x three batches of memory and
    throughput figures, two loss curves, DDPM and DDIM sampling times."""
    env = {**ENVIRONMENT, "device": "cpu"}
    tables = {
        h.name: ResultsTable(out, h.name, h.figure_columns)
        for h in (memory.HARNESS, throughput.HARNESS, loss.HARNESS, sampling.HARNESS)
    }
    for table in tables.values():
        table.record_run("R", f"python -m bench.{table.harness}", env, {}, "then")
    for precision in ("fp32", "bf16"):
        for attention in ("none", "8"):
            for batch in (1, 2, 4):
                spec = TINY.replace(batch=batch, precision=precision, attention=attention)
                row = {**spec_row(spec, "R"), "status": "ok"}
                size = batch * (2.0 if precision == "fp32" else 1.5)
                tables["memory"].append(
                    {
                        **row,
                        "tracked_peak_mib": size,
                        "predicted_cuda_mib": 500.0 + size,
                        "budget_mib": 8192.0,
                    }
                )
                tables["throughput"].append({**row, "img_per_s": 10.0 * batch})
    for batch, accum in ((8, 1), (2, 4)):
        spec = TINY.replace(batch=batch, accum=accum, dataset="digits")
        curve = out / "loss" / "R" / spec.name / "curve.csv"
        curve.parent.mkdir(parents=True)
        curve.write_text(
            "step,loss,grad_norm,lr,skipped,val_loss\n"
            + "".join(f"{s},{1.0 / s + accum * 1e-3!r},1.0,0.001,0,\n" for s in range(1, 21))
        )
        tables["loss"].append({**spec_row(spec, "R"), "status": "ok", "curve_path": str(curve)})
    for sampler, steps in (("ddpm", 1000), ("ddim", 10), ("ddim", 50)):
        spec = TINY.replace(sampler=sampler, sampling_steps=steps)
        tables["sampling"].append(
            {**spec_row(spec, "R"), "status": "ok", "projected_s_per_image": steps * 0.01}
        )


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(PNG) and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plots_are_pngs_and_the_same_bytes_each_time(tmp_path):
    synthetic_results(tmp_path)
    names = [harnesses.named(n) for n in ("memory", "throughput", "loss", "sampling")]
    lines = plots.draw(tmp_path, names)
    assert all(line.startswith("wrote ") for line in lines), lines
    written = {p.name: p.read_bytes() for p in sorted((tmp_path / "plots").iterdir())}
    assert sorted(written) == sorted(plots.PLOTS)
    for name in written:
        assert png_size(tmp_path / "plots" / name) == (900, 550)
        assert b"matplotlib" not in written[name]  # no version tag to change the bytes
    plots.draw(tmp_path, names)
    assert {p.name: p.read_bytes() for p in (tmp_path / "plots").iterdir()} == written


def test_a_plot_without_usable_rows_is_skipped_with_a_note(tmp_path):
    table = ResultsTable(tmp_path, "throughput", throughput.HARNESS.figure_columns)
    table.append({**spec_row(TINY, "R"), "status": "oom", "error": "out of memory"})
    lines = plots.draw(tmp_path, [throughput.HARNESS, memory.HARNESS])
    assert lines[0] == f"skipped plots/memory_vs_batch.png: no {tmp_path / 'memory.csv'}"
    assert lines[1].startswith("skipped plots/throughput_vs_batch.png: no ok rows")
    assert len(lines) == 2
    assert not (tmp_path / "plots" / "throughput_vs_batch.png").exists()


# ----- (f) the committed results rebuild exactly ----------------------------------------------

# The harnesses' tables (plan.csv is the plan's: tests/bench/test_plan.py holds its markdown).
COMMITTED = sorted(p for p in (ROOT / "results").glob("*.csv") if p.stem in harnesses.names())


@pytest.fixture(scope="module")
def committed_copy(tmp_path_factory):
    """A copy of results/ (curve files included where this checkout has them), in a folder
    standing for the repository root: curve paths in loss.csv are relative to it."""
    root = tmp_path_factory.mktemp("committed")
    shutil.copytree(ROOT / "results", root / "results", ignore=shutil.ignore_patterns("traces"))
    return root


@pytest.mark.parametrize("csv_path", COMMITTED, ids=[p.stem for p in COMMITTED])
def test_committed_markdown_rebuilds_exactly(committed_copy, csv_path, monkeypatch):
    committed = csv_path.with_suffix(".md")
    if not committed.exists():
        pytest.skip(f"no {committed.name} committed")
    harness = harnesses.named(csv_path.stem)
    monkeypatch.chdir(committed_copy)
    text, _ = markdown.render(harness, Path("results"))
    assert text == committed.read_text()


@pytest.mark.parametrize(
    "cache", [b"{not json", b'{"cpu | fp32": {"peak_flops": "fast"}}', b"[1, 2]"]
)
def test_a_damaged_peak_cache_is_one_line_exit_2(tmp_path, capsys, cache):
    table = ResultsTable(tmp_path, "throughput", throughput.HARNESS.figure_columns)
    table.append({**spec_row(TINY, "run"), "status": "error", "error": "failed"})
    (tmp_path / "peak_flops.json").write_bytes(cache)
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as info:
        report.main(["--out", str(tmp_path), "--no-plots"])
    captured = capsys.readouterr()
    check_one_line_error(
        "peak_flops.json is not a record of peak FLOP/s",
        info.value.code,
        captured.err,
        captured.out,
    )
    assert snapshot(tmp_path) == before


# ----- (e) the CSV is distrusted: a cell no harness writes is one line ---------------------------


def damage(path: Path, column: str, value: str, row: int = 0) -> None:
    def change(rows, columns):
        rows[row][column] = value
        return columns

    rewrite(path, change)


@pytest.mark.parametrize(
    "column, value, says",
    [
        # Rendered as verdicts before: "fits in nan GiB", "predicted -500 MiB, headroom 99,999".
        ("budget_mib", "nan", "budget_mib 'nan' is not a finite number"),
        ("predicted_cuda_mib", "inf", "predicted_cuda_mib 'inf' is not a finite number"),
        ("predicted_cuda_mib", "-500.0", "predicted_cuda_mib '-500.0' is negative"),
        ("step_s", "-1.5", "step_s '-1.5' is negative"),
        ("batch", "-3", "batch '-3' is not an integer >= 0"),
        # A KeyError traceback before: a card (or preset) this version does not know.
        ("card", "rtx5090", "card 'rtx5090' is not one this version knows: gtx1070, "),
        ("preset", "ddpm-9000", "preset 'ddpm-9000' is not one this version knows"),
    ],
)
def test_a_cell_no_harness_writes_is_one_line_exit_2(good, capsys, column, value, says):
    damage(good / "memory.csv", column, value)
    before = snapshot(good.parent)
    with pytest.raises(SystemExit) as info:
        report.main(["--out", str(good), "--no-plots"])
    captured = capsys.readouterr()
    check_one_line_error(f"memory.csv line 2: {says}", info.value.code, captured.err, captured.out)
    assert snapshot(good.parent) == before


def test_a_figure_that_may_be_negative_or_not_finite_is_rendered(good):
    """A headroom below zero is a verdict (does NOT fit), and a diverged loss is NaN: the
    harnesses declare which figures may be so."""
    damage(good / "memory.csv", "headroom_mib", "-10.0")
    report.main(["--out", str(good), "--no-plots"])
    assert "headroom -10 MiB" in (good / "memory.md").read_text()
    assert {"final_loss", "val_loss"} <= set(loss.HARNESS.unbounded_columns)
    assert "headroom_mib" in memory.HARNESS.signed_columns


def test_a_predicted_row_without_its_verdicts_figure_is_one_line_exit_2(good, capsys):
    """A --predict-only memory row lacking predicted_cuda_mib was a TypeError traceback."""

    def predicted_without(rows, columns):
        for row in rows:
            row["spec_id"] += "-predicted"
        return [c for c in columns if c != "predicted_cuda_mib"]

    rewrite(good / "memory.csv", predicted_without)
    with pytest.raises(SystemExit) as info:
        report.main(["--out", str(good), "--no-plots"])
    captured = capsys.readouterr()
    check_one_line_error("has no predicted_cuda_mib", info.value.code, captured.err, captured.out)


def test_a_sweep_refuses_a_table_it_could_not_report_before_it_runs(good, capsys):
    """A row naming a card this version does not know: the sweep ran, appended its row, then
    failed on the old row with a KeyError traceback, so its .md was never updated. Now it
    refuses in one line before any spec runs, and the table is as it was."""
    damage(good / "memory.csv", "card", "rtx5090")
    before = snapshot(good.parent)
    with pytest.raises(SystemExit) as info:
        memory_command.main(
            ["--preset", "tiny", "--batch", "1", "--accum", "1", "--predict-only"]
            + ["--device", "cpu", "--inline", "--out", str(good)]
        )
    captured = capsys.readouterr()
    check_one_line_error("card 'rtx5090' is not one", info.value.code, captured.err, captured.out)
    assert snapshot(good.parent) == before
