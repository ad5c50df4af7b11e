"""What a user of `python -m bench.memory` meets on the two streams: the answer (the table, the
verdicts, where the rows and the report are) on stdout, progress on stderr; a reader that closes
the pipe early costs no row and no report and shows no traceback (exit 141); and text that is not
ours (a path, an error message) is shown as it is, never read as rich markup."""

from __future__ import annotations

import csv
import errno
import io
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from rich.console import Console

from bench import memory as memory_command
from bench.harnesses import memory
from bench.sweep.runner import report_sweep
from bench.sweep.worker import FAULT_ENV
from bench.tables.results import ResultsTable, markdown_table

ENV = {k: v for k, v in os.environ.items() if k != FAULT_ENV} | {"OMP_NUM_THREADS": "1"}
# Predicted only, two specs: seconds each, and one can fail on purpose.
ARGS = [
    "--preset",
    "tiny",
    "--image-size",
    "16",
    "--device",
    "cpu",
    "--predict-only",
    "--batch",
    "1,2",
    "--accum",
    "1",
]
# gloo's way of naming where an error was raised: rich markup's closing tag, to rich.
GLOO = "[/__w/x/pair.cc:561]"
FAULT = f"error:-b2x1-:{GLOO} :warning: [bold]"


def sweep(out: Path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "bench.memory", *ARGS, "--out", str(out)],
        stdout=stdout,
        stderr=stderr,
        text=True,
        env=env or ENV,
    )


def closed_pipe() -> int:
    """The write end of a pipe nobody reads: its reader closed before the first write."""
    read, write = os.pipe()
    os.close(read)
    return write


