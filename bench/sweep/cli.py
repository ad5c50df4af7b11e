"""The command line every harness shares: the axes as comma lists, validated up front."""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from collections.abc import Callable

from bench import cards
from bench import spec as spec_module
from bench.core import Harness
from bench.models import impl
from bench.parsers import ARCHITECTURE, SpecError, parse_budget, parse_impls, parse_model_config
from bench.spec import (
    DEFAULT_BUDGET,
    DEFAULT_CONTEXT_MIB,
    LIST_CARDS,
    BenchSpec,
    common_axes,
    expand_grid,
    option_axes,
)
from bench.sweep.check import DEFAULT_TIMEOUT_S, check_models
from bench.sweep.launch import Launch, launches_ranks
from bench.sweep.runner import run_sweep
from bench.tables.results import RUN_FOLDER, ResultsError, check_writable, results_folder
from ddpm.attention import CPU_BACKENDS
from ddpm.cli.args import ArgumentParser, seed_int
from ddpm.cli.pipes import quiet_closed_pipes
from ddpm.cli.signals import exit_on_interrupt

# Bad input gets one line naming the problem and exit status 2, not a usage dump: the same
# parser as ddpm's command lines.
OneLineParser = ArgumentParser


# The option groups of --help, by an axis declaration's `group` (bench.axis.AxisOption).
GROUPS = {
    "axes": "axes (comma lists; the sweep is their product)",
    "ranks": "more than one card (torchrun; gloo on CPU, NCCL on CUDA)",
    "run": "model, device and run",
    "levers": "memory levers of training (docs/levers.md)",
}


def build_parser(
    prog: str,
    description: str,
    defaults: dict,
    helps: dict[str, str] | None = None,
    axes: tuple[str, ...] | None = None,
) -> OneLineParser:
    """An option for each axis the harness takes (`axes`, default bench.spec.common_axes()), as
    its declaration in BenchSpec says, and the shared run options. `defaults` and `helps` (by
    option dest) let a harness say what an option means for it, e.g. --steps are the steps
    trained in bench.loss. Taking "ranks" brings --nnodes and --rdzv-endpoint too."""
    p = OneLineParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    groups = {key: p.add_argument_group(title) for key, title in GROUPS.items()}
    cls = spec_module.BenchSpec  # read at each call, so a spec class with one more axis is seen
    taken = common_axes(cls) if axes is None else axes
    for f in option_axes(cls):
        if f.name not in taken:
            continue
        o = f.metadata["option"]
        if o.group not in groups:
            groups[o.group] = p.add_argument_group(o.group)
        groups[o.group].add_argument(
            o.flag(f.name),
            dest=f.name,
            type=o.type,
            default=defaults.get(f.name, o.text),
            help=o.help,
            **({"nargs": "?", "const": o.const} if o.const is not None else {}),
        )
    if "ranks" in taken:
        d = groups["ranks"]
        d.add_argument(
            "--nnodes",
            type=int,
            default=1,
            help="machines the ranks span; each runs the same command (default 1)",
        )
        d.add_argument(
            "--rdzv-endpoint",
            default=None,
            help="host:port where the machines meet (torchrun's); default: all "
            "ranks on this machine (torchrun --standalone)",
        )
    g = groups["run"]
    if "card" in taken:
        g.add_argument(
            "--list-cards",
            action="store_true",
            help="list the cards --card knows (bench.cards) and exit",
        )
    g.add_argument(
        "--budget",
        default=None,
        help="memory budget the fits column answers for: MiB/GiB (2^20, 2^30 bytes) "
        "or MB/GB (10^6, 10^9) (default: the --card's capacity under torch; without "
        f"--card an 8 GB card, whose CUDA capacity is {DEFAULT_BUDGET})",
    )
    g.add_argument(
        "--cuda-context-mib",
        type=float,
        default=DEFAULT_CONTEXT_MIB,
        help="allowance for the CUDA context off CUDA (on CUDA it is measured), "
        "added to the prediction: published figures with lazy loading run "
        "from 256 to 426 MiB (default %(default)g)",
    )
    g.add_argument(
        "--steps",
        type=int,
        default=defaults.get("steps", 1),
        help="measured optimizer steps per spec (default %(default)s)",
    )
    g.add_argument(
        "--warmup",
        type=int,
        default=defaults.get("warmup", 1),
        help="warm-up optimizer steps, timed apart (default %(default)s)",
    )
    g.add_argument(
        "--find-max-batch",
        action="store_true",
        help="for each combination of the other axes, search the largest batch that "
        "fits the budget (doubling, then bisection): measured on CUDA, predicted "
        "elsewhere; --batch is ignored",
    )
    g.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run the whole grid this many times, one pass after another, so specs "
        "next to each other (e.g. --impl ddpm,diffusers) share the machine's "
        "drift; each pass is its own rows (column repeat) (default 1)",
    )
    g.add_argument("--seed", type=seed_int, default=0, help="seed for weights and data (default 0)")
    g.add_argument(
        "--out",
        default=RUN_FOLDER,
        help="results folder (default %(default)s, which git ignores; the committed "
        "reference tables: --out results)",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="skip specs that already have an ok or oom row in the CSV",
    )
    g.add_argument(
        "--inline",
        action="store_true",
        help="run specs in this process (debugging); default: one process per spec",
    )
    g.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds before a spec's process is stopped, and before the check of a model "
        "other than ours that runs first (default %(default)s)",
    )
    for action in p._actions:
        if helps and action.dest in helps:
            action.help = helps[action.dest]
    return p


