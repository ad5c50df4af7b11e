"""python -m bench.plan: the fastest way to train a model at an effective batch on a card,
predicted in seconds to minutes on any machine, no GPU run.

    python -m bench.plan --card rtx3070 --effective-batch 128
    python -m bench.plan --preset ddpm-256 --card rtx3060,rtx4090,t4 --effective-batch 64 \\
        --price rtx4090=0.69,t4=0.35
    python -m bench.plan --card rtx3070 --effective-batch 128 --levers split,precision
    python -m bench.plan --card rtx3070 --effective-batch 128 \\
        --levers split,precision=fp32+bf16,optimizer=adamw+adamw8bit,ema

Every option keeps the effective batch: a split into micro-batch x accumulation (accumulation at
most --max-accum), and each allowed lever's values the card runs (precision: fp32, tf32, bf16,
fp16 where the card has the tensor cores; gradient checkpointing; torch.compile where Triton
runs, predicted as eager; and, where --levers names them, the optimizer, the EMA's place, the
attention backend and channels-last); with --ranks N, on 1 to N cards of each kind, several in
DDP. Each option's CUDA memory is predicted for the card (the
same prediction as bench.memory --predict-only: the step on fake tensors, the caching allocator
replayed) and, where it fits, its step time (bench.throughput's prediction for the card) and
hours to train. The fastest few of each card are printed, ties kept to the simpler setting
(fp32 before fp16, no checkpointing before checkpointing, less accumulation); * marks a setting
that changes the loss. With several cards it says which trains soonest and, with --price,
cheapest. Every option goes to <out>/plan.csv, the latest plans to <out>/plan.md.

Results on stdout, progress on stderr. Traces are kept on disk (DDPM_BENCH_TRACE_CACHE), so a
question asked again answers in seconds. Bad input, or an effective batch no option fits on any
card: one line on stderr (the nearest option and by how much), exit status 2."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import uuid
from datetime import datetime, timezone

from bench.cards import CARDS, DEFAULT_TARGET
from bench.models import guided_flags, impl
from bench.models.workload import parameter_count
from bench.parsers import SpecError, parse_budget, parse_cards
from bench.planning import report
from bench.planning.levers import BY_NAME, LEVERS, SPLIT
from bench.planning.planner import Planner, parse_levers
from bench.predict import cache
from bench.predict.runtime import PAPER_TRAIN_STEPS
from bench.spec import DEFAULT_CONTEXT_MIB, BenchSpec, option_axes
from bench.tables.results import RUN_FOLDER, ResultsError, check_writable, results_folder
from ddpm.cli.args import ArgumentParser, fail, positive_int
from ddpm.cli.pipes import quiet_closed_pipes

# The axes that say which model is trained: given as bench.memory takes them.
MODEL_AXES = (
    "preset",
    "channels",
    "channel_mults",
    "res_blocks",
    "heads",
    "dropout",
    "image_size",
    "attention",
    "impl",
    "model_config",
)
ALL_LEVERS = (SPLIT, *BY_NAME)
# Each lever multiplies the options: those that are opt-in are pulled only where named.
DEFAULT_LEVERS = (SPLIT, *(lever.field for lever in LEVERS if not lever.opt_in))


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m bench.plan",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = p.add_argument_group("the model (as bench.memory takes it)")
    for f in option_axes(BenchSpec):
        if f.name in MODEL_AXES:
            o = f.metadata["option"]
            model.add_argument(
                o.flag(f.name), dest=f.name, type=o.type, default=o.text, help=o.help
            )
    q = p.add_argument_group("the question")
    q.add_argument(
        "--card",
        required=True,
        help="the cards to plan for, a comma list of bench.cards' names, e.g. rtx3070,t4 "
        f"(one of {', '.join(CARDS)})",
    )
    q.add_argument(
        "--effective-batch",
        type=positive_int,
        required=True,
        help="images per optimizer step, kept by every option (micro-batch x accumulation)",
    )
    q.add_argument(
        "--train-steps",
        type=positive_int,
        default=PAPER_TRAIN_STEPS,
        help="optimizer steps to train (default %(default)s, the DDPM paper's)",
    )
    q.add_argument(
        "--max-accum",
        type=positive_int,
        default=None,
        help="the most gradient-accumulation steps an option may take (default: any)",
    )
    q.add_argument(
        "--ranks",
        type=positive_int,
        default=1,
        help="how many cards of each kind you have: above 1 the plan also trains on 2 up to "
        "that many at once, in DDP (the effective batch shared by the cards; an hour costs "
        "--price times the cards) (default %(default)s)",
    )
    q.add_argument(
        "--levers",
        default=",".join(DEFAULT_LEVERS),
        help="the levers the plan may pull, a comma list; the others keep their default; "
        "NAME=A+B keeps a lever to those values (precision=fp32+bf16). Each "
        "lever multiplies the options, so the opt-in ones are pulled only where named: "
        + "; ".join(
            [f"{SPLIT}: micro-batch x accumulation (else one micro-batch)"]
            + [f"{lever.field}: {lever.why}" for lever in LEVERS]
        )
        + " (default %(default)s)",
    )
    q.add_argument(
        "--price",
        default="",
        help="what an hour of each card costs, CARD=USD,... e.g. rtx4090=0.69,t4=0.35: the "
        "plan says which trains cheapest",
    )
    q.add_argument(
        "--budget",
        default=None,
        help="memory every option must fit, MiB/GiB or MB/GB (default: each card's capacity "
        "under torch)",
    )
    q.add_argument(
        "--cuda-context-mib",
        type=float,
        default=DEFAULT_CONTEXT_MIB,
        help="allowance for the CUDA context (default %(default)g)",
    )
    o = p.add_argument_group("output")
    o.add_argument("--top", type=positive_int, default=5, help="options shown per card (default 5)")
    o.add_argument(
        "--out",
        default=RUN_FOLDER,
        help="the folder of plan.csv and plan.md (default %(default)s)",
    )
    return p


def model_spec(args: argparse.Namespace) -> BenchSpec:
    """The model's axes parsed as their declarations say (each one value)."""
    base = BenchSpec(
        budget=None if args.budget is None else parse_budget(args.budget),
        context_mib=args.cuda_context_mib,
        predict_only=True,
    )
    for f in option_axes(BenchSpec):
        if f.name in MODEL_AXES:
            o = f.metadata["option"]
            (value,) = o.parse(o.flag(f.name), getattr(args, f.name), base)
            base = base.replace(**{f.name: value})
    # guided-diffusion's image size and attention are its file's unless given (as every
    # harness settles them).
    return impl.settle(base, args.image_size is not None, args.attention != "preset")


