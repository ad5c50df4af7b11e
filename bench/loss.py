"""python -m bench.loss: does a configuration change the loss?

Trains each spec for --steps optimizer steps on real data (digits by default: bundled with
scikit-learn, no network; mnist, cifar10 or an image folder when present under --data-root) from
the same initial weights, the same data order and the same seed. Writes each spec's loss curve to
CSV and to TensorBoard scalars in <out>/loss/<run_id>/<spec>/, and a table of the final training
loss (mean of the last --last-k steps), the validation loss (held-out images with fixed timesteps
and noise, in fp32, so it is comparable across specs), skipped fp16 steps and a divergence flag.

Specs with the same effective batch are compared: accumulation must not change the curve beyond
float rounding. Specs that differ only in precision are compared with fp32: the measured
difference is reported, whatever it is.

  python -m bench.loss                                   # 8x1 vs 2x4, fp32 vs bf16, digits
  python -m bench.loss --dataset mnist --data-root data --preset ddpm-mnist --steps 500
  tensorboard --logdir runs/bench/loss                   # the curves under --out's default"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import asdict
from pathlib import Path

from bench.harnesses.loss import HARNESS
from bench.parsers import SpecError, parse_int_list
from bench.passes.loss import LossOptions
from bench.spec import BenchSpec, common_axes
from bench.sweep.cli import build_parser, refuse_unused, run_cli, specs_from_args
from ddpm.data import DatasetError, load_dataset


def make_specs(args) -> list[BenchSpec]:
    """The shared axes plus the dataset; every option checked, the dataset loaded once, before
    anything runs or is written."""
    if args.find_max_batch:
        raise SpecError("--find-max-batch is not allowed here: it belongs to bench.memory.")
    refuse_unused(args, "loss", ("card", "budget", "cuda_context_mib"))
    for option, value, minimum in (
        ("--last-k", args.last_k, 1),
        ("--val-images", args.val_images, 1),
        ("--val-every", args.val_every, 0),
        ("--threads", args.threads, 1),
    ):
        if value < minimum:
            raise SpecError(f"{option} {value} is not allowed: it must be >= {minimum}.")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise SpecError(f"--lr {args.lr:g} is not allowed: it must be a positive number.")
    if args.lr_warmup < 0:
        raise SpecError(f"--lr-warmup {args.lr_warmup} is not allowed: it must be >= 0.")
    if args.warmup:
        raise SpecError(
            f"--warmup {args.warmup}: this harness times no steps to warm up; "
            "learning-rate warm-up is --lr-warmup."
        )
    specs = []
    for batch, accum, total in batch_accum_pairs(args):
        for spec in specs_from_args(
            argparse.Namespace(**{**vars(args), "batch": str(batch), "accum": str(accum)})
        ):
            if total is not None:  # the ranks share the effective batch too
                if total % (spec.ranks * batch):
                    raise SpecError(
                        f"--ranks {spec.ranks} x --batch {batch} does not divide "
                        f"--effective-batch {total}."
                    )
                spec = spec.replace(accum=total // (spec.ranks * batch))
            specs.append(spec)
    root = str(Path(args.data_root).resolve())
    # One load here: a missing dataset is one line and exit 2, not a row of errors per spec.
    # A spec's image size and channels decide the conversion; load each distinct pair once.
    for size, channels in sorted({(s.image_size, s.unet_config().in_channels) for s in specs}):
        try:
            load_dataset(
                args.dataset, size, channels, root=root, download=args.download, seed=args.seed
            )
        except DatasetError as exc:
            raise SpecError(f"--dataset {args.dataset}: {exc}") from None
    if args.resume:
        _check_resume(Path(args.out) / "loss.csv", specs, LossOptions(**loss_options(args)))
    return specs


def loss_options(args) -> dict:
    return asdict(
        LossOptions(
            data_root=str(Path(args.data_root).resolve()),
            lr=args.lr,
            last_k=args.last_k,
            val_images=args.val_images,
            val_every=args.val_every,
            threads=args.threads,
            lr_warmup=args.lr_warmup,
        )
    )


def batch_accum_pairs(args) -> list[tuple[int, int, int | None]]:
    """(batch, accum, effective batch). --accum given: the product of --batch and --accum, as
    every harness sweeps. Otherwise each --batch b is paired with accum E / b for each
    --effective-batch E (default 8), so the default --batch 8,2 gives exactly the pair the
    question is about: 8 x 1 and 2 x 4 (with --ranks, E / (ranks x b))."""
    batches = parse_int_list("--batch", args.batch)
    if args.accum is not None:
        if args.effective_batch is not None:
            raise SpecError("--accum and --effective-batch are not allowed together: give one.")
        return [(b, a, None) for b in batches for a in parse_int_list("--accum", args.accum)]
    pairs = []
    for total in parse_int_list("--effective-batch", args.effective_batch or "8"):
        for b in batches:
            if total % b:
                raise SpecError(
                    f"--batch {b} does not divide --effective-batch {total}: give "
                    "batches that divide it, or --accum."
                )
            pairs.append((b, total // b, total))
    return pairs


def _check_resume(path: Path, specs: list[BenchSpec], options: LossOptions) -> None:
    """spec_id knows the axes, not these options: refuse to mix rows trained with others."""
    if not path.exists():
        return
    ids = {s.spec_id for s in specs}
    asked = {
        "lr": options.lr,
        "val_every": options.val_every,
        "threads": options.threads,
        "data_root": options.data_root,
        "lr_warmup": options.lr_warmup,
    }
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get("status") != "ok" or row.get("spec_id") not in ids:
                continue
            for name, value in asked.items():
                # A row from before --lr-warmup existed trained without warm-up.
                stored = row.get(name) or ("0" if name == "lr_warmup" else "")
                same = stored == value if isinstance(value, str) else float(stored) == value
                if not same:
                    raise SpecError(
                        f"--resume: {path} holds {row['spec_id']} trained with "
                        f"--{name.replace('_', '-')} {stored}, not {value}; pass "
                        "the same options or another --out."
                    )


def build_loss_parser():
    parser = build_parser(
        "python -m bench.loss",
        __doc__,
        defaults={
            "batch": "8,2",
            "accum": None,
            "precision": "fp32,bf16",
            "steps": 200,
            "warmup": 0,
        },
        # The shared help speaks of timed runs; here steps are trained.
        helps={
            "steps": "optimizer steps trained per spec (default %(default)s)",
            "warmup": "not used here (no step is timed); see --lr-warmup",
            "accum": "gradient-accumulation steps per optimizer step; the sweep is then "
            "--batch x --accum (default: from --effective-batch)",
        },
        axes=(*common_axes(), "dataset"),
    )
    parser.set_defaults(preset="tiny")
    g = parser.add_argument_group("loss")
    g.add_argument(
        "--effective-batch",
        default=None,
        help="images per optimizer step, comma list: each --batch b runs with accum "
        "E / b (default 8 when --accum is not given)",
    )
    g.add_argument(
        "--data-root",
        default="data",
        help="where mnist/cifar10 live, or the image folder (default %(default)s)",
    )
    g.add_argument(
        "--download", action="store_true", help="download mnist/cifar10 into --data-root first"
    )
    g.add_argument(
        "--lr-warmup",
        type=int,
        default=LossOptions.lr_warmup,
        help="learning-rate warm-up steps, linear from 0 (default %(default)s)",
    )
    g.add_argument(
        "--lr", type=float, default=LossOptions.lr, help="AdamW learning rate (default %(default)g)"
    )
    g.add_argument(
        "--last-k",
        type=int,
        default=LossOptions.last_k,
        help="final_loss is the mean of the last K steps (default %(default)s)",
    )
    g.add_argument(
        "--val-images",
        type=int,
        default=LossOptions.val_images,
        help="held-out images for val_loss, at most (default %(default)s)",
    )
    g.add_argument(
        "--val-every",
        type=int,
        default=LossOptions.val_every,
        help="validation loss every N steps into the curve, 0: only at the start and "
        "end (default %(default)s)",
    )
    g.add_argument(
        "--threads",
        type=int,
        default=LossOptions.threads,
        help="CPU threads per spec (torch.set_num_threads; default %(default)s: "
        "bf16 CPU results depend on the thread count, and this harness is "
        "not timed)",
    )
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    return run_cli(HARNESS, build_loss_parser(), argv, make_specs, options=loss_options)


if __name__ == "__main__":
    main(sys.argv[1:])