# Why a harness that does not use a shared option refuses it (refuse_unused), by its dest.
UNUSED = {
    "card": (
        "--card",
        "it predicts nothing for a card (bench.memory, bench.throughput and bench.sampling do)",
    ),
    "budget": (
        "--budget",
        "none of its figures is weighed against a memory budget (bench.memory's fits is)",
    ),
    "cuda_context_mib": ("--cuda-context-mib", "it predicts no CUDA memory (bench.memory does)"),
}


def refuse_unused(args: argparse.Namespace, harness: str, names: tuple[str, ...]) -> None:
    """A shared option `harness` takes on its command line but does not use, given a value: one
    line, rather than rows that name a card (or a budget) nothing in them was for."""
    given = {
        "card": getattr(args, "card", "") not in ("", None),
        "budget": args.budget is not None,
        "cuda_context_mib": args.cuda_context_mib != DEFAULT_CONTEXT_MIB,
    }
    for name in names:
        if given[name]:
            flag, why = UNUSED[name]
            raise SpecError(f"{flag} is not used by bench.{harness}: {why}; leave it out.")


def specs_from_args(args: argparse.Namespace) -> list[BenchSpec]:
    """Every axis the parser took, parsed by its declaration and expanded into the grid, every
    value checked before anything runs; SpecError carries the user's line."""
    for option, value, minimum in (
        ("--steps", args.steps, 1),
        ("--warmup", args.warmup, 0),
        ("--timeout", args.timeout, 1e-9),
        ("--repeats", args.repeats, 1),
        ("--cuda-context-mib", args.cuda_context_mib, 0),
    ):
        if not minimum <= value < math.inf:  # NaN fails every comparison, so this too
            raise SpecError(
                f"{option} {value:g} is not allowed: it must be >= {minimum:g} and finite."
            )
    base = spec_module.BenchSpec(
        seed=args.seed,
        measure_steps=args.steps,
        warmup_steps=args.warmup,
        budget=None if args.budget is None else parse_budget(args.budget),
        context_mib=args.cuda_context_mib,
        find_max_batch=args.find_max_batch,
    )
    base = with_model(base, args)
    values: dict[str, list] = {}
    for f in option_axes(type(base)):
        if not hasattr(args, f.name):
            continue  # not this harness's: the spec keeps the field's default
        o = f.metadata["option"]
        if f.name == "batch" and args.find_max_batch:
            values[f.name] = [1]  # the search sets the batch; --batch is ignored
        else:
            values[f.name] = o.parse(o.flag(f.name), getattr(args, f.name), base)
        if len(values[f.name]) == 1:  # what the axes declared below may read (attention)
            base = base.replace(**{f.name: values[f.name][0]})
    check_rank_axes(values, args)
    # Fastest-varying: implementations alternate in the sweep, so machine drift is shared.
    grid = expand_grid(base, **dict(sorted(values.items(), key=lambda item: item[0] == "impl")))
    # An implementation whose model is its file's takes the image size and attention from it
    # unless the command line gave them (guided-diffusion: bench.models.guided_flags.settle).
    sized = getattr(args, "image_size", None) is not None
    placed = getattr(args, "attention", "preset") != "preset"
    grid = [impl.settle(s, sized, placed) for s in grid]
    check_levers(grid, getattr(args, "predict_only", False))
    check_impl(grid, args.timeout)
    grid = [s for s in grid if parallel_pair_ok(s)]
    return [s.replace(repeat=r) for r in range(1, args.repeats + 1) for s in grid]


