"""python -m bench.predict.calibrate: fit the step-time model's one free constant to the public
runs, predict every run by constants fitted without it, and write what the model reads.

Each public run (bench.predict.public_runs) is traced once. The compute efficiency is the only
constant fitted: the value that minimises the squared log error of the runs marked `calibrate`.
Every run is then predicted twice: by the constants fitted on all of those runs (`fit`), and by
constants fitted on them less itself (`loo`, leave-one-out; a run outside the fit is predicted by
the full fit, which never saw it). The lowest and highest measured / leave-one-out predicted
time of the runs in the fit make the band every prediction carries. Then each of the model's
terms is switched off in turn and the constant fitted again, to show what the term does.

Writes bench/predict/time_constants.json (the constants, each with its source), appends the
runs to <out>/public_runs.json and rewrites <out>/public_runs.md. `--measure-host` measures the
host's dispatch cost on this CPU first (bench.predict.host); without it the file's is kept."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

from bench.cards import CARDS
from bench.models import guided_flags
from bench.models.impl import problem
from bench.predict import host, step_time
from bench.predict.kernels import Kernel
from bench.predict.public_runs import RUNS, PublicRun, recipe_of
from bench.predict.runtime import train_step_kernels
from bench.predict.step_time import CONSTANTS_FILE, Constants, load_constants
from bench.tables.env import git_commit
from bench.tables.results import atomic_write, markdown_table

FITTED = "compute_efficiency"
BOUNDS = (0.05, 1.0)  # an efficiency above 1 would beat the datasheet peak
SOURCES = {
    "compute_efficiency": "fit: python -m bench.predict.calibrate, on the public runs marked "
    "calibrate in bench/predict/public_runs.py (their squared log error, least)",
    "memory_efficiency": "Jia et al. 2018, Dissecting the NVIDIA Volta GPU Architecture via "
    "Microbenchmarking (arXiv:1804.06826): a streaming kernel reaches 750 of the V100's 900 GB/s",
    "link_efficiency": "taken as memory_efficiency (a transfer's share of its datasheet rate); "
    "not fitted, and no public run here turns on it (the exchange overlaps the backward)",
    "launch_s": "NVIDIA, Getting Started with CUDA Graphs (2019): launches of a 2.9 us kernel "
    "back to back take 3.8 us each, about 1 us more",
    "host_train_s": "measured on this project's CPU: python -m bench.predict.calibrate "
    "--measure-host (bench/predict/host.py)",
    "host_inference_s": "measured with host_train_s",
    "host_memory_gbs": "measured with host_train_s: one thread's foreach lerp over float32 "
    "tensors far larger than the caches (bench/predict/host.py, memory_rate)",
    "band_low": "the lowest measured / leave-one-out predicted time of the runs in the fit",
    "band_high": "the highest measured / leave-one-out predicted time of the runs in the fit",
}


@dataclasses.dataclass(frozen=True)
class Term:
    """A term of the model, switched off for the ablation: how the kernels or constants change."""

    name: str
    kernels: Callable[[list[Kernel]], list[Kernel]] = lambda ks: ks
    constants: Callable[[Constants], Constants] = lambda c: c
    ranks_off: bool = False
    waves_off: bool = False


TERMS = (
    Term("tiles and waves", waves_off=True),
    Term(
        "the passes CUDA's kernels add (bias adds, NHWC transposes, norm statistics)",
        kernels=lambda ks: [k for k in ks if not k.beyond_aten],
    ),
    Term("host dispatch", constants=lambda c: dataclasses.replace(c, host_train_s=0.0)),
    Term("kernel launches", constants=lambda c: dataclasses.replace(c, launch_s=0.0)),
    Term("the gradient exchange across ranks", ranks_off=True),
)


def predicted_seconds(
    run: PublicRun, kernels: list[Kernel], c: Constants, term: Term | None = None
) -> float:
    term = term or Term("none")
    card = CARDS[run.spec.card]
    ranks = 1 if term.ranks_off else run.spec.ranks
    return step_time.step_time(
        term.kernels(kernels),
        card,
        run.spec.precision,
        ranks=ranks,
        constants=term.constants(c),
        waves=not term.waves_off,
    ).step_s


def fit(
    runs: list[PublicRun],
    traces: dict[str, list[Kernel]],
    base: Constants,
    term: Term | None = None,
) -> Constants:
    """The compute efficiency that minimises the runs' squared log error (golden-section search
    over its logarithm, within BOUNDS)."""

    def loss(log_eta: float) -> float:
        c = dataclasses.replace(base, **{FITTED: math.exp(log_eta)})
        return math.fsum(
            math.log(predicted_seconds(r, traces[r.key], c, term) * r.measured_it_s) ** 2
            for r in runs
        )

    lo, hi = (math.log(b) for b in BOUNDS)
    golden = (math.sqrt(5) - 1) / 2
    a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - golden * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + golden * (hi - lo)
            fb = loss(b)
    return dataclasses.replace(base, **{FITTED: math.exp((lo + hi) / 2)})


def evaluate(
    runs: tuple[PublicRun, ...],
    traces: dict[str, list[Kernel]],
    base: Constants,
    term: Term | None = None,
) -> dict:
    """The fit on the calibrating runs, and every run's error under it and left out of it."""
    calibrating = [r for r in runs if r.calibrate]
    full = fit(calibrating, traces, base, term)
    rows = []
    for run in runs:
        others = [r for r in calibrating if r.key != run.key]
        alone = fit(others, traces, base, term) if run.calibrate else full
        fitted_s = predicted_seconds(run, traces[run.key], full, term)
        loo_s = predicted_seconds(run, traces[run.key], alone, term)
        rows.append(
            {
                "key": run.key,
                "in_fit": run.calibrate,
                "measured_it_s": run.measured_it_s,
                "fit_it_s": 1 / fitted_s,
                "fit_error_pct": 100 * (1 / fitted_s / run.measured_it_s - 1),
                "loo_it_s": 1 / loo_s,
                "loo_error_pct": 100 * (1 / loo_s / run.measured_it_s - 1),
                "loo_efficiency": getattr(alone, FITTED),
                "ratio": loo_s * run.measured_it_s,  # measured / predicted time
            }
        )
    return {"constants": full, "rows": rows}


