"""The plots `python -m bench.report` draws from the results CSVs into <out>/plots/.

Each plot takes the latest ok row of every spec in its CSV (all commands together). PNG bytes
are reproducible: a fixed size and dpi, matplotlib's default style whatever the user's rc file
says, and no Software tag with the matplotlib version in the file."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import matplotlib
from matplotlib import style
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from bench.core import Harness, axes
from bench.tables.results import ResultsError, ResultsTable, atomic_write, read_runs

SIZE_IN, DPI = (9.0, 5.5), 100
SAVE = {"format": "png", "dpi": DPI, "metadata": {"Software": None}}


def latest_ok(rows: list[dict]) -> list[dict]:
    """The latest row of each spec (CSV order is time order), kept if it is ok."""
    latest: dict[str, dict] = {}
    for row in rows:
        latest[row["spec_id"]] = row
    return [r for r in latest.values() if r["status"] == "ok"]


def varying(rows: list[dict], exclude: tuple[str, ...] = ()) -> list[str]:
    # Repeated passes over a grid are not lines of their own: a point is the latest repeat's row.
    return [
        a
        for a in axes()
        if a != "repeat"
        and a not in exclude
        and any(a in r for r in rows)
        and len({r.get(a) for r in rows}) > 1
    ]


def label(row: dict, axes: list[str]) -> str:
    words = {
        "precision": "{}",
        "attention": "attention {}",
        "compile": "compile {}",
        "sampler": "{}",
        "batch": "batch {}",
        "accum": "accum {}",
    }
    return ", ".join(words.get(a, a + " {}").format(row.get(a)) for a in axes)


def series(rows: list[dict], x: str, axes: list[str]) -> dict[str, list[dict]]:
    """Rows by line label, sorted by label; each line's points sorted by x, one per x value
    (the latest row where several specs share a label and an x)."""
    lines: dict[str, dict] = {}
    for row in rows:
        lines.setdefault(label(row, axes), {})[row[x]] = row
    return {name: [points[k] for k in sorted(points)] for name, points in sorted(lines.items())}


def devices(rows: list[dict], runs: dict[str, dict]) -> str:
    """What measured the rows: the environment's device name, or the row's device."""
    names = []
    for row in rows:
        env = (runs.get(row["run_id"]) or {}).get("environment") or {}
        name = env.get("device_name") or row["device"]
        if name not in names:
            names.append(name)
    return ", ".join(names)


def one_of(rows: list[dict], column: str) -> str:
    return "/".join(dict.fromkeys(str(r[column]) for r in rows))


def new_figure() -> tuple[Figure, object]:
    fig = Figure(figsize=SIZE_IN, dpi=DPI)
    FigureCanvasAgg(fig)  # Agg without touching pyplot's global backend
    return fig, fig.add_subplot()


def batch_axis(ax, batches) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(set(batches)), [str(b) for b in sorted(set(batches))])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("batch (images per micro-batch, log2 scale)")


def finish(fig: Figure, ax, path: Path) -> None:
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, **SAVE)
    atomic_write(path, buffer.getvalue())


# ----- one function per plot: rows and runs in, a reason to skip (str) or None out ------------


def memory_vs_batch(rows: list[dict], runs: dict, path: Path, out: Path) -> str | None:
    rows = [
        r
        for r in latest_ok(rows)
        if r["accum"] == 1
        and not r.get("max_batch_source")
        and r.get("predicted_cuda_mib") is not None
    ]
    if not rows:
        return "no ok rows with accum 1"
    fig, ax = new_figure()
    axes = [
        "precision",
        "attention",
        *varying(rows, ("batch", "effective_batch", "precision", "attention")),
    ]
    colors = matplotlib.rcParamsDefault["axes.prop_cycle"].by_key()["color"]
    for i, (name, points) in enumerate(series(rows, "batch", axes).items()):
        color, x = colors[i % len(colors)], [p["batch"] for p in points]
        where = devices(points, runs)
        ax.plot(
            x,
            [p["predicted_cuda_mib"] for p in points],
            "o-",
            color=color,
            label=f"{name}: predicted for a CUDA card",
        )
        tracked = [p for p in points if p.get("tracked_peak_mib") is not None]
        if tracked:
            ax.plot(
                [p["batch"] for p in tracked],
                [p["tracked_peak_mib"] for p in tracked],
                "s--",
                color=color,
                label=f"{name}: tracked on {where}",
            )
        alloc = [p for p in points if p.get("peak_alloc_mib") is not None]
        if alloc:
            ax.plot(
                [p["batch"] for p in alloc],
                [p["peak_alloc_mib"] for p in alloc],
                "^:",
                color=color,
                label=f"{name}: allocated on {where}",
            )
    for budget in sorted({r["budget_mib"] for r in rows if r.get("budget_mib") is not None}):
        ax.axhline(
            budget,
            color="black",
            linestyle="-.",
            linewidth=1,
            label=f"{budget / 1024:.3g} GiB budget",
        )
    batch_axis(ax, [r["batch"] for r in rows])
    ax.set_ylabel("memory of one optimizer step (MiB = 2^20 bytes)")
    ax.set_title(
        f"Memory vs batch: {one_of(rows, 'preset')} at {one_of(rows, 'image_size')}px, "
        f"accum 1, measured on {devices(rows, runs)}\npredicted: what a CUDA card must "
        "hold (reserved + workspaces + context); tracked: live tensors here",
        fontsize="medium",
    )
    finish(fig, ax, path)
    return None


def throughput_vs_batch(rows: list[dict], runs: dict, path: Path, out: Path) -> str | None:
    rows = [r for r in latest_ok(rows) if r.get("img_per_s") is not None]
    if not rows:
        return "no ok rows"
    fig, ax = new_figure()
    forced = ["precision", "attention", "compile", *(["impl"] if "impl" in rows[0] else [])]
    axes = forced + varying(rows, ("batch", "effective_batch", *forced))
    for name, points in series(rows, "batch", axes).items():
        ax.plot([p["batch"] for p in points], [p["img_per_s"] for p in points], "o-", label=name)
    batch_axis(ax, [r["batch"] for r in rows])
    ax.set_ylim(bottom=0)
    ax.set_ylabel("training throughput (images per second)")
    ax.set_title(
        f"Training throughput vs batch: {one_of(rows, 'preset')} at "
        f"{one_of(rows, 'image_size')}px, on {devices(rows, runs)}",
        fontsize="medium",
    )
    finish(fig, ax, path)
    return None


def curve_file(path: str, out: Path) -> Path | None:
    """A curve path as the sweep wrote it: relative to where it ran, usually a folder above
    --out (results/loss/..., runs/bench/loss/...); absolute paths are taken as they are."""
    for candidate in (Path(path), *(folder / path for folder in out.absolute().parents)):
        if candidate.is_file():
            return candidate
    return None


def loss_curves(rows: list[dict], runs: dict, path: Path, out: Path) -> str | None:
    rows = [r for r in latest_ok(rows) if r.get("curve_path")]
    curves = []
    for row in rows:
        found = curve_file(row["curve_path"], out)
        try:
            with found.open(newline="") as f:
                points = [(int(c["step"]), float(c["loss"])) for c in csv.DictReader(f)]
        except (AttributeError, OSError, ValueError, KeyError, TypeError):
            continue  # no file, or not a curve: the note below says none could be read
        if points:
            curves.append((row, points))
    if not curves:
        return "no ok rows whose curve file can be read"
    fig, ax = new_figure()
    axes = varying([r for r, _ in curves]) or ["batch", "accum", "precision"]
    names = [label(r, axes) for r, _ in curves]
    for (row, points), name in sorted(zip(curves, names), key=lambda c: c[1]):
        if names.count(name) > 1:
            name += f" (run {row['run_id']})"
        ax.plot([s for s, _ in points], [v for _, v in points], linewidth=1, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss L_simple (MSE of the noise, log scale)")
    shown = [r for r, _ in curves]
    ax.set_title(
        f"Loss curves: {one_of(shown, 'preset')} at {one_of(shown, 'image_size')}px on "
        f"{one_of(shown, 'dataset')}, trained on {devices(shown, runs)}",
        fontsize="medium",
    )
    finish(fig, ax, path)
    return None


def sampling_time(rows: list[dict], runs: dict, path: Path, out: Path) -> str | None:
    rows = [r for r in latest_ok(rows) if r.get("projected_s_per_image") is not None]
    if not rows:
        return "no ok rows"
    fig, ax = new_figure()
    axes = ["sampler", *varying(rows, ("sampler", "sampling_steps"))]
    for name, points in series(rows, "sampling_steps", axes).items():
        ax.plot(
            [p["sampling_steps"] for p in points],
            [p["projected_s_per_image"] for p in points],
            "o-",
            label=name,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("denoising steps per sampling run (log scale)")
    ax.set_ylabel("projected seconds per image, full run (log scale)")
    ax.set_title(
        f"Sampling time per image (projected from timed steps): "
        f"{one_of(rows, 'preset')} at {one_of(rows, 'image_size')}px, batch "
        f"{one_of(rows, 'batch')}, on {devices(rows, runs)}",
        fontsize="medium",
    )
    finish(fig, ax, path)
    return None


PLOTS: dict[str, tuple[str, Callable]] = {
    "memory_vs_batch.png": ("memory", memory_vs_batch),
    "throughput_vs_batch.png": ("throughput", throughput_vs_batch),
    "loss_curves.png": ("loss", loss_curves),
    "sampling_time.png": ("sampling", sampling_time),
}


def draw(out: Path, harnesses: list[Harness]) -> list[str]:
    """Every plot of the given harnesses; a line per plot saying what was written or skipped."""
    out = Path(out)
    by_name = {h.name: h for h in harnesses}
    lines = []
    for name, (harness, plot) in PLOTS.items():
        if harness not in by_name:
            continue
        table = ResultsTable.of(by_name[harness], out)
        csv_path = table.csv_path
        if not csv_path.is_file():
            lines.append(f"skipped plots/{name}: no {csv_path}")
            continue
        rows = table.rows()
        runs = read_runs(out / f"{harness}.json")
        path = out / "plots" / name
        path.parent.mkdir(exist_ok=True)
        with style.context("default"):
            try:
                skipped = plot(rows, runs, path, out)
            except (KeyError, TypeError) as exc:  # a CSV of another version lacks a column
                raise ResultsError(
                    f"{csv_path}: cannot plot {name} ({type(exc).__name__}: {exc})."
                ) from None
        lines.append(
            f"skipped plots/{name}: {skipped} in {csv_path}" if skipped else f"wrote {path}"
        )
    return lines
