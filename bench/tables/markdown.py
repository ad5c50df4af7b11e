"""A harness's Markdown report, rendered from its CSV read back: the sweep writes <harness>.md
with render() and `python -m bench.report` rebuilds it with the same call, so both give the same
file, byte for byte.

What a <harness>.md shows: one section per command (a --resume run belongs to the command it
resumes), newest first. A section's table holds the latest row of every spec that command
measured, in the order the specs first appeared; above it the command, the environment of the
section's latest run and, when its rows come from several runs, their ids; below it the axes
that are the same in every row, the harness's verdict per row and its comparisons. The harness's
notes, the same for every section, come once at the end."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from bench.core import Harness, RunContext, display_columns, spec_columns
from bench.tables.env import describe
from bench.tables.results import (
    ResultsError,
    ResultsTable,
    atomic_write,
    markdown_table,
)
from ddpm.errors import first_line, printable


@dataclass
class Section:
    """The rows of one command and what is said around them."""

    command: str | None  # without --resume; None: the run has no record in the sidecar
    rows: list[dict]  # the latest row of each spec, in order of first appearance
    runs: dict[str, dict]  # run id -> its record, for the runs with a row shown, oldest first
    latest_run: str  # the run that wrote the section's newest row
    environment: dict | None
    columns: list[str]
    fixed: str
    sentences: list[str]  # verdicts, then the harness's comparisons

    def header(self, json_name: str) -> list[str]:
        lines = [
            f"## Command: `{self.command}`"
            if self.command
            else f"## Run `{self.latest_run}` (its command is not in `{json_name}`)",
            "",
            f"Environment: {environment_line(self.environment)}",
            "",
        ]
        if len(self.runs) > 1:
            lines += [runs_line(self), ""]
        return lines

    def bullets(self) -> list[str]:
        return ([f"Same in every row: {self.fixed}."] if self.fixed else []) + self.sentences


def environment_line(environment: dict | None) -> str:
    try:
        return describe(environment)
    except (KeyError, TypeError):
        return "not recorded"


def runs_line(section: Section) -> str:
    latest_env = environment_line(section.environment)
    parts = []
    for run_id, record in section.runs.items():
        count = sum(r["run_id"] == run_id for r in section.rows)
        extra = [f"{count} row{'s' if count != 1 else ''}"]
        if record.get("command") and record["command"] != section.command:
            extra.append("`--resume`")
        env = environment_line(record.get("environment"))
        if env != latest_env:
            extra.append(f"environment: {env}")
        parts.append(f"`{run_id}` ({'; '.join(extra)})")
    return f"Rows from {len(section.runs)} runs, oldest first: {', '.join(parts)}."


def base_command(command: str) -> str:
    """The command without --resume (or an abbreviation argparse accepted for it), so a
    resumed sweep belongs to the command it resumes."""
    try:
        words = shlex.split(command)
    except ValueError:
        return command
    kept = [w for w in words if not (len(w) > 2 and "--resume".startswith(w))]
    return command if kept == words else shlex.join(kept)


def sections(
    harness: Harness, rows: list[dict], runs: dict[str, dict], out: Path, compare: bool = True
) -> list[Section]:
    """The rows grouped by command, newest first (ResultsError if a row cannot be put in words
    or a comparison cannot read a file it needs); `compare`: with the harness's comparisons."""
    groups: dict[tuple, list[tuple[int, dict]]] = {}
    for index, row in enumerate(rows):
        record = runs.get(row["run_id"]) or {}
        command = record.get("command")
        key = ("command", base_command(command)) if command else ("run", row["run_id"])
        groups.setdefault(key, []).append((index, row))
    # The CSV is appended in time order: the index breaks ties of equal timestamps.
    ordered = sorted(
        groups.items(),
        reverse=True,
        key=lambda kv: max((r["timestamp"] or "", i) for i, r in kv[1]),
    )
    return [_section(harness, key, members, runs, out, compare) for key, members in ordered]


