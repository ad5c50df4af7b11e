"""The one sweep loop every harness uses: each spec in a fresh process (or inline), each row
appended the moment its spec finishes, a progress bar over specs, and at the end the report,
rendered from the CSV read back (bench.report's render, so a rebuild gives the same file)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
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

from bench.core import Harness, RunContext, axes, spec_row
from bench.measure.env import environment
from bench.report import base_command, environment_line, write_markdown
from bench.results import ResultsError, ResultsTable, rich_tables
from bench.spec import BenchSpec
from bench.worker import MESSAGES_FILE, PARENT_ENV, rank_result, run_spec
from ddpm.cli_common import sigterm_as_interrupt, stopping_signal


def _relay(messages: Path, shown: int, say: Callable[[str], None]) -> int:
    """Show the lines the worker said since the last call; returns how many are shown."""
    if not messages.exists():
        return shown
    lines = messages.read_text(errors="replace").splitlines()
    for line in lines[shown:]:
        say(line)
    return len(lines)


def _wait(child: subprocess.Popen, timeout_s: float, messages: Path,
          say: Callable[[str], None]) -> None:
    """Wait for the worker, passing on what it says as it says it; TimeoutExpired at the end
    of the timeout."""
    deadline = time.monotonic() + timeout_s
    shown = 0
    while True:
        try:
            child.wait(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
            return
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                raise
        finally:
            shown = _relay(messages, shown, say)


@dataclass(frozen=True)
class Launch:
    """How torchrun starts a spec's ranks: all on this machine (standalone), or spread over
    `nnodes` machines that meet at `rdzv_endpoint`, each running the same command."""

    nnodes: int = 1
    rdzv_endpoint: str | None = None

    def local_ranks(self, ranks: int) -> int:
        return ranks // self.nnodes

    def torchrun_args(self, ranks: int) -> list[str]:
        where = (["--standalone"] if self.rdzv_endpoint is None else
                 ["--nnodes", str(self.nnodes), "--rdzv-backend", "c10d",
                  "--rdzv-endpoint", self.rdzv_endpoint])
        return [*where, "--nproc-per-node", str(self.local_ranks(ranks))]


def launches_ranks(spec: BenchSpec) -> bool:
    """A spec across ranks starts them, unless it is only predicted (one process does that)."""
    return spec.parallel != "none" and not spec.predict_only


def worker_command(harness: str, spec: BenchSpec, context: RunContext, result_path: str,
                   launch: Launch) -> list[str]:
    """The worker's command line: one process, or the spec's ranks under torchrun."""
    worker = ["-m", "bench.worker", harness, json.dumps(spec.to_dict()), str(context.out),
              context.run_id, json.dumps(context.options), result_path]
    if not launches_ranks(spec):
        return [sys.executable, *worker]
    return [sys.executable, "-m", "torch.distributed.run", *launch.torchrun_args(spec.ranks),
            *worker]


def run_isolated(harness: str, spec: BenchSpec, context: RunContext, timeout_s: float,
                 say: Callable[[str], None] = print, launch: Launch | None = None) -> dict:
    """A fresh interpreter per spec (one per rank): clean allocator peaks, and a crash or hang
    is contained."""
    launch = launch or Launch()
    with tempfile.TemporaryDirectory(prefix="ddpm-bench-") as tmp:
        result_path = os.path.join(tmp, "result.json")
        log_path = os.path.join(tmp, "log.txt")
        child = None
        with open(log_path, "w") as log:
            try:  # started inside the try: a signal during the start still kills the worker
                # A process group of its own: a stop takes the worker's children (torch.compile's
                # compile workers) with it; PARENT_ENV lets the worker end when the sweep does.
                child = subprocess.Popen(
                    worker_command(harness, spec, context, result_path, launch),
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                    env={**os.environ, PARENT_ENV: str(os.getpid())})
                _wait(child, timeout_s, Path(tmp) / MESSAGES_FILE, say)
            except subprocess.TimeoutExpired:
                return {"status": "timeout", "error": f"no result after {timeout_s:g} s",
                        "figures": {}}
            finally:
                if child is not None:
                    with contextlib.suppress(ProcessLookupError):  # the group has ended
                        os.killpg(child.pid, signal.SIGKILL)
                    child.wait()
        log = Path(log_path).read_text(errors="replace")
        if launches_ranks(spec):
            return combine_ranks(result_path, launch.local_ranks(spec.ranks), child.returncode,
                                 log)
        lines = [ln for ln in log.splitlines() if ln.strip()]
        last = lines[-1][:300] if lines else "no output"
        if os.path.exists(result_path):
            with open(result_path) as f:
                return json.load(f)
        return {"status": "error", "error": f"worker exited {child.returncode}: {last}",
                "figures": {}}


def combine_ranks(result_path: str, ranks: int, returncode: int, log: str) -> dict:
    """One row from the ranks' results: a failing rank's own status, named; else rank 0's
    figures (its step waits for every rank in the collectives) with each memory figure the
    largest over the ranks, the card that must fit."""
    results = {}
    for rank in range(ranks):
        path = rank_result(result_path, rank)
        if os.path.exists(path):
            with open(path) as f:
                results[rank] = json.load(f)
    for rank, result in sorted(results.items()):
        if result["status"] != "ok":
            return {**result, "error": f"rank {rank}: {result['error']}"}
    if len(results) < ranks:
        return {"status": "error", "figures": {}, "error": first_failure(log, returncode)}
    figures = dict(results[0]["figures"])
    for name, value in figures.items():
        if name.endswith("_mib") and isinstance(value, (int, float)):
            figures[name] = max(r["figures"][name] for r in results.values()
                                if r["figures"].get(name) is not None)
    return {"status": "ok", "error": None, "figures": figures}


def first_failure(log: str, returncode: int) -> str:
    """The rank torchrun's failure report names first (its root cause), and how it ended."""
    cause = log.partition("Root Cause")[2]
    rank = re.search(r"^\s*rank\s*:\s*(\d+)", cause, re.MULTILINE)
    code = re.search(r"^\s*exitcode\s*:\s*(-?\d+)", cause, re.MULTILINE)
    if not (rank and code):
        return f"a rank ended without a result (torchrun exited {returncode})"
    exit_code = int(code.group(1))
    how = (f"killed by signal {-exit_code}" if exit_code < 0 else f"exit status {exit_code}")
    return f"rank {rank.group(1)} ended without a result ({how})"


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
                result = (run_spec(harness.name, spec, context) if inline
                          else run_isolated(harness.name, spec, context, timeout_s,
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
        console.print(f"Interrupted ({interrupted.name}): {len(rows)} finished row(s) kept in "
                      f"{table.csv_path}; run again with --resume for the rest.")
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
