"""Result tables: a CSV row appended as each spec finishes, the latest run as Markdown with what
reproduces it above the table, a JSON sidecar, and the same table on the terminal (rich)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

from tabulate import tabulate

SPEC_COLUMNS = ["run_id", "timestamp", "spec_id", "preset", "image_size", "params", "batch",
                "accum", "effective_batch", "precision", "attention", "compile", "checkpointing",
                "device", "dataset", "sampler", "sampling_steps", "status", "error"]
STATUSES = ("ok", "oom", "error", "timeout")


# pandas.read_csv(path, dtype=CSV_DTYPES) gives these; the harness figure columns are float64
# (empty = the device cannot give that figure) and `fits` is pandas' nullable boolean.
CSV_DTYPES = {"run_id": "string", "timestamp": "string", "spec_id": "string", "preset": "string",
              "image_size": "int64", "params": "int64", "batch": "int64", "accum": "int64",
              "effective_batch": "int64", "precision": "string", "attention": "string",
              "compile": "string", "checkpointing": "string", "device": "string",
              "dataset": "string", "sampler": "string", "sampling_steps": "int64",
              "status": "string", "error": "string"}


def read_csv(path):
    """A results CSV as a DataFrame with the documented dtypes."""
    import pandas as pd

    # `fits` is nullable: a failed spec has no verdict, so plain bool would become object.
    return pd.read_csv(path, dtype={**CSV_DTYPES, "fits": "boolean"}, keep_default_na=True)


class ResultsError(ValueError):
    """The results folder or an existing table cannot be used; the message is for the user."""


def check_writable(folder: Path) -> None:
    """Fail before measuring anything if results cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ResultsError(f"--out {folder} is not a writable folder ({exc.strerror}).") from None


class ResultsTable:
    """results/<harness>.csv (every row ever), .md and .json (the latest run)."""

    def __init__(self, folder: Path, harness: str, figure_columns: list[str]):
        self.folder, self.harness = Path(folder), harness
        self.columns = SPEC_COLUMNS + figure_columns
        self.csv_path = self.folder / f"{harness}.csv"
        self.md_path = self.folder / f"{harness}.md"
        self.json_path = self.folder / f"{harness}.json"

    def check_header(self) -> None:
        if not self.csv_path.exists() or self.csv_path.stat().st_size == 0:
            return
        with self.csv_path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if header != self.columns:
            raise ResultsError(f"{self.csv_path} has other columns than this version writes; "
                               "move it aside or pass another --out.")

    def finished_spec_ids(self) -> set[str]:
        """Specs with a final answer (ok or oom); errors and timeouts are tried again."""
        if not self.csv_path.exists():
            return set()
        with self.csv_path.open(newline="") as f:
            return {row["spec_id"] for row in csv.DictReader(f) if row["status"] in ("ok", "oom")}

    def append(self, row: dict) -> None:
        new = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        with self.csv_path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="raise")
            if new:
                writer.writeheader()
            writer.writerow({c: _csv_value(row.get(c)) for c in self.columns})
            f.flush()
            os.fsync(f.fileno())

    def write_report(self, rows: list[dict], display: list[str], command: str, env: dict,
                     env_line: str, notes: list[str]) -> None:
        lines = [f"# {self.harness}", "", f"Command: `{command}`", "", f"Environment: {env_line}",
                 "", markdown_table(rows, display), ""]
        lines += [f"- {n}" for n in notes]
        lines.append(f"- Every column of every run: `{self.csv_path.name}`; environment: "
                     f"`{self.json_path.name}`.")
        _atomic_write(self.md_path, "\n".join(lines) + "\n")
        sidecar = {"harness": self.harness, "command": command, "environment": env, "rows": rows}
        _atomic_write(self.json_path, json.dumps(sidecar, indent=2, default=str) + "\n")


def format_value(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0 or abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    return str(value)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    body = [[format_value(r.get(c)) for c in columns] for r in rows]
    return tabulate(body, headers=columns, tablefmt="github", disable_numparse=True)


def rich_table(rows: list[dict], columns: list[str], title: str):
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="left" if c in ("status", "error", "precision") else "right")
    for r in rows:
        table.add_row(*(format_value(r.get(c)) for c in columns))
    return table


def _csv_value(value):
    # A figure the device cannot give is empty, never zero.
    return "" if value is None else value


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
