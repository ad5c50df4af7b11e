"""python -m bench.gpucheck: the first command to run on a new NVIDIA card.

In a few minutes on one card it runs the main job (batch 2 x accum 64), a small batch sweep
(fp32 / bf16, attention none / 16), the largest-batch search under a small budget (out-of-memory
probes included), fp16 steps with the GradScaler, and a profile with CUDA activity and a memory
snapshot, with NVML sampling throughout. It writes <out>/gpucheck.md: each memory row's
measured allocated, reserved and NVML figures beside the prediction and its error, then the
checks. Exit status 1 when a check fails or the prediction misses measured reserved memory by
more than --tolerance percent; 2 without a CUDA GPU. The report goes to stdout as well; the
sweeps' own tables and progress, steps on the way, to stderr."""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from pathlib import Path

import torch

from bench import memory, profile, throughput
from bench.cards import caveats
from bench.measure import cuda
from bench.parsers import SpecError, parse_budget, parse_cards, parse_device
from bench.tables.env import describe, environment
from bench.tables.results import RUN_FOLDER, markdown_table
from ddpm.cli.args import ArgumentParser
from ddpm.cli.pipes import quiet_closed_pipes
from ddpm.errors import printable

MEMORY_STEPS = (
    ("main job", ["--batch", "2", "--accum", "64"]),
    (
        "batch sweep",
        ["--batch", "8,32", "--accum", "1", "--precision", "fp32,bf16", "--attention", "none,16"],
    ),
    (
        "fp16 with GradScaler",
        ["--batch", "8", "--accum", "2", "--precision", "fp16", "--steps", "3"],
    ),
)
# The measured step time beside the prediction for --card: a batch an 8 GB card holds.
TIME_STEP = ["--batch", "32", "--precision", "fp32,bf16", "--steps", "5", "--warmup", "2"]
TIME_COLUMNS = [
    "precision",
    "batch",
    "status",
    "step_s",
    "predicted_step_s",
    "predicted_step_s_low",
    "predicted_step_s_high",
    "step_error_pct",
    "in_band",
]
COLUMNS = [
    "check",
    "batch",
    "accum",
    "precision",
    "attention",
    "status",
    "peak_alloc_mib",
    "predicted_alloc_mib",
    "alloc_error_pct",
    "peak_reserved_mib",
    "predicted_reserved_mib",
    "reserved_error_pct",
    "nvml_peak_mib",
    "nvml_process_peak_mib",
    "context_mib",
]


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m bench.gpucheck",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--device", default="cuda", help="cuda or cuda:N (default cuda: the current)")
    p.add_argument(
        "--out",
        default=RUN_FOLDER,
        help="gpucheck.md goes here, the harness tables of the check under "
        "<out>/gpucheck/ (default %(default)s, which git ignores; for the "
        "committed tables: --out results)",
    )
    p.add_argument(
        "--small-budget",
        default="3GiB",
        help="budget of the largest-batch search: small, so it ends in OOM probes "
        "(default %(default)s)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=10.0,
        help="largest |error| of predicted against measured reserved memory, in "
        "percent (default %(default)g)",
    )
    p.add_argument(
        "--card",
        default=None,
        help="this card's key in bench/cards.py (e.g. rtx3070): also time training steps and "
        "put the measured step time beside the predicted one",
    )
    p.add_argument(
        "--inline", action="store_true", help="run every spec in this process (debugging)"
    )
    return p


def main(argv: list[str] | None = None) -> None:
    with quiet_closed_pipes():  # a reader that closes the pipe early costs no file
        run_checks(argv)


