"""The one sweep loop every harness uses: each spec in a fresh process (or inline), each row
appended the moment its spec finishes, a progress bar over specs, and at the end the report,
rendered from the CSV read back (bench.report's render, so a rebuild gives the same file).

The answer (the table of this command's rows, the verdicts, where the rows and the report are)
goes to stdout; progress (the bar, each spec's name, what a worker says while its spec runs,
the predicted verdict among it) and warnings go to stderr, so `> file` keeps the answer alone."""

from __future__ import annotations

import csv
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from bench.core import Harness, RunContext, axes
from bench.spec import BenchSpec
from bench.sweep.launch import Launch, predicts_here, run_inline, run_isolated, run_predicted
from bench.tables.env import environment
from bench.tables.markdown import base_command, check_table, environment_line, write_markdown
from bench.tables.results import ResultsError, ResultsTable, rich_tables
from ddpm.cli.signals import sigterm_as_interrupt, stopping_signal
from ddpm.errors import printable


def spec_row(spec: BenchSpec, run_id: str, params: int | None = None) -> dict:
    """A row's spec columns (status and figures come from the run); `params`: the parameters
    of the model the spec's process built (none for a process that built none)."""
    return {
        "run_id": run_id,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "spec_id": spec.spec_id,
        **{a: getattr(spec, a) for a in axes()},
        "params": params,
        "effective_batch": spec.effective_batch,
    }


def run_sweep(
    harness: Harness,
    specs: list[BenchSpec],
    out: Path,
    command: str,
    inline: bool = False,
    resume: bool = False,
    timeout_s: float = 3600.0,
    console: Console | None = None,
    options: dict | None = None,
    launch: Launch | None = None,
    answer: Console | None = None,
) -> list[dict]:
    """`console` shows progress and warnings (default: stderr), `answer` the report (default:
    stdout)."""
    console = console or make_console(stderr=True)
    answer = answer or make_console(stderr=False)
    table = ResultsTable.of(harness, out)
    upgraded = table.check_header()
    if upgraded:
        say(console, upgraded)
    check_table(harness, out)  # a row it cannot report is refused before any spec runs
    if resume:
        done = table.finished_spec_ids()
        skipped = [s for s in specs if s.spec_id in done]
        specs = [s for s in specs if s.spec_id not in done]
        if skipped:
            say(
                console,
                f"--resume: {len(skipped)} spec(s) already in {table.csv_path}, "
                f"{len(specs)} to run.",
            )
    now = datetime.now(timezone.utc)
    run_id = now.strftime("%Y%m%dT%H%M%SZ") + f"-{os.getpid()}"
    env = environment(specs[0].device if specs else "cpu")
    if specs:  # recorded before the first spec: an interrupted run's rows have a command too
        table.record_run(run_id, command, env, options or {}, now.isoformat(timespec="seconds"))
    rows: list[dict] = []
    interrupted = unsaved = None
    # Compact enough for 80 columns; each spec's full name is a line of its own above it.
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=20),
        TextColumn("{task.completed}/{task.total} specs"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        # Only stderr: a write to stdout meanwhile stays on stdout.
        console=console,
        transient=False,
        redirect_stdout=False,
    )
    try:
        # SIGTERM as Ctrl-C: no `except Exception` in a spec swallows it, and a worker is killed.
        with sigterm_as_interrupt(), progress:
            task = progress.add_task(escape(harness.name), total=len(specs))
            for number, spec in enumerate(specs, 1):
                say(progress.console, f"{harness.name} {number}/{len(specs)}: {spec.name}")
                context = RunContext(out, run_id, options or {})
                result = (
                    run_inline(harness, spec, context)
                    if inline
                    else run_predicted(harness, spec, context, timeout_s)
                    if predicts_here(spec)
                    else run_isolated(
                        harness,
                        spec,
                        context,
                        timeout_s,
                        lambda line: say(progress.console, line),
                        launch,
                    )
                )
                row = {
                    **spec_row(spec, run_id, result.get("params")),
                    "status": result["status"],
                    "error": result["error"],
                    **result["figures"],
                }
                undeclared = sorted(set(row) - set(table.columns))
                if undeclared:  # a figure the harness does not declare would be lost
                    raise RuntimeError(
                        f"{harness.name}'s measure returned {', '.join(undeclared)}, which "
                        f"the figures of {harness.module} do not declare."
                    )
                try:
                    table.append(row)  # on disk before the next spec starts
                except OSError as exc:
                    unsaved = (row, exc)
                    break
                rows.append(row)
                progress.advance(task)
    except KeyboardInterrupt as exc:
        interrupted = stopping_signal(exc)
    if unsaved:
        row, exc = unsaved
        # The measurement is kept on stdout, as CSV with its header, for the user to add.
        writer = csv.DictWriter(sys.stdout, fieldnames=table.columns)
        writer.writeheader()
        writer.writerow(row)
        raise ResultsError(
            f"{table.csv_path} cannot be written ({exc.strerror}): the row of "
            f"{row['spec_id']} is on stdout, {len(rows)} earlier row(s) of this "
            "run are in the file; make room, then run again with --resume."
        )
    if rows:
        report_sweep(harness, table, command, answer, console)
    if interrupted:
        # Before the first row this run wrote no row: the CSV may not even exist.
        say(
            console,
            f"Interrupted ({interrupted.name}): {len(rows)} finished row(s) kept in "
            f"{table.csv_path}; run again with --resume for the rest."
            if rows
            else f"Interrupted ({interrupted.name}) before any spec finished: no row "
            "written; run the command again.",
        )
        raise SystemExit(128 + interrupted)  # as a shell reports it: 130 SIGINT, 143 SIGTERM
    return rows


