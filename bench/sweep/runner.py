"""The one sweep loop every harness uses: each spec in a fresh process (or inline), each row
appended the moment its spec finishes, a progress bar over specs, and at the end the report,
rendered from the CSV read back (bench.report's render, so a rebuild gives the same file)."""

from __future__ import annotations

import csv
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from bench.core import Harness, RunContext, axes
from bench.measure.env import environment
from bench.models.workload import parameter_count
from bench.spec import BenchSpec
from bench.sweep.launch import Launch, run_inline, run_isolated
from bench.tables.markdown import base_command, environment_line, write_markdown
from bench.tables.results import ResultsError, ResultsTable, rich_tables
from ddpm.cli.signals import sigterm_as_interrupt, stopping_signal


def spec_row(spec: BenchSpec, run_id: str) -> dict:
    """A row's spec columns (status and figures come from the run)."""
    return {"run_id": run_id, "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "spec_id": spec.spec_id, **{a: getattr(spec, a) for a in axes()},
            "params": parameter_count(spec), "effective_batch": spec.effective_batch}


def run_sweep(harness: Harness, specs: list[BenchSpec], out: Path, command: str,
              inline: bool = False, resume: bool = False, timeout_s: float = 3600.0,
              console: Console | None = None, options: dict | None = None,
              launch: Launch | None = None) -> list[dict]:
    # Off a terminal (CI logs, pipes) the width is $COLUMNS, else 120; tables split to fit it.
    width = None if sys.stderr.isatty() else int(os.environ.get("COLUMNS") or 120)
    console = console or Console(stderr=True, width=width)
    table = ResultsTable(out, harness.name, harness.figure_columns)
    upgraded = table.check_header()
    if upgraded:
        console.print(upgraded)
    if resume:
        done = table.finished_spec_ids()
        skipped = [s for s in specs if s.spec_id in done]
        specs = [s for s in specs if s.spec_id not in done]
        if skipped:
            console.print(f"--resume: {len(skipped)} spec(s) already in {table.csv_path}, "
                          f"{len(specs)} to run.")
    now = datetime.now(timezone.utc)
    run_id = now.strftime("%Y%m%dT%H%M%SZ") + f"-{os.getpid()}"
    env = environment(specs[0].device if specs else "cpu")
    if specs:  # recorded before the first spec: an interrupted run's rows have a command too
        table.record_run(run_id, command, env, options or {}, now.isoformat(timespec="seconds"))
    rows: list[dict] = []
    interrupted = unsaved = None
    # Compact enough for 80 columns; each spec's full name is a line of its own above it.
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=20),
                        TextColumn("{task.completed}/{task.total} specs"), TimeElapsedColumn(),
                        TextColumn("left"), TimeRemainingColumn(),
                        console=console, transient=False)
    try:
        # SIGTERM as Ctrl-C: no `except Exception` in a spec swallows it, and a worker is killed.
        with sigterm_as_interrupt(), progress:
            task = progress.add_task(harness.name, total=len(specs))
            for number, spec in enumerate(specs, 1):
                progress.console.print(f"{harness.name} {number}/{len(specs)}: {spec.name}")
                context = RunContext(out, run_id, options or {})
                result = (run_inline(harness, spec, context) if inline
                          else run_isolated(harness, spec, context, timeout_s,
                                            progress.console.print, launch))
                row = {**spec_row(spec, run_id), "status": result["status"],
                       "error": result["error"], **result["figures"]}
                row = {k: v for k, v in row.items() if k in table.columns}
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
        raise ResultsError(f"{table.csv_path} cannot be written ({exc.strerror}): the row of "
                           f"{row['spec_id']} is on stdout, {len(rows)} earlier row(s) of this "
                           "run are in the file; make room, then run again with --resume.")
    if rows:
        report_sweep(harness, table, command, console)
    if interrupted:
        # Before the first row this run wrote no row: the CSV may not even exist.
        console.print(f"Interrupted ({interrupted.name}): {len(rows)} finished row(s) kept in "
                      f"{table.csv_path}; run again with --resume for the rest." if rows else
                      f"Interrupted ({interrupted.name}) before any spec finished: no row "
                      "written; run the command again.")
        raise SystemExit(128 + interrupted)  # as a shell reports it: 130 SIGINT, 143 SIGTERM
    return rows


def report_sweep(harness: Harness, table: ResultsTable, command: str, console: Console) -> None:
    """Write <harness>.md from the CSV and print this command's section of it."""
    try:
        found = write_markdown(harness, table.folder)
    except (ResultsError, OSError) as exc:
        problem = (f"{table.md_path} cannot be written ({exc.strerror})."
                   if isinstance(exc, OSError) else exc)
        console.print(f"Rows appended to {table.csv_path}, but no report written: {problem} Once "
                      f"that is fixed, python -m bench.report --out {table.folder} --harness "
                      f"{harness.name} writes it.")
        return
    section = next((s for s in found if s.command == base_command(command)), None)
    if section is not None:
        title = f"{harness.name} — {environment_line(section.environment)}"
        keys = sum(1 for c in section.columns if c in axes())
        console.print(title)
        for piece in rich_tables(section.rows, section.columns, console.width, keys):
            console.print(piece)
        if section.fixed:
            console.print(f"Same in every row: {section.fixed}")
        for line in section.sentences:
            console.print(line)
    console.print(f"Rows appended to {table.csv_path}; report in {table.md_path}.")
