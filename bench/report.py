"""python -m bench.report: rebuild every <harness>.md of a results folder and its plots from the
CSVs, without measuring anything.

    python -m bench.report                          # every <harness>.csv in runs/bench/
    python -m bench.report --out results            # the committed reference tables
    python -m bench.report --out /tmp/r --harness memory,loss --no-plots

A sweep renders its .md with the same call (bench.tables.markdown), reading the CSV back, so the
file a sweep writes and the one rebuilt here are the same, byte for byte. Each file written is a
line on stdout; a CSV that no harness reads is a warning on stderr."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import harnesses
from bench.core import Harness
from bench.tables.markdown import render
from bench.tables.results import RUN_FOLDER, ResultsError, atomic_write, results_folder
from ddpm.cli.args import ArgumentParser
from ddpm.cli.pipes import quiet_closed_pipes
from ddpm.errors import printable

# ----- the command line --------------------------------------------------------------------------


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m bench.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out",
        default=RUN_FOLDER,
        help="the results folder holding <harness>.csv and .json; the .md files and "
        "plots/ are written there (default %(default)s, where the harnesses "
        "write by default; the committed reference tables: --out results)",
    )
    p.add_argument(
        "--harness",
        default=None,
        help="comma list of harnesses to rebuild: memory, throughput, loss, "
        "sampling, profile, or any bench module with a HARNESS (default: every "
        "<harness>.csv in --out)",
    )
    p.add_argument(
        "--no-plots",
        action="store_true",
        help="rebuild the .md files only; default: also draw plots/*.png "
        "(memory_vs_batch, throughput_vs_batch, loss_curves, sampling_time)",
    )
    return p


def chosen(parser: ArgumentParser, out: Path, names: str | None) -> list[Harness]:
    if names is None:
        picked = []
        for path in sorted(out.glob("*.csv")):
            if path.stem in harnesses.names():
                picked.append(harnesses.named(path.stem))
            else:
                print(
                    printable(f"{path.name}: no harness named {path.stem}, skipped."),
                    file=sys.stderr,
                )
        if not picked:
            parser.error(
                f"--out {out} holds no harness CSV (memory.csv, throughput.csv, ...): "
                "nothing to rebuild."
            )
        return picked
    picked = []
    for name in [n.strip() for n in names.split(",")]:
        if name not in harnesses.names():
            parser.error(
                f"--harness {name!r} is not a harness: choose from {', '.join(harnesses.names())}."
            )
        harness = harnesses.named(name)
        if not (out / f"{name}.csv").is_file():
            parser.error(
                f"--harness {name}: {out / f'{name}.csv'} does not exist; nothing to "
                "rebuild it from."
            )
        if harness not in picked:
            picked.append(harness)
    return picked


def main(argv: list[str] | None = None) -> None:
    """What was written, on stdout; a reader that closes the pipe early costs no file
    (ddpm.cli.pipes)."""
    with quiet_closed_pipes():
        rebuild(argv)


def rebuild(argv: list[str] | None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        out = results_folder(args.out)
    except ResultsError as exc:
        parser.error(str(exc))
    if not out.is_dir():
        parser.error(
            f"--out {out} is not a folder{'' if out.exists() else ' (it does not exist)'}"
            ": pass the results folder a harness wrote."
        )
    picked = chosen(parser, out, args.harness)
    # Every .md rendered before any is written: a table that cannot be read costs nothing.
    texts = {}
    for harness in picked:
        try:
            texts[harness.name] = render(harness, out)[0]
        except ResultsError as exc:
            parser.error(str(exc))
    for name, text in texts.items():
        try:  # only the write: an error here is the folder's, never the printing's
            atomic_write(out / f"{name}.md", text)
        except OSError as exc:
            parser.error(f"--out {out}: cannot write ({exc.strerror}).")
        print(printable(f"wrote {out / f'{name}.md'}"))
    if not args.no_plots:
        from bench.tables import plots  # matplotlib: only when plots are drawn

        try:
            lines = plots.draw(out, picked)
        except ResultsError as exc:
            parser.error(str(exc))
        except OSError as exc:
            parser.error(f"--out {out / 'plots'}: cannot write ({exc.strerror}).")
        for line in lines:
            print(printable(line))


if __name__ == "__main__":
    main(sys.argv[1:])
