"""python -m bench.lever_costs: what each memory lever buys and costs, predicted. For every
largest batch bench.memory found (--find-max-batch, accumulation 1) on a card, the step
bench.throughput predicted for the same settings at that batch (bench.tables.levers joins them).
Writes <out>/levers.md (a table per card) and <out>/plots/levers.png (largest batch against
predicted images per second, one point per combination).

    python -m bench.lever_costs --out results --preset ddpm-256

Rebuilt from memory.csv and throughput.csv alone: rerun it after appending rows to either."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.harnesses.memory import HARNESS as MEMORY
from bench.harnesses.throughput import HARNESS as THROUGHPUT
from bench.tables import levers
from bench.tables.results import ResultsTable, atomic_write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lever_costs", description=__doc__)
    parser.add_argument("--out", default="results", help="the results folder (%(default)s)")
    parser.add_argument("--preset", default="ddpm-256", help="the model (%(default)s)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    memory = ResultsTable.of(MEMORY, out)
    throughput = ResultsTable.of(THROUGHPUT, out)
    if not memory.csv_path.is_file() or not throughput.csv_path.is_file():
        print(f"error: --out {out} lacks memory.csv or throughput.csv.", file=sys.stderr)
        return 2
    rows = levers.joined(memory.rows(), throughput.rows(), args.preset)
    if not rows:
        print(
            f"error: no largest batch of --preset {args.preset} in {out} has a predicted step.",
            file=sys.stderr,
        )
        return 2
    head = (
        f"# What each memory lever buys and costs: {args.preset} (predicted)\n\n"
        "Rebuilt by `python -m bench.lever_costs` from memory.csv (the largest batch,\n"
        "accumulation 1) and throughput.csv (the step predicted at that batch).\n\n"
    )
    atomic_write(out / "levers.md", head + levers.table(rows))
    (out / "plots").mkdir(exist_ok=True)
    levers.plot(rows, out / "plots" / "levers.png")
    print(levers.table(rows))
    print(f"wrote {out / 'levers.md'} and {out / 'plots' / 'levers.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
