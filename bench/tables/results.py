"""Result tables: a CSV row appended as each spec finishes, read back with the types the harness
wrote; a JSON sidecar recording each run's command, options and environment; Markdown and rich
rendering of rows (bench.report builds the .md from these)."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import math
import os
import re
from pathlib import Path

from tabulate import tabulate

from bench import spec as spec_module
from bench.cards import CARDS
from bench.core import Harness, axes, column_dtypes, spec_columns
from ddpm.config import PRECISIONS, PRESETS
from ddpm.errors import printable

STATUSES = ("ok", "oom", "error", "timeout")


def read_csv(path, kinds: dict[str, type] | None = None):
    """A results CSV as a DataFrame: spec columns with column_dtypes(), figures float64, or
    by `kinds` (Harness.kinds()): a bool figure as pandas' nullable boolean, since a failed
    spec has none and plain bool would become object."""
    import pandas as pd

    flags = {c: "boolean" for c, kind in (kinds or {}).items() if kind is bool}
    return pd.read_csv(path, dtype={**column_dtypes(), **flags}, keep_default_na=True)


# Where a run's rows go unless --out says otherwise: a folder git ignores (runs/), so a user's
# runs never mix with the committed reference tables in results/ (rebuilt with --out results).
RUN_FOLDER = "runs/bench"


class ResultsError(ValueError):
    """The results folder or an existing table cannot be used; the message is for the user."""


def results_folder(text: str) -> Path:
    """--out as a folder: an empty one would be Path("."), the current folder, unasked."""
    if not text.strip():
        raise ResultsError(f"--out {text!r} is empty: name the results folder, e.g. {RUN_FOLDER}.")
    return Path(text)


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
    """<out>/<harness>.csv (every row ever) and .json (every run's command and environment);
    bench.report renders the .md from the two. `renamed`: figure columns by their old names,
    `kinds`: each figure column's kind, `signed` and `unbounded`: the number figures that may be
    negative, and NaN or infinite (Harness.renamed, .kinds(), .signed_columns,
    .unbounded_columns)."""

    def __init__(
        self,
        folder: Path,
        harness: str,
        figure_columns: list[str],
        renamed: dict[str, str] | None = None,
        kinds: dict[str, type] | None = None,
        signed: list[str] | None = None,
        unbounded: list[str] | None = None,
    ):
        self.folder, self.harness = Path(folder), harness
        self.columns = spec_columns() + figure_columns
        self.renamed, self.kinds = renamed or {}, kinds
        self.signed, self.unbounded = signed or [], unbounded or []
        self.csv_path = self.folder / f"{harness}.csv"
        self.md_path = self.folder / f"{harness}.md"
        self.json_path = self.folder / f"{harness}.json"
        self.lock_path = self.folder / f".{harness}.lock"

    @classmethod
    def of(cls, harness: Harness, folder: Path) -> ResultsTable:
        """The harness's table in `folder`, its figures read with their kinds and old names."""
        return cls(
            folder,
            harness.name,
            harness.figure_columns,
            harness.renamed,
            harness.kinds(),
            harness.signed_columns,
            harness.unbounded_columns,
        )

    @contextlib.contextmanager
    def locked(self):
        """One writer at a time: two sweeps on one folder would otherwise both write a header,
        and one's run record would overwrite the other's."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.lock_path.open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed
            yield

    def check_header(self) -> str | None:
        """Before anything runs: no folder stands where the table's files go, and an existing
        CSV is readable, has the columns this version writes (or is upgraded to them: the line
        to tell the user is returned) and ends its last row."""
        for path in (self.csv_path, self.md_path, self.json_path):
            if path.is_dir():
                raise ResultsError(
                    f"{path} is a folder where this harness writes a file; move "
                    "it aside or pass another --out."
                )
        if not self.csv_path.exists() or self.csv_path.stat().st_size == 0:
            return None
        try:
            with self.csv_path.open(newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), [])
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise ResultsError(
                f"{self.csv_path} cannot be read ({_reason(exc)}); move it aside "
                "or pass another --out."
            ) from None
        check_line_end(self.csv_path)
        return self.upgrade(header) if header != self.columns else None

    def upgrade(self, header: list[str]) -> str:
        """A table written before an axis or a figure was added (or a column renamed) is
        rewritten with this version's columns: a new axis gets its default, the value every old
        row had; a new figure stays empty, as a figure not measured."""
        names = self.renamed
        renamed = [names.get(c, c) for c in header]
        defaults = axis_defaults()
        added = [c for c in self.columns if c not in renamed]
        figures = [c for c in added if c not in spec_columns()]
        if set(renamed) - set(self.columns) or set(added) - set(defaults) - set(figures):
            raise ResultsError(
                f"{self.csv_path} has other columns than this version writes; "
                "move it aside or pass another --out."
            )
        with self.locked():
            with self.csv_path.open(newline="", encoding="utf-8") as f:
                rows = [
                    upgraded(dict(zip(header, cells)), names) for cells in list(csv.reader(f))[1:]
                ]
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(rows)
            atomic_write(self.csv_path, text.getvalue())
        said = [f"{c} = {defaults[c]}" for c in added if c in defaults] + [
            f"{old} is now {names[old]}" for old in header if old in names
        ]
        if figures:
            said.append(f"{', '.join(figures)} empty")
        return f"{self.csv_path} upgraded to this version's columns" + (
            f" ({'; '.join(said)} in its {len(rows)} rows)." if said else "."
        )

    def finished_spec_ids(self) -> set[str]:
        """Specs with a final answer (ok or oom); errors and timeouts are tried again."""
        if not self.csv_path.exists():
            return set()
        try:
            with self.csv_path.open(newline="", encoding="utf-8") as f:
                return {
                    row["spec_id"] for row in csv.DictReader(f) if row["status"] in ("ok", "oom")
                }
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise ResultsError(
                f"{self.csv_path} cannot be read ({_reason(exc)}); move it aside "
                "or pass another --out."
            ) from None

    def append(self, row: dict) -> None:
        """The row on disk whole or not at all: a failed write (disk full) is undone."""
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self.columns, extrasaction="raise")
        row = {c: _csv_value(row.get(c)) for c in self.columns}
        # Unbuffered: nothing is left in a buffer to be flushed after the undo.
        with self.locked(), self.csv_path.open("ab", buffering=0) as f:
            check_line_end(self.csv_path)
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                writer.writeheader()
            writer.writerow(row)
            data = memoryview(text.getvalue().encode("utf-8"))
            try:
                while data:
                    data = data[f.write(data) :]
                os.fsync(f.fileno())
            except OSError:
                f.truncate(size)
                raise

    def rows(self) -> list[dict]:
        return read_rows(self.csv_path, self.kinds, self.renamed, self.signed, self.unbounded)

    def runs(self) -> dict[str, dict]:
        return read_runs(self.json_path)

    def record_run(
        self, run_id: str, command: str, environment: dict, options: dict, started: str
    ) -> None:
        """Written when a run starts, so an interrupted run's rows have their command too."""
        with self.locked():
            runs = self.runs()
            runs[run_id] = {
                "command": command,
                "started": started,
                "options": options,
                "environment": environment,
            }
            sidecar = {"harness": self.harness, "runs": runs}
            atomic_write(self.json_path, json.dumps(sidecar, indent=2, default=str) + "\n")


# ----- reading back ------------------------------------------------------------------------------

# What Python's csv module writes for a float: str(float), which is repr, an exact round trip.
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(
    r"[+-]?(?:\d+\.\d*(?:e[+-]?\d+)?|\.\d+(?:e[+-]?\d+)?|\d+e[+-]?\d+|inf|nan)", re.IGNORECASE
)


def parse_cell(text: str):
    """A figure cell as the harness's Python value: "" -> None, True/False -> bool, an integer
    literal -> int, a float literal -> float, anything else -> the text."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


_KINDS = {float: "a number", bool: "True or False", str: "text"}
# The words an axis cell may hold where a verdict or a comparison looks them up (a card's name,
# a preset's dropout, a precision's tolerance): a word this version does not know is refused.
KNOWN_WORDS = {
    "preset": tuple(PRESETS),
    "precision": PRECISIONS,
    "card": ("", *CARDS),
}


def typed_row(
    raw: dict[str, str],
    line: int | None = None,
    path: Path | None = None,
    kinds: dict[str, type] | None = None,
    signed: tuple[str, ...] | list[str] = (),
    unbounded: tuple[str, ...] | list[str] = (),
) -> dict:
    """A CSV row with the types the harness produced: spec columns by column_dtypes() (an empty
    string column is None, as the harness's `error` of an ok row), figures by parse_cell.
    `kinds` (figure column -> float, bool or str) refuses a figure of another kind, and a number
    figure that is negative (unless `signed`) or NaN or infinite (unless `unbounded`). A count
    is never negative, and an axis word a verdict looks up is one this version knows."""
    row = {}
    dtypes = column_dtypes()
    # An axis always has a value: "" is one (the card axis's default), not a missing cell.
    words = set(axes())
    for column, text in raw.items():
        dtype = dtypes.get(column)
        if text is None:  # a short line: csv.DictReader fills the missing cells with None
            raise ResultsError(f"{path} line {line} has fewer cells than its header.")
        if dtype == "Int64" and text == "":  # nullable: a count no process made
            row[column] = None
        elif dtype in ("int64", "Int64"):
            if not _INT.fullmatch(text) or int(text) < 0:
                raise ResultsError(f"{path} line {line}: {column} {text!r} is not an integer >= 0.")
            row[column] = int(text)
        elif column in KNOWN_WORDS and text not in KNOWN_WORDS[column]:
            raise ResultsError(
                f"{path} line {line}: {column} {text!r} is not one this version knows: "
                f"{', '.join(w for w in KNOWN_WORDS[column] if w)}."
            )
        elif column == "status" and text not in STATUSES:
            raise ResultsError(
                f"{path} line {line}: status {text!r} is not one of {', '.join(STATUSES)}."
            )
        elif dtype == "string":
            row[column] = text if text != "" or column in words else None
        else:
            row[column] = parse_cell(text)
            kind = (kinds or {}).get(column, str)
            if row[column] is not None and not _is_kind(row[column], kind):
                raise ResultsError(f"{path} line {line}: {column} {text!r} is not {_KINDS[kind]}.")
            if kind is float and row[column] is not None:
                wrong = _impossible(row[column], column in signed, column in unbounded)
                if wrong:
                    raise ResultsError(f"{path} line {line}: {column} {text!r} is {wrong}.")
    return row


def _impossible(value: float, signed: bool, unbounded: bool) -> str | None:
    """What a figure is that no harness writes where it cannot be: NaN or infinite ("fits in
    nan GiB"), or negative ("predicted -500 MiB")."""
    if not unbounded and not math.isfinite(value):
        return "not a finite number"
    if not signed and value < 0:
        return "negative"
    return None


def _is_kind(value, kind: type) -> bool:
    if kind is float:  # an integer figure (a count) is a number too; True is not
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return kind is str or isinstance(value, kind)


REQUIRED = ("run_id", "timestamp", "spec_id", "status")


def axis_defaults() -> dict[str, str]:
    """Each axis's default as a CSV cell: the value of every row written before it existed."""
    return {a: str(getattr(spec_module.BenchSpec, a)) for a in axes()}


def upgraded(raw: dict[str, str], renamed: dict[str, str]) -> dict[str, str]:
    """A row as this version writes it: old column names renamed, axes added since filled in."""
    row = {renamed.get(c, c): text for c, text in raw.items()}
    return {**{a: d for a, d in axis_defaults().items() if a not in row}, **row}


def read_rows(
    path: Path,
    kinds: dict[str, type] | None = None,
    renamed: dict[str, str] | None = None,
    signed: tuple[str, ...] | list[str] = (),
    unbounded: tuple[str, ...] | list[str] = (),
) -> list[dict]:
    """Every row of a results CSV, typed (typed_row, which checks `kinds`, `signed` and
    `unbounded`), columns written under an old name read under their `renamed` one. ResultsError
    says what is wrong."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise ResultsError(
                    f"{path} is not a results table: no column {', '.join(missing)}."
                )
            check_line_end(path)
            rows = []
            for raw in reader:
                if None in raw:  # more cells than the header names
                    raise ResultsError(
                        f"{path} line {reader.line_num} has more cells than its header."
                    )
                rows.append(
                    typed_row(
                        upgraded(raw, renamed or {}),
                        reader.line_num,
                        path,
                        kinds,
                        signed,
                        unbounded,
                    )
                )
            return rows
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ResultsError(f"{path} cannot be read ({_reason(exc)}).") from None


def check_line_end(path: Path) -> None:
    """Refuse a table whose last row has no line end: its writer stopped mid-row, and a row
    appended after it would be glued onto the fragment."""
    try:
        with path.open("rb") as f:
            if f.seek(0, os.SEEK_END) == 0:
                return
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
            f.seek(0)
            line = f.read().count(b"\n") + 1
    except FileNotFoundError:
        return
    raise ResultsError(
        f"{path} line {line} is cut off (no line end: the run writing it stopped "
        "mid-row); delete that line, then run again."
    )


def read_runs(path: Path) -> dict[str, dict]:
    """{run_id: {"command", "started", "options", "environment"}} from a JSON sidecar; {} when
    there is none."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        runs = json.loads(path.read_text())["runs"]
        if not isinstance(runs, dict) or not all(isinstance(r, dict) for r in runs.values()):
            raise ValueError("'runs' is not a mapping of run records")
        return runs
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as exc:
        raise ResultsError(
            f"{path} is not a run record ({_reason(exc)}); move it aside or pass another --out."
        ) from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    if isinstance(exc, KeyError):
        return f"no {exc}"
    return " ".join(str(exc).split()) or type(exc).__name__


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
    """A GitHub table; a cell's text (an error message, a path) is shown literally: its control
    characters as escapes and its "|" escaped, so it stays in its cell and on its line."""
    body = [[markdown_text(format_value(r.get(c))) for c in columns] for r in rows]
    return tabulate(body, headers=columns, tablefmt="github", disable_numparse=True)


def markdown_text(text: str) -> str:
    """Text from outside as a Markdown line shows it literally (ddpm.errors.printable)."""
    return printable(text).replace("|", "\\|")


def fold(name: str) -> str:
    """A long column name on two lines, split after the '_' that best balances them, so a
    narrow terminal shows it whole instead of cutting it."""
    cuts = [i + 1 for i, ch in enumerate(name) if ch == "_"]
    if len(name) <= 12 or not cuts:
        return name
    cut = min(cuts, key=lambda i: max(i, len(name) - i))
    return name[:cut] + "\n" + name[cut:]


def rich_tables(rows: list[dict], columns: list[str], width: int, keys: int = 0) -> list:
    """The table as rich Tables no wider than `width`: names folded onto two lines, and the
    columns that still do not fit moved to further tables that repeat the first `keys` (the
    axes that tell rows apart). No column name is ever cut. Cells are Text, shown as they are:
    an error message's `[/...]` is not rich markup."""
    from rich.table import Table
    from rich.text import Text

    cells = {c: [printable(format_value(r.get(c))) for r in rows] for c in columns}
    # A column takes its widest line plus one space of padding each side and one border.
    need = {c: max(len(line) for line in [*fold(c).splitlines(), *cells[c]]) + 3 for c in columns}
    head, rest = columns[:keys], columns[keys:]
    groups: list[list[str]] = []
    for c in rest:
        if groups and 1 + sum(need[k] for k in head + groups[-1]) + need[c] <= width:
            groups[-1].append(c)
        else:
            groups.append([c])
    tables = []
    for group in groups or [[]]:
        table = Table()
        for c in head + group:
            justify = "left" if c in ("status", "error", "precision") else "right"
            table.add_column(Text(fold(c)), justify=justify, no_wrap=True, min_width=need[c] - 3)
        for j in range(len(rows)):
            table.add_row(*(Text(cells[c][j]) for c in head + group))
        tables.append(table)
    return tables


def _csv_value(value):
    # A figure the device cannot give is empty, never zero.
    return "" if value is None else value


def atomic_write(path: Path, data: str | bytes) -> None:
    """A reader sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