def with_model(base: BenchSpec, args: argparse.Namespace) -> BenchSpec:
    """`base` with the model its axes are checked for: --impl and --model-config are declared
    below the axes that describe the preset's UNet (image size, attention, the architecture),
    whose parsers check them only for a model that is the preset's. Of several implementations,
    one that is the preset's if any: its specs are refused where the preset cannot run them."""
    if not hasattr(args, "impl"):
        return base
    path = parse_model_config(args.model_config) if hasattr(args, "model_config") else "none"
    models = [base.replace(impl=name, model_config=path) for name in parse_impls(args.impl)]
    return next((m for m in models if m.preset_architecture), models[0])


def check_predict_only(specs: list[BenchSpec]) -> None:
    """A prediction is for a card: --predict-only without --card has nothing to answer."""
    if any(s.predict_only and not s.card for s in specs):
        raise SpecError(
            f"--predict-only needs --card: the card to predict for ({', '.join(cards.CARDS)})."
        )


def add_predict_only(
    parser: argparse.ArgumentParser,
    text: str = "with --card: the predicted time alone, in seconds, nothing measured "
    "(the measured columns stay empty)",
) -> None:
    """--predict-only, as bench.throughput and bench.sampling take it (`text`: its help)."""
    parser.add_argument("--predict-only", action="store_true", help=text)