def rows_of(out: Path) -> list[dict]:
    with (out / "memory.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Side by side: a sweep with both streams read, one whose stdout reader is gone, one whose
    stdout and stderr (2>&1) go to a reader that is gone, one with text that looks like markup."""
    root = tmp_path_factory.mktemp("streams")

    def read(out, **kwargs):
        proc = sweep(out, **kwargs)
        stdout, stderr = proc.communicate(timeout=600)
        return proc.returncode, stdout, stderr

    def stdout_closed(out):
        pipe = closed_pipe()
        try:
            proc = sweep(out, stdout=pipe)
        finally:
            os.close(pipe)
        _, stderr = proc.communicate(timeout=600)
        return proc.returncode, None, stderr

    def both_closed(out):
        pipe = closed_pipe()
        try:
            proc = sweep(out, stdout=pipe, stderr=pipe)
        finally:
            os.close(pipe)
        return proc.wait(timeout=600), None, None

    # Wide enough that no line of the answer is cut: the error's text is asserted whole.
    markup_env = ENV | {FAULT_ENV: FAULT, "COLUMNS": "400"}
    jobs = {
        "read": lambda: read(root / "read"),
        "stdout_closed": lambda: stdout_closed(root / "stdout_closed"),
        "both_closed": lambda: both_closed(root / "both_closed"),
        "markup": lambda: read(root / "x[" / "b]y", env=markup_env),
    }
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return root, {name: f.result() for name, f in futures.items()}


def test_the_answer_is_on_stdout_and_progress_on_stderr(runs):
    root, found = runs
    status, stdout, stderr = found["read"]
    assert status == 0, stderr
    out = root / "read"
    # The answer: the table of this command's rows, the verdicts, where things are.
    assert stdout.startswith("memory — torch "), stdout
    assert "┃ batch ┃" in stdout and "predicted_" in stdout
    verdicts = [ln for ln in stdout.splitlines() if ln.startswith("Verdict: batch ")]
    assert len(verdicts) == 2 and all(" fits in 7.79 GiB" in v for v in verdicts), stdout
    assert stdout.endswith(
        f"Rows appended to {out / 'memory.csv'}; report in {out / 'memory.md'}.\n"
    )
    # Progress: each spec's name as it starts, and the bar; none of it in the answer.
    assert "memory 1/2: tiny-16px-b1x1-fp32" in stderr and "memory 2/2: tiny-16px-b2x1" in stderr
    assert "2/2 specs" in stderr
    assert "memory 1/2" not in stdout and "specs" not in stdout
    assert "Rows appended" not in stderr and "Verdict" not in stderr
    assert "Traceback" not in stderr


def test_a_closed_stdout_costs_no_row_nor_report_and_exits_141(runs):
    root, found = runs
    status, _, stderr = found["stdout_closed"]
    assert status == 141, stderr
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    assert "memory 2/2:" in stderr  # progress still shown: the sweep went on to the end
    check_files(root / "stdout_closed")


def test_stdout_and_stderr_closed_together_cost_nothing_either(runs):
    root, found = runs
    status, _, _ = found["both_closed"]
    assert status == 141
    check_files(root / "both_closed")


def check_files(out: Path) -> None:
    rows = rows_of(out)
    assert [(r["batch"], r["status"]) for r in rows] == [("1", "ok"), ("2", "ok")]
    table = [ln for ln in (out / "memory.md").read_text().splitlines() if ln.startswith("|")]
    assert len(table) == 2 + 2  # header, separator and both rows
    assert (out / "memory.json").is_file()


def test_text_that_looks_like_markup_is_shown_as_it_is(runs):
    root, found = runs
    status, stdout, stderr = found["markup"]
    out = root / "x[" / "b]y"
    assert status == 0, stderr
    assert "Traceback" not in stderr and "MarkupError" not in stderr
    assert [r["status"] for r in rows_of(out)] == ["ok", "error"]
    error = rows_of(out)[1]["error"]
    assert error.endswith(f": {GLOO} :warning: [bold]"), error
    # The failed spec's sentence quotes the error word for word: no tag read, no emoji made.
    assert f"{error})." in stdout, stdout
    assert stdout.endswith(
        f"Rows appended to {out / 'memory.csv'}; report in {out / 'memory.md'}.\n"
    )


def test_a_report_that_cannot_be_written_is_a_warning_on_stderr(tmp_path, monkeypatch):
    def disk_full(harness, folder):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("bench.sweep.runner.write_markdown", disk_full)
    out = tmp_path / "r[/b]"
    table = ResultsTable(out, "memory", memory.HARNESS.figure_columns)
    answer, warnings = io.StringIO(), io.StringIO()
    report_sweep(
        memory.HARNESS,
        table,
        "python -m bench.memory",
        Console(file=answer, width=80),
        Console(file=warnings, width=80),
    )
    assert answer.getvalue() == f"Rows appended to {out / 'memory.csv'}; no report written.\n"
    assert warnings.getvalue() == (
        f"No report written: {out / 'memory.md'} cannot be written "
        f"({os.strerror(errno.ENOSPC)}). Once that is fixed, python -m bench.report --out {out} "
        "--harness memory writes it.\n"
    )


# Untrusted text: an error's terminal escape sequences (SGR colour, an OSC that retitles the
# terminal), a Markdown cell separator, and a file name with an escape and a newline in it.
ESCAPES = "\x1b[31mred\x1b[0m \x1b]0;pwned\x07 a|b"
NAME = "cfg\x1b[2J\nx.json"


def test_untrusted_text_prints_literally_and_harmlessly(tmp_path, capsys, monkeypatch):
    """What a file's name or another program's error holds is shown as its escapes, on the
    line it belongs to: no escape sequence reaches the terminal or the .md, a newline splits
    no "one line", a "|" no Markdown cell."""
    (tmp_path / NAME).write_text("{}")
    out = tmp_path / "out"
    monkeypatch.setenv(FAULT_ENV, f"error:-b2x1-:{ESCAPES}")
    args = [*ARGS, "--model-config", str(tmp_path / NAME), "--inline", "--out", str(out)]
    memory_command.main(args)
    captured = capsys.readouterr()
    md = (out / "memory.md").read_text()
    for text in (captured.out, captured.err, md):
        assert not set(text) & {"\x1b", "\x07"}
    assert "\\x1b[31mred\\x1b[0m \\x1b]0;pwned\\x07 a" in captured.out
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(table) == 2 + 2, table
    assert not any(ln.startswith("x.json") for ln in md.splitlines())
    assert "model_config=" + str(tmp_path / "cfg\\x1b[2J\\nx.json") in md
    assert "-configcfg__2J_x" in rows_of(out)[0]["spec_id"]  # it names folders: no control
    # A cell's "|" stays inside its cell.
    (head, rule, row) = markdown_table([{"error": f"RuntimeError: {ESCAPES}"}], ["error"]).split(
        "\n"
    )
    assert row.count("|") - row.count("\\|") == 2 and "\\x07 a\\|b" in row

    # A one-line error quoting the name: one line, literal.
    monkeypatch.delenv(FAULT_ENV)
    with pytest.raises(SystemExit) as info:
        memory_command.main(
            [*ARGS, "--model-config", str(tmp_path / "gone" / NAME), "--out", str(out)]
        )
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "\x1b" not in err
    assert "gone/cfg\\x1b[2J\\nx.json: cannot read it" in err
