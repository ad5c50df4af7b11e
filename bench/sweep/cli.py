"""The command line every harness shares: the axes as comma lists, validated up front."""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from collections.abc import Callable

from bench.core import Harness
from bench.models import impl
from bench.spec import (
    COMPILE_MODES,
    DEFAULT_BUDGET,
    DEFAULT_CONTEXT_MIB,
    ON_OFF,
    BenchSpec,
    SpecError,
    expand_grid,
    parse_attention,
    parse_budget,
    parse_choices,
    parse_device,
    parse_image_size,
    parse_int_list,
    parse_preset,
)
from bench.sweep.launch import Launch, launches_ranks
from bench.sweep.runner import run_sweep
from bench.tables.results import RUN_FOLDER, ResultsError, check_writable, results_folder
from ddpm.cli.args import ArgumentParser, seed_int
from ddpm.config import GRAD_SYNCS, PRECISIONS, PRESETS, UNetConfig
from ddpm.parallel import PARALLEL

# Bad input gets one line naming the problem and exit status 2, not a usage dump: the same
# parser as ddpm's command lines.
OneLineParser = ArgumentParser


def build_parser(prog: str, description: str, defaults: dict,
                 helps: dict[str, str] | None = None, ranks: bool = True) -> OneLineParser:
    """The shared options; `defaults` and `helps` (by option dest) let a harness say what an
    option means for it, e.g. --steps are the steps trained in bench.loss. `ranks`: the
    data-parallel options, for the harnesses that train."""
    p = OneLineParser(prog=prog, description=description,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    axes = p.add_argument_group("axes (comma lists; the sweep is their product)")
    axes.add_argument("--batch", default=defaults.get("batch", "2"),
                      help="micro-batch sizes, e.g. 1,2,4 (default %(default)s)")
    axes.add_argument("--accum", default=defaults.get("accum", "1"),
                      help="gradient-accumulation steps per optimizer step (default %(default)s)")
    axes.add_argument("--precision", default=defaults.get("precision", "fp32"),
                      help=f"{', '.join(PRECISIONS)} (default %(default)s)")
    axes.add_argument("--attention", default="preset",
                      help="none, preset (the preset's own), or resolutions like 16 or 16+8 "
                           "(default %(default)s)")
    axes.add_argument("--compile", default="off",
                      help=f"torch.compile mode: {', '.join(COMPILE_MODES)} (default %(default)s)")
    axes.add_argument("--checkpointing", default="off",
                      help="gradient checkpointing of UNet blocks: off, on (default %(default)s)")
    axes.add_argument("--impl", default="ddpm",
                      help="ddpm (ours), diffusers (UNet2DModel at the same architecture, trained "
                           "as diffusers' example trains it; optional dependency) "
                           "(default %(default)s)")
    if ranks:
        d = p.add_argument_group("more than one card (torchrun; gloo on CPU, NCCL on CUDA)")
        d.add_argument("--ranks", default="1",
                       help="data-parallel ranks, one process (and card) each; --batch is one "
                            "rank's micro-batch (default %(default)s)")
        d.add_argument("--parallel", default="none",
                       help=f"how ranks share the model: {', '.join(PARALLEL)} (fsdp = FSDP2, "
                            "each ResBlock and attention block sharded) (default %(default)s)")
        d.add_argument("--grad-sync", default="last",
                       help="exchange gradients after the last micro-batch or after every one: "
                            "last, every (default %(default)s)")
        d.add_argument("--nnodes", type=int, default=1,
                       help="machines the ranks span; each runs the same command (default 1)")
        d.add_argument("--rdzv-endpoint", default=None,
                       help="host:port where the machines meet (torchrun's); default: all "
                            "ranks on this machine (torchrun --standalone)")
    g = p.add_argument_group("model, device and run")
    g.add_argument("--preset", default="ddpm-cifar10",
                   help=f"{', '.join(PRESETS)} (default %(default)s)")
    g.add_argument("--image-size", type=int, default=None,
                   help="image side in pixels (default: the preset's)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    g.add_argument("--budget", default=DEFAULT_BUDGET,
                   help="memory budget the fits column answers for (default: an 8 GB card, "
                        "whose CUDA capacity is 7.79 GiB): MiB/GiB (2^20, 2^30 bytes) "
                        "or MB/GB (10^6, 10^9) (default %(default)s)")
    g.add_argument("--cuda-context-mib", type=float, default=DEFAULT_CONTEXT_MIB,
                   help="allowance for the CUDA context off CUDA (on CUDA it is measured), "
                        "added to the prediction: published figures with lazy loading run "
                        "from 256 to 426 MiB (default %(default)g)")
    g.add_argument("--steps", type=int, default=defaults.get("steps", 1),
                   help="measured optimizer steps per spec (default %(default)s)")
    g.add_argument("--warmup", type=int, default=defaults.get("warmup", 1),
                   help="warm-up optimizer steps, timed apart (default %(default)s)")
    g.add_argument("--find-max-batch", action="store_true",
                   help="for each combination of the other axes, search the largest batch that "
                        "fits the budget (doubling, then bisection): measured on CUDA, predicted "
                        "elsewhere; --batch is ignored")
    g.add_argument("--repeats", type=int, default=1,
                   help="run the whole grid this many times, one pass after another, so specs "
                        "next to each other (e.g. --impl ddpm,diffusers) share the machine's "
                        "drift; each pass is its own rows (column repeat) (default 1)")
    g.add_argument("--seed", type=seed_int, default=0,
                   help="seed for weights and data (default 0)")
    g.add_argument("--out", default=RUN_FOLDER,
                   help="results folder (default %(default)s, which git ignores; the committed "
                        "reference tables: --out results)")
    g.add_argument("--resume", action="store_true",
                   help="skip specs that already have an ok or oom row in the CSV")
    g.add_argument("--inline", action="store_true",
                   help="run specs in this process (debugging); default: one process per spec")
    g.add_argument("--timeout", type=float, default=3600.0,
                   help="seconds before a spec's process is stopped (default %(default)s)")
    for action in p._actions:
        if helps and action.dest in helps:
            action.help = helps[action.dest]
    return p


def specs_from_args(args: argparse.Namespace, **extra_axes: list) -> list[BenchSpec]:
    """Every axis value checked before anything runs; SpecError carries the user's line.
    A harness adds its own axes (BenchSpec fields, already parsed) through extra_axes."""
    preset = parse_preset(args.preset)
    image_size = parse_image_size(args.image_size, preset)
    for option, value, minimum in (("--steps", args.steps, 1), ("--warmup", args.warmup, 0),
                                   ("--timeout", args.timeout, 1e-9),
                                   ("--repeats", args.repeats, 1),
                                   ("--cuda-context-mib", args.cuda_context_mib, 0)):
        if not minimum <= value < math.inf:  # NaN fails every comparison, so this too
            raise SpecError(f"{option} {value:g} is not allowed: it must be >= {minimum:g} and "
                            "finite.")
    base = BenchSpec(preset=preset, image_size=image_size, device=parse_device(args.device),
                     seed=args.seed, measure_steps=args.steps, warmup_steps=args.warmup,
                     budget_mib=parse_budget(args.budget), context_mib=args.cuda_context_mib,
                     find_max_batch=args.find_max_batch)
    batches = [1] if args.find_max_batch else parse_int_list("--batch", args.batch)
    attention = parse_attention(args.attention, preset, image_size)
    configs = [base.replace(attention=a).unet_config() for a in attention]
    grid = expand_grid(
        base,
        batch=batches,
        accum=parse_int_list("--accum", args.accum),
        precision=parse_choices("--precision", args.precision, PRECISIONS),
        attention=attention,
        compile=parse_choices("--compile", args.compile, COMPILE_MODES),
        checkpointing=parse_choices("--checkpointing", args.checkpointing, ON_OFF),
        **rank_axes(args),
        **extra_axes,
        # Fastest-varying: implementations alternate in the sweep, so machine drift is shared.
        impl=parse_impl(args.impl, configs),
    )
    grid = [s for s in grid if parallel_pair_ok(s)]
    return [s.replace(repeat=r) for r in range(1, args.repeats + 1) for s in grid]


def parse_impl(text: str, configs: list[UNetConfig]) -> list[str]:
    """ddpm and/or diffusers; diffusers must be installed and able to build every config."""
    values = parse_choices("--impl", text, impl.IMPLS)
    if "diffusers" in values:
        if not impl.diffusers_installed():
            raise SpecError(f"--impl diffusers needs the diffusers package: {impl.INSTALL_HINT}.")
        for config in configs:
            reason = impl.diffusers_unsupported(config)
            if reason:
                raise SpecError(f"--impl diffusers cannot build this model: {reason}.")
    return values


def rank_axes(args: argparse.Namespace) -> dict[str, list]:
    """--ranks, --parallel and --grad-sync, checked against each other, the launch and the
    cards; a harness without them runs one rank."""
    if not hasattr(args, "ranks"):
        return {}
    ranks = parse_int_list("--ranks", args.ranks)
    modes = parse_choices("--parallel", args.parallel, PARALLEL)
    syncs = parse_choices("--grad-sync", args.grad_sync, GRAD_SYNCS)
    if max(ranks) > 1 and modes == ["none"]:
        raise SpecError(f"--ranks {args.ranks} needs --parallel ddp or fsdp: how the ranks share "
                        "the model.")
    if syncs != ["last"] and modes == ["none"]:
        raise SpecError("--grad-sync every needs --parallel ddp or fsdp: one rank exchanges no "
                        "gradients.")
    if args.nnodes < 1 or (args.nnodes > 1 and args.rdzv_endpoint is None):
        raise SpecError(f"--nnodes {args.nnodes}: give a count >= 1, and --rdzv-endpoint "
                        "host:port when the ranks span machines.")
    uneven = [r for r in ranks if r > 1 and r % args.nnodes]
    if uneven:
        raise SpecError(f"--ranks {uneven[0]} does not split evenly over --nnodes "
                        f"{args.nnodes}.")
    return {"ranks": ranks, "parallel": modes, "grad_sync": syncs}


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
        raise SpecError("--inline runs specs in this one process; --parallel needs a process "
                        "per rank.")
    wanted = max((s.ranks // nnodes for s in specs if s.device.startswith("cuda")), default=0)
    cards = torch.cuda.device_count() if wanted else 0
    if wanted > cards:
        raise SpecError(f"--ranks asks for {wanted} ranks on this machine, but it has {cards} "
                        "CUDA card(s): one card per rank.")


def launch_from_args(args: argparse.Namespace) -> Launch:
    if not hasattr(args, "nnodes"):
        return Launch()
    return Launch(nnodes=args.nnodes, rdzv_endpoint=args.rdzv_endpoint)


def run_cli(harness: Harness, parser: OneLineParser, argv: list[str] | None,
            make_specs: Callable[[argparse.Namespace], list[BenchSpec]] = specs_from_args
            ) -> list[dict]:
    """Parse, validate every value, run the sweep. `harness.options(args)` gives its settings
    that are not spec axes (JSON-able); every spec's process receives them in its RunContext."""
    args = parser.parse_args(argv)
    try:
        specs = make_specs(args)
        check_launch(specs, args)
        settings = harness.options(args) if harness.options else {}
        out = results_folder(args.out)
        check_writable(out)
    except (SpecError, ResultsError) as exc:
        parser.error(str(exc))
    command = "python -m bench." + harness.name + " " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    try:
        return run_sweep(harness, specs, out, command.strip(), inline=args.inline,
                         resume=args.resume, timeout_s=args.timeout, options=settings,
                         launch=launch_from_args(args))
    except ResultsError as exc:
        parser.error(str(exc))