def check_impl(specs: list[BenchSpec], timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Every implementation asked for is installed and builds every model it is asked for
    (a factory imported, the model run as each spec calls it), before anything runs, within
    `timeout_s`; --model-config belongs to one implementation. Any model but ours is checked in
    a process of its own (bench.sweep.check): it runs the user's code."""
    if any(s.config_file for s in specs) and len({s.impl for s in specs}) > 1:
        raise SpecError(
            "--model-config holds one implementation's arguments: give a single --impl with it."
        )
    # One check per model and the way a spec calls it (a fake forward's cost, once each): the
    # axes that change the model, and the batch, precision and mode of the call.
    models = {
        (
            s.impl,
            s.model_config,
            s.preset,
            *(getattr(s, name) for name in ARCHITECTURE),
            s.image_size,
            s.attention,
            s.checkpointing,
            s.batch,
            s.precision,
            s.sampler == "none",
        ): s
        for s in specs
    }
    for spec in models.values():  # what reads no code of theirs: here
        reason = impl.problem(spec, run=False)
        if reason:
            raise SpecError(reason)
    # The models built and run as the specs call them: any but the preset's UNet.
    theirs = [s for s in models.values() if not s.preset_architecture]
    if theirs:
        check_models(theirs, timeout_s)


# The optimizers whose step torch 2.14.1's DTensor refuses (each seen in its own step on
# FSDP2's sharded parameters), and why.
NOT_ON_DTENSORS = {
    "adamw8bit": "bitsandbytes' kernels have no DTensor sharding rule",
    "adafactor": "its in-place pow_ on a norm needs a placement DTensor cannot keep",
    "prodigy": "it flattens each parameter, which DTensor refuses where the ranks split a "
    "dimension unevenly (a UNet's 3-channel output convolution)",
}


def check_levers(specs: list[BenchSpec], predict_only: bool) -> None:
    """An optimizer whose step DTensor refuses is refused with FSDP2 (NOT_ON_DTENSORS); an
    attention backend this CPU lacks is refused for a run measured here (a prediction for a card
    takes any: the card's own rules decide there); an implementation that never calls torch's
    SDPA has no backend to choose."""
    for spec in specs:
        if spec.parallel == "fsdp" and spec.optimizer in NOT_ON_DTENSORS:
            raise SpecError(
                f"--optimizer {spec.optimizer} does not run on FSDP2's sharded parameters "
                f"(DTensors): {NOT_ON_DTENSORS[spec.optimizer]}. Give --parallel ddp, or "
                "ao-adamw8bit / ao-adamw4bit, whose state shards with the parameters."
            )
        backend = spec.attention_backend
        if backend == "auto":
            continue
        if spec.impl == "guided-diffusion" or (spec.impl == "lucidrains" and not spec.config_file):
            raise SpecError(
                f"--impl {spec.impl} computes attention with einsum, not torch's SDPA: "
                "--attention-backend has nothing to choose there (give auto)."
            )
        if spec.device == "cpu" and backend not in CPU_BACKENDS and not predict_only:
            raise SpecError(
                f"--attention-backend {backend} does not run on the CPU (torch's CPU attention "
                f"has {', '.join(b for b in CPU_BACKENDS if b != 'auto')}); add --predict-only "
                "--card NAME to predict it for a card."
            )


def check_rank_axes(values: dict[str, list], args: argparse.Namespace) -> None:
    """--ranks, --parallel and --grad-sync (parsed), checked against each other, the launch and
    the cards; a harness without them runs one rank."""
    if "ranks" not in values:
        return
    ranks, modes, syncs = values["ranks"], values["parallel"], values["grad_sync"]
    if max(ranks) > 1 and modes == ["none"]:
        raise SpecError(
            f"--ranks {args.ranks} needs --parallel ddp or fsdp: how the ranks share the model."
        )
    if syncs != ["last"] and modes == ["none"]:
        raise SpecError(
            "--grad-sync every needs --parallel ddp or fsdp: one rank exchanges no gradients."
        )
    if args.nnodes < 1 or (args.nnodes > 1 and args.rdzv_endpoint is None):
        raise SpecError(
            f"--nnodes {args.nnodes}: give a count >= 1, and --rdzv-endpoint "
            "host:port when the ranks span machines."
        )
    # Every node runs the same number of ranks, one at least: one rank cannot span two nodes.
    uneven = [r for r in ranks if r % args.nnodes]
    if uneven:
        raise SpecError(
            f"--ranks {uneven[0]} does not split evenly over --nnodes "
            f"{args.nnodes}: each node runs ranks / nnodes of them."
        )
    if args.rdzv_endpoint is not None:
        check_endpoint(args.rdzv_endpoint)


def check_endpoint(endpoint: str) -> None:
    """--rdzv-endpoint as torchrun reads it, with the port given (torchrun would take its
    default for a bare host), and a host this machine can resolve: a bad one is one line now,
    not a rendezvous that times out."""
    import socket

    from torch.distributed.elastic.rendezvous.utils import parse_rendezvous_endpoint

    bad = f"--rdzv-endpoint {endpoint!r}: give host:port, e.g. 10.0.0.1:29400"
    host, colon, port = endpoint.rpartition(":")
    if not colon or not host or not port.isdigit() or "]" in port:
        raise SpecError(f"{bad}.")
    try:
        host, port_number = parse_rendezvous_endpoint(endpoint, default_port=-1)
    except ValueError as exc:
        raise SpecError(f"{bad} ({exc})") from None
    try:
        socket.getaddrinfo(host, port_number)
    except OSError:
        raise SpecError(f"{bad}: host {host!r} is not known here.") from None


def parallel_pair_ok(spec: BenchSpec) -> bool:
    """Ranks > 1 need a way to share the model; one rank exchanges no gradients to time."""
    if spec.parallel == "none":
        return spec.ranks == 1 and spec.grad_sync == "last"
    return True


def check_launch(specs: list[BenchSpec], args: argparse.Namespace) -> None:
    """Ranks are processes started by torchrun, and NCCL needs a card per rank: --inline with
    ranks, or more ranks on this machine than it has cards, is one line."""
    import torch

    nnodes = getattr(args, "nnodes", 1)
    if args.inline and any(launches_ranks(s) for s in specs):
        raise SpecError(
            "--inline runs specs in this one process; --parallel needs a process per rank."
        )
    wanted = max((s.ranks // nnodes for s in specs if s.device.startswith("cuda")), default=0)
    cards = torch.cuda.device_count() if wanted else 0
    if wanted > cards:
        raise SpecError(
            f"--ranks asks for {wanted} ranks on this machine, but it has {cards} "
            "CUDA card(s): one card per rank."
        )


def launch_from_args(args: argparse.Namespace) -> Launch:
    if not hasattr(args, "nnodes"):
        return Launch()
    return Launch(nnodes=args.nnodes, rdzv_endpoint=args.rdzv_endpoint)


def run_cli(
    harness: Harness,
    parser: OneLineParser,
    argv: list[str] | None,
    make_specs: Callable[[argparse.Namespace], list[BenchSpec]] = specs_from_args,
    options: Callable[[argparse.Namespace], dict] | None = None,
) -> list[dict]:
    """Parse, validate every value, run the sweep. `options(args)` gives the harness's settings
    that are not spec axes (JSON-able); every spec's process receives them in its RunContext.
    A reader that closes the pipe early costs no row and no report (ddpm.cli.pipes)."""
    with quiet_closed_pipes():
        return _run_cli(harness, parser, argv, make_specs, options)


def _run_cli(
    harness: Harness,
    parser: OneLineParser,
    argv: list[str] | None,
    make_specs: Callable[[argparse.Namespace], list[BenchSpec]],
    options: Callable[[argparse.Namespace], dict] | None,
) -> list[dict]:
    args = parser.parse_args(argv)
    if getattr(args, "list_cards", False) or getattr(args, "card", None) == LIST_CARDS:
        print(cards.listing())
        return []
    try:
        # The checks run the user's code (a factory's): Ctrl-C, SIGTERM, or a KeyboardInterrupt
        # it raises, is one line and the shell's status for the signal.
        with exit_on_interrupt(
            lambda name: (
                f"Interrupted ({name}) while the specs were checked: nothing ran, "
                "nothing was written."
            )
        ):
            specs = make_specs(args)
            check_launch(specs, args)
            settings = options(args) if options else {}
            out = results_folder(args.out)
            check_writable(out)
    except (SpecError, ResultsError) as exc:
        parser.error(str(exc))
    command = (
        "python -m bench." + harness.name + " " + shlex.join(sys.argv[1:] if argv is None else argv)
    )
    try:
        return run_sweep(
            harness,
            specs,
            out,
            command.strip(),
            inline=args.inline,
            resume=args.resume,
            timeout_s=args.timeout,
            options=settings,
            launch=launch_from_args(args),
        )
    except ResultsError as exc:
        parser.error(str(exc))