def parse_prices(text: str, cards: list[str]) -> dict[str, float]:
    prices = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        card, _, value = item.partition("=")
        if card not in cards:
            raise SpecError(f"--price {item!r}: {card!r} is not a card asked ({', '.join(cards)}).")
        try:
            prices[card] = float(value)
        except ValueError:
            prices[card] = -1.0
        if not 0 <= prices[card] < float("inf"):
            raise SpecError(f"--price {item!r}: the price must be USD per hour, a number >= 0.")
    return prices


def question(args, base: BenchSpec) -> dict:
    if base.impl == guided_flags.NAME:  # its model is its flags': no preset's
        model = base.impl
    else:
        model = base.preset if base.impl == "ddpm" else f"{base.preset} ({base.impl})"
    if base.config_file:
        model += f" from {base.config_file}"
    return {
        "run_id": uuid.uuid4().hex[:8],
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.plan "
        + shlex.join(sys.argv[1:] if args.argv is None else args.argv),
        "model": f"{model} at {base.image_size}px",
        "params": parameters(base),
        "effective_batch": args.effective_batch,
        "train_steps": args.train_steps,
    }


def parameters(base: BenchSpec) -> int:
    """The model's parameter count, kept beside the traces: counting builds the model on fake
    tensors, whose mode imports torch's compiler stack (seconds), and a question asked again
    needs no fake tensor at all."""
    entry = cache.key(base, DEFAULT_TARGET)
    found = cache.load_answer("params", [entry]) if entry is not None else None
    if isinstance(found, int):
        return found
    count = parameter_count(base)
    if entry is not None:
        cache.save_answer("params", [entry], count)
    return count


def main(argv: list[str] | None = None) -> list[dict]:
    quiet_closed_pipes()
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        cards = parse_cards(args.card)
        if cards == [""]:
            raise SpecError("--card is empty: name the cards to plan for.")
        allowed, only = parse_levers(args.levers, cards)
        if not allowed:
            raise SpecError(
                f"--levers {args.levers!r} allows no lever: choose from {', '.join(ALL_LEVERS)}."
            )
        prices = parse_prices(args.price, cards)
        base = model_spec(args)
        out = results_folder(args.out)
        check_writable(out)
    except (SpecError, ValueError, ResultsError) as exc:
        fail(str(exc))
    max_accum = args.max_accum or args.effective_batch
    started = time.monotonic()
    planner = Planner(say=lambda line: print(line, file=sys.stderr, flush=True))
    asked = question(args, base)
    rows = []
    for card in cards:
        ranked = planner.plan(
            base, card, args.effective_batch, max_accum, allowed, args.train_steps, only, args.ranks
        )
        rows += report.rows(asked, card, ranked, prices.get(card))
    if not any(r["fits"] for r in rows):
        predicted = [r for r in rows if not r["cannot_run"]]
        if not predicted:
            fail(f"no option can run on {', '.join(cards)}: {rows[0]['cannot_run']}")
        nearest = max(predicted, key=lambda r: r["headroom_mib"])
        fail(
            f"--effective-batch {args.effective_batch}: no option fits on "
            f"{', '.join(cards)}; the nearest, {nearest['batch']} x {nearest['accum']} "
            f"{nearest['precision']} checkpointing {nearest['checkpointing']} on "
            f"{nearest['card']}, needs {nearest['predicted_cuda_mib']:,.0f} MiB, "
            f"{-nearest['headroom_mib']:,.0f} MiB over its {nearest['budget_mib']:,.0f}."
        )
    try:
        report.append(out / "plan.csv", rows)
        written = report.write_markdown(out, args.top)
    except (ResultsError, OSError) as exc:
        fail(str(exc))
    print("\n".join(report.text([{k: _text(v) for k, v in r.items()} for r in rows], args.top)))
    print(
        f"Planned in {time.monotonic() - started:.1f} s; every option in {out / 'plan.csv'}, "
        f"the plans in {written}.",
        file=sys.stderr,
    )
    return rows


def _text(value):
    """A row's cell as plan.csv holds it (the text and markdown read it back so)."""
    return "" if value is None else str(value)


if __name__ == "__main__":
    main(sys.argv[1:])