def band(rows: list[dict]) -> tuple[float, float]:
    """Measured / predicted time over the runs in the fit, each left out of its own fit."""
    ratios = [1 / r["ratio"] for r in rows if r["in_fit"]]
    return min(ratios), max(ratios)


def median(values: list[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def write_constants(c: Constants, path: Path = CONSTANTS_FILE) -> None:
    data = {
        f.name: {"value": getattr(c, f.name), "source": SOURCES[f.name]}
        for f in dataclasses.fields(Constants)
    }
    atomic_write(path, json.dumps(data, indent=2) + "\n")


COLUMNS = [
    "run",
    "card",
    "precision",
    "batch",
    "ranks",
    "in_fit",
    "measured_it_s",
    "fit_it_s",
    "fit_error_pct",
    "loo_it_s",
    "loo_error_pct",
]


def table_rows(result: dict) -> list[dict]:
    by_key = {r.key: r for r in RUNS}
    out = []
    for row in result["rows"]:
        run = by_key[row["key"]]
        out.append(
            {
                "run": run.key,
                "card": run.spec.card,
                "precision": run.spec.precision,
                "batch": run.spec.batch,
                "ranks": run.spec.ranks,
                "in_fit": "yes" if row["in_fit"] else "no",
                **{k: row[k] for k in COLUMNS[6:]},
            }
        )
    return out


def render(result: dict, ablation: list[tuple[str, dict]], commit: str | None) -> str:
    c = result["constants"]
    rows = result["rows"]
    errors = [abs(r["loo_error_pct"]) for r in rows if r["in_fit"]]
    held = [abs(r["loo_error_pct"]) for r in rows if not r["in_fit"]]
    lines = [
        "# public runs",
        "",
        "The public training runs the step-time model is held to (bench/predict/public_runs.py)"
        ", predicted by `python -m bench.predict.calibrate` at commit "
        f"{commit or 'unknown'}. fit: constants fitted on every run marked in_fit; loo: fitted "
        "without the row's own run (a run outside the fit is predicted by the full fit). "
        "error = predicted / measured it/s - 1, in percent. Nothing here was measured by this "
        "project.",
        "",
        markdown_table(table_rows(result), COLUMNS),
        "",
        markdown_table(
            [{"run": r.key, "source": r.source, "measured_it_s": r.derivation} for r in RUNS],
            ["run", "source", "measured_it_s"],
        ),
        "",
        f"- Fitted: compute efficiency {c.compute_efficiency:.3f} of the datasheet peak.",
        f"- Leave-one-out over the {len(errors)} runs in the fit: median |error| "
        f"{median(errors):.1f}%, largest {max(errors):.1f}%.",
        *(
            [
                f"- Held out of the fit, the {len(held)} other runs (predicted by the full fit): "
                f"median |error| {median(held):.1f}%, largest {max(held):.1f}%."
            ]
            if held
            else []
        ),
        f"- Band: a predicted time T is likely {c.band_low:.2f} T to {c.band_high:.2f} T "
        "(the runs in the fit: measured / leave-one-out predicted time, lowest and highest).",
        "",
        "## Each term switched off (the efficiency fitted again)",
        "",
    ]
    ablated = []
    for name, res in [("none (the model)", result), *ablation]:
        errs = [r["loo_error_pct"] for r in res["rows"] if r["in_fit"]]
        ablated.append(
            {
                "switched_off": name,
                "efficiency": res["constants"].compute_efficiency,
                **{r["key"]: r["loo_error_pct"] for r in res["rows"]},
                "median_abs_loo_pct": median([abs(e) for e in errs]),
            }
        )
    columns = ["switched_off", "efficiency", *[r.key for r in RUNS], "median_abs_loo_pct"]
    lines += [
        "Leave-one-out error per run, in percent, with the term switched off:",
        "",
        markdown_table(ablated, columns),
        "",
    ]
    return "\n".join(lines)


def append_record(path: Path, result: dict, run_id: str, commit: str | None) -> None:
    """Every calibration kept: <out>/public_runs.json maps each run id to its commit, its
    constants and its rows (one more entry per run; the .md shows the latest)."""
    record = json.loads(path.read_text()) if path.exists() else {}
    record[run_id] = {
        "commit": commit,
        "constants": dataclasses.asdict(result["constants"]),
        "rows": table_rows(result),
    }
    atomic_write(path, json.dumps(record, indent=1) + "\n")


def trace(
    runs: tuple[PublicRun, ...], what: str, recipes: bool = True, bf16: bool = False
) -> dict[str, list[Kernel]]:
    """Each run's kernels (bf16: only the fp16 runs that have bf16, traced as bf16; without
    recipes: only the runs that have one, traced with our training loop)."""
    traces = {}
    for run in runs:
        spec = run.spec
        if not recipes and not run.recipe:
            continue  # its own loop is the only one it has: its trace with recipes serves
        if bf16:
            if spec.precision != "fp16" or spec.impl == guided_flags.NAME:
                continue  # guided-diffusion has no bf16: its fp16 scheme stays as traced
            spec = spec.replace(precision="bf16")
        print(f"tracing {run.key} ({what}) ...", file=sys.stderr, flush=True)
        recipe = recipe_of(run) if recipes else None
        traces[run.key] = train_step_kernels(spec, CARDS[spec.card], recipe)
    return traces


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.predict.calibrate", description=__doc__)
    parser.add_argument(
        "--out",
        default="runs/bench",
        help="public_runs.json and .md go here (default %(default)s, which git ignores; "
        "the committed ones: --out results)",
    )
    parser.add_argument(
        "--measure-host",
        action="store_true",
        help="measure the host's dispatch cost on this CPU first (else the file's is kept)",
    )
    args = parser.parse_args(argv)
    base = load_constants()
    if args.measure_host:
        print("measuring the host's dispatch cost on this CPU ...", file=sys.stderr)
        base = dataclasses.replace(base, **host.measure())
    for run in RUNS:
        why = problem(run.spec, run=False)
        if why:
            print(f"public run {run.key}: {why}", file=sys.stderr)
            raise SystemExit(2)
    traces = trace(RUNS, "the public runs")
    result = evaluate(RUNS, traces, base)
    low, high = band(result["rows"])
    result["constants"] = dataclasses.replace(result["constants"], band_low=low, band_high=high)
    ablation = [(t.name, evaluate(RUNS, traces, base, t)) for t in TERMS]
    # Two terms live in the trace itself: traced again without them.
    ours = trace(RUNS, "with our training loop", recipes=False)
    ablation.append(
        (
            "each run's own loop (optimizer, EMA, upsampling): ours",
            evaluate(RUNS, {**traces, **ours}, base),
        )
    )
    as_bf16 = {**traces, **trace(RUNS, "fp16 traced as bf16", bf16=True)}
    ablation.append(
        ("fp16's GradScaler and casts: fp16 traced as bf16", evaluate(RUNS, as_bf16, base))
    )
    commit = git_commit()
    write_constants(result["constants"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    append_record(out / "public_runs.json", result, run_id, commit)
    text = render(result, ablation, commit)
    atomic_write(out / "public_runs.md", text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