def _section(
    harness: Harness,
    key: tuple,
    members: list[tuple[int, dict]],
    runs: dict[str, dict],
    out: Path,
    compare: bool = True,
) -> Section:
    latest: dict[str, dict] = {}
    for _, row in members:
        latest[row["spec_id"]] = row  # a later row replaces an earlier one in its place
    shown = list(latest.values())
    latest_run = members[-1][1]["run_id"]
    record = runs.get(latest_run) or {}
    run_ids = sorted(
        {r["run_id"] for r in shown},
        key=lambda run: next(i for i, r in members if r["run_id"] == run),
    )
    columns, fixed = display_columns(shown, harness.display_columns)
    if harness.verdict:
        check_verdict_columns(harness, shown, out)
    sentences = [v for v in (_verdict(harness, row, out) for row in shown) if v]
    if harness.compare and compare:
        context = RunContext(out, latest_run, record.get("options") or {})
        try:
            sentences += harness.compare(shown, context)
        except OSError as exc:
            raise ResultsError(
                f"{harness.name}: the comparison of run {latest_run} needs "
                f"{exc.filename or 'a file'}, which cannot be read ({exc.strerror}); rebuild "
                "from the folder the sweep ran in."
            ) from None
        except UNRENDERABLE as exc:  # a file it reads holds what no sweep wrote
            raise ResultsError(
                f"{harness.name}: the comparison of run {latest_run} cannot be made from "
                f"what the files hold ({type(exc).__name__}: {first_line(exc)})."
            ) from None
    return Section(
        command=key[1] if key[0] == "command" else None,
        rows=shown,
        runs={run: runs.get(run) or {} for run in run_ids},
        latest_run=latest_run,
        environment=record.get("environment"),
        columns=columns,
        fixed=fixed,
        sentences=sentences,
    )


# What a verdict or a comparison raises on a row no harness wrote (a value of another type, a
# key a newer version knows): the table is refused in one line, never a traceback.
UNRENDERABLE = (KeyError, TypeError, ValueError, ArithmeticError, AttributeError, IndexError)


def _verdict(harness: Harness, row: dict, out: Path) -> str | None:
    if harness.verdict is None:
        return None
    try:
        return harness.verdict(row)
    except UNRENDERABLE as exc:
        raise ResultsError(
            f"{Path(out) / f'{harness.name}.csv'}: the row of {row['spec_id']} (run "
            f"{row['run_id']}) cannot be put in words ({type(exc).__name__}: {first_line(exc)}); "
            f"it is not a row bench.{harness.name} writes."
        ) from None


def check_verdict_columns(harness: Harness, rows: list[dict], out: Path) -> None:
    """Every figure the verdict of an ok row reads is there: a CSV without the column (or with
    the cell emptied) is not a table this harness wrote."""
    for row in rows:
        if row["status"] != "ok":
            continue
        predicted = harness.predict_only(row)
        wanted = harness.predicted_verdict_columns if predicted else harness.verdict_columns
        missing = [c for c in wanted if row.get(c) is None]
        if missing:
            raise ResultsError(
                f"{Path(out) / f'{harness.name}.csv'}: the ok row of {row['spec_id']} (run "
                f"{row['run_id']}) has no {', '.join(missing)} (an empty cell or no such "
                "column), which its verdict needs; "
                f"bench.{harness.name} writes {'it' if len(missing) == 1 else 'them'} in every "
                "ok row."
            )


def load(harness: Harness, out: Path) -> tuple[list[dict], dict[str, dict]]:
    """The harness's rows (every column this version knows, None where an older CSV has none)
    and its run records."""
    table = ResultsTable.of(harness, out)
    blank = dict.fromkeys(spec_columns() + harness.figure_columns)
    return [{**blank, **row} for row in table.rows()], table.runs()


def check_table(harness: Harness, out: Path) -> None:
    """Before a sweep appends to <harness>.csv: every row reads back and is put in words
    (ResultsError, one line, otherwise), so the report the sweep renders after its own rows
    cannot fail on another row. The comparisons, which read files of their own (loss curves
    by path), are left to the render."""
    if (Path(out) / f"{harness.name}.csv").exists():
        rows, runs = load(harness, out)
        sections(harness, rows, runs, out, compare=False)


def render(harness: Harness, out: Path) -> tuple[str, list[Section]]:
    """The Markdown of <out>/<harness>.md from the CSV and the JSON sidecar in `out`."""
    out = Path(out)
    table = ResultsTable.of(harness, out)
    rows, runs = load(harness, out)
    found = sections(harness, rows, runs, out)
    csv_name, json_name = table.csv_path.name, table.json_path.name
    lines = [f"# {harness.name}", ""]
    if not found:
        lines += [f"No rows in `{csv_name}` yet.", ""]
    else:
        lines += [
            "One section per command, newest first, with the latest row of every spec it "
            "measured (a `--resume` run counts as the command it resumes). Every row of "
            f"every run: `{csv_name}`; each run's command, options and environment: "
            f"`{json_name}`; `python -m bench.report --out` with this folder rebuilds "
            "this file from the two.",
            "",
        ]
    for section in found:
        # The command, the environment and the sentences quote the user's paths and errors.
        lines += [printable(line) for line in section.header(json_name)]
        lines += [markdown_table(section.rows, section.columns), ""]
        bullets = section.bullets()
        lines += [f"- {printable(b)}" for b in bullets] + ([""] if bullets else [])
    if found and harness.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in harness.notes] + [""]
    return "\n".join(lines).rstrip("\n") + "\n", found


def write_markdown(harness: Harness, out: Path) -> list[Section]:
    text, found = render(harness, out)
    atomic_write(Path(out) / f"{harness.name}.md", text)
    return found