def report_sweep(
    harness: Harness,
    table: ResultsTable,
    command: str,
    answer: Console,
    console: Console | None = None,
) -> None:
    """Write <harness>.md from the CSV and print this command's section of it on `answer`; a
    report that cannot be written is a warning on `console` (default: `answer`)."""
    console = console or answer
    try:
        found = write_markdown(harness, table.folder)
    except (ResultsError, OSError) as exc:
        problem = (
            f"{table.md_path} cannot be written ({exc.strerror})."
            if isinstance(exc, OSError)
            else exc
        )
        say(answer, f"Rows appended to {table.csv_path}; no report written.")
        say(
            console,
            f"No report written: {problem} Once that is fixed, python -m bench.report "
            f"--out {table.folder} --harness {harness.name} writes it.",
        )
        return
    section = next((s for s in found if s.command == base_command(command)), None)
    if section is not None:
        keys = sum(1 for c in section.columns if c in axes())
        say(answer, f"{harness.name} — {environment_line(section.environment)}")
        for piece in rich_tables(section.rows, section.columns, answer.width, keys):
            answer.print(piece)
        if section.fixed:
            say(answer, f"Same in every row: {section.fixed}")
        for line in section.sentences:
            say(answer, line)
    say(answer, f"Rows appended to {table.csv_path}; report in {table.md_path}.")


def make_console(stderr: bool) -> Console:
    """A console on stderr or stdout. Off a terminal (CI logs, pipes, files) its width is
    $COLUMNS, else 120; tables split to fit it."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else int(os.environ.get("COLUMNS") or 120)
    # Not ours to interpret: what is printed holds paths, spec names and others' messages.
    return Console(stderr=stderr, width=width, markup=False, emoji=False, highlight=False)


def say(console: Console, line: str) -> None:
    """A line as it is, whatever console shows it: rich would read `[/...]` in a path or in an
    error message (gloo's `[/.../pair.cc:561]`) as markup and fail, and `:name:` as an emoji;
    a control character (a file name's newline, an error's escape sequence) is shown as its
    escape. Never wrapped: in a file or a pipe a line stays one line; a terminal wraps it."""
    console.print(Text(printable(line)), soft_wrap=True)