def run_checks(argv: list[str] | None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The numbers first, as every command checks them: nan or inf would pass every row ("within
    # nan%"), a negative one fail every row.
    if not 0 < args.tolerance < math.inf:
        parser.error(
            f"--tolerance {args.tolerance:g} is not allowed: give a positive, finite percentage, "
            "e.g. 10."
        )
    if not torch.cuda.is_available():
        parser.error(
            f"bench.gpucheck needs a CUDA GPU and torch sees none here (torch "
            f"{torch.__version__}, CUDA {torch.version.cuda or 'not built in'}); run "
            "it on the machine with the card."
        )
    try:
        device = str(cuda.resolve(parse_device(args.device)))
        parse_budget(args.small_budget)
    except SpecError as exc:
        parser.error(str(exc).replace("--budget", "--small-budget"))
    if args.card is not None:
        try:  # the harnesses' own parser: one card of the catalogue here, not a list
            if len(parse_cards(args.card)) != 1 or not args.card:
                raise SpecError(
                    f"--card {args.card!r} is not allowed: name one card, e.g. rtx3070."
                )
        except SpecError as exc:
            parser.error(str(exc))
    work = Path(args.out) / "gpucheck"
    common = ["--device", device, "--out", str(work)] + (["--inline"] if args.inline else [])

    rows: list[dict] = []
    # The sweeps' answers are this check's progress: stdout keeps the report alone.
    with contextlib.redirect_stdout(sys.stderr):
        for check, extra in MEMORY_STEPS:
            rows += [{"check": check, **r} for r in memory.main(extra + common) or []]
        search = (
            memory.main(
                ["--find-max-batch", "--accum", "1", "--budget", args.small_budget, *common]
            )
            or []
        )
        profiled = (
            profile.main(["--batch", "8", "--memory-snapshot", "--steps", "2", *common]) or []
        )
        timed = []
        if args.card is not None:
            timed = throughput.main([*TIME_STEP, "--card", args.card, *common]) or []

    checks = verdicts(rows, search, profiled, args.tolerance)
    timed = with_step_error(timed)
    if args.card is not None:
        checks.append(time_check(timed, args.card))
    report = render(environment(device), rows, checks, args.tolerance, timed)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpucheck.md").write_text(report)
    print(report)
    if any(not ok for ok, _ in checks):
        raise SystemExit(1)


def verdicts(
    rows: list[dict], search: list[dict], profiled: list[dict], tolerance: float
) -> list[tuple[bool, str]]:
    """(passed, sentence) for each thing the check must show on a real card."""
    checks = []
    failed = [r for r in rows + search + profiled if r.get("status") != "ok"]
    checks.append(
        (
            not failed,
            f"every spec ran ({len(failed)} did not: "
            + "; ".join(f"{r.get('spec_id')}: {r.get('status')} {r.get('error')}" for r in failed)
            + ")"
            if failed
            else "every spec ran",
        )
    )
    ok = [r for r in rows if r.get("status") == "ok"]
    misses = [
        r
        for r in ok
        if r.get("reserved_error_pct") is None or abs(r["reserved_error_pct"]) > tolerance
    ]
    within = len(ok) - len(misses)
    checks.append(
        (
            bool(ok) and not misses,
            f"predicted reserved within {tolerance:g}% of measured in {within} of {len(ok)} rows",
        )
    )
    checks.append(
        (
            bool(ok) and all(r.get("nvml_peak_mib") for r in ok),
            "NVML sampled device memory in every row",
        )
    )
    found = [r for r in search if r.get("status") == "ok" and r.get("batch")]
    checks.append(
        (
            bool(found),
            "the largest-batch search finished: "
            + (
                ", ".join(
                    f"batch {r['batch']} ({r['precision']}, attention {r['attention']})"
                    for r in found
                )
                or "no result"
            ),
        )
    )
    traced = [r for r in profiled if r.get("status") == "ok" and r.get("memory_snapshot")]
    checks.append(
        (
            bool(traced),
            "a profile with CUDA activity and a memory snapshot: "
            + (", ".join(str(r["trace_dir"]) for r in traced) or "none"),
        )
    )
    return checks


def with_step_error(rows: list[dict]) -> list[dict]:
    """Each throughput row with step_error_pct = 100 x (predicted - measured) / measured, and
    in_band: whether the measured step lies in the prediction's likely range."""
    out = []
    for r in rows:
        r = dict(r)
        if r.get("step_s") and r.get("predicted_step_s") is not None:
            r["step_error_pct"] = 100.0 * (r["predicted_step_s"] - r["step_s"]) / r["step_s"]
            if r.get("predicted_step_s_low") is not None:
                low, high = r["predicted_step_s_low"], r["predicted_step_s_high"]
                r["in_band"] = "yes" if low <= r["step_s"] <= high else "no"
        out.append(r)
    return out


def time_check(rows: list[dict], card: str) -> tuple[bool, str]:
    """Passes when every timed row has its measured and predicted step time: the error is a
    figure to report, not a tolerance to meet."""
    done = [r for r in rows if r.get("step_error_pct") is not None]
    words = "; ".join(
        f"{r['precision']} batch {r['batch']}: measured {r['step_s']:.4g} s, predicted "
        f"{r['predicted_step_s']:.4g} s{_likely(r)} ({r['step_error_pct']:+.1f}%)"
        + "".join(f" ({c})" for c in caveats(card, r["precision"], r.get("compile") or "off"))
        for r in done
    )
    return (
        bool(rows) and len(done) == len(rows),
        f"step time on this card beside the prediction for {card}: {words or 'no result'}",
    )


def _likely(row: dict) -> str:
    if row.get("in_band") is None:
        return ""
    where = "inside" if row["in_band"] == "yes" else "outside"
    return (
        f", likely {row['predicted_step_s_low']:.4g}-{row['predicted_step_s_high']:.4g} s "
        f"(measured {where} it)"
    )


def render(
    env: dict,
    rows: list[dict],
    checks: list[tuple[bool, str]],
    tolerance: float,
    timed: list[dict] | None = None,
) -> str:
    lines = [
        "# gpucheck",
        "",
        f"Card and environment: {describe(env)}.",
        "",
        "Measured (allocator peaks after warm-up, NVML) beside the prediction for this card; "
        "error = 100 x (predicted - measured) / measured; reserved is compared with "
        "predicted reserved plus the cuDNN allowance. MiB = 2^20 bytes.",
        "",
        markdown_table(rows, COLUMNS),
        "",
    ]
    if timed:
        lines += [
            "Training steps timed on this card beside the predicted step time for --card "
            "(bench.predict.runtime) and its likely range (predicted_step_s_low to _high, "
            "from the public runs' leave-one-out errors); step_error_pct = 100 x (predicted - "
            "measured) / measured; in_band: the measured step inside that range.",
            "",
            markdown_table(timed, TIME_COLUMNS),
            "",
        ]
    lines += [
        f"## Checks (tolerance {tolerance:g}%)",
        "",
    ]
    # A check's sentence quotes the specs' errors: shown literally (ddpm.errors.printable).
    lines += [f"- {'PASS' if ok else 'FAIL'}: {printable(sentence)}" for ok, sentence in checks]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])
