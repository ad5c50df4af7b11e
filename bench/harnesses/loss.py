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
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench.core import Harness, RunContext, axes, rank_folder
from bench.measure import cuda
from bench.models.workload import build_trainer
from bench.spec import ARCHITECTURE, BenchSpec, SpecError, common_axes, parse_int_list
from bench.sweep.cli import build_parser, refuse_unused, run_cli, specs_from_args
from ddpm.config import PRESETS
from ddpm.data import DatasetError, load_dataset
from ddpm.objective import Objective, held_out_draws, held_out_loss
from ddpm.schedule import NoiseSchedule

# Options that are not BenchSpec fields reach each spec's process in RunContext.options. Each
# row records them (data_root, lr, last_k, val_images, val_every, threads columns), and --resume
# refuses a CSV whose finished rows were trained with another lr, val_every, threads or root.
# Validation images are pushed through the model this many at a time, whatever the spec's batch:
# the same chunks for every spec, so the same weights give the same number bit for bit.
VAL_CHUNK = 32
# The validation draws come from their own generator, seeded apart from the trainer's (which is
# seeded with the spec's seed), so the validation noise is not a copy of a training draw.
VAL_SEED_OFFSET = 1_000_003
# Accumulation (or ranks) must not change the curve beyond float rounding: they change only the
# order in which per-image gradients are summed. The relative tolerance per 200 steps, growing
# linearly with the steps, is 3x to 8x the worst split measured (docs/loss.md, "Tolerances").
ACCUM_TOLERANCE = {"fp32": 1e-4, "tf32": 1e-2, "fp16": 3e-2, "bf16": 3e-2}
TOLERANCE_STEPS = 200


def accum_tolerance(precision: str, device: str, steps: int) -> float:
    if precision == "tf32" and not device.startswith("cuda"):
        precision = "fp32"  # TF32 is a CUDA mode; elsewhere the trainer runs plain fp32
    return ACCUM_TOLERANCE[precision] * max(1.0, steps / TOLERANCE_STEPS)


@dataclass(frozen=True)
class LossOptions:
    """What this harness needs beyond the spec; it reaches each spec in RunContext.options."""

    data_root: str = "data"
    lr: float = 1e-3  # AdamW; ddpm's 2e-4 is for 35M parameters and 800k steps, tiny learns faster
    last_k: int = 20
    val_images: int = 256
    val_every: int = 50
    threads: int = 1
    lr_warmup: int = 0  # learning-rate warm-up steps, linear from 0

    @classmethod
    def from_context(cls, context: RunContext) -> LossOptions:
        return cls(**context.options) if context.options else cls()


# ----- the report ---------------------------------------------------------------------------------


def verdict(row: dict) -> str | None:
    """Only rows that need a word: a failure or a divergence."""
    what = f"batch {row['batch']} x accum {row['accum']} ({row['precision']})"
    if row["status"] != "ok":
        return f"{what}: {row['status']} ({row['error']})."
    if row.get("diverged"):
        return (
            f"{what} DIVERGED: the loss became NaN or inf at optimizer step "
            f"{row['diverged_step']}; training stopped there."
        )
    return None


def read_curve(path: str | Path) -> list[float]:
    with open(path, newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def max_relative_difference(a: list[float], b: list[float]) -> float:
    """max over steps of |a - b| / |a|, on the steps both curves have."""
    worst = 0.0
    for x, y in zip(a, b):
        if not (math.isfinite(x) and math.isfinite(y)):
            return math.inf  # a diverged step is no rounding difference
        worst = max(worst, abs(x - y) / abs(x) if x else (0.0 if y == 0 else math.inf))
    return worst


def _percent(value: float, reference: float) -> str:
    if not (math.isfinite(value) and math.isfinite(reference)) or reference == 0:
        return "n/a"
    return f"{(value - reference) / abs(reference) * 100:+.2f}%"


def _others(row: dict, varying: list[str], skip: tuple[str, ...]) -> str:
    """The row's other axes that vary in this run (the report says the fixed ones once)."""
    shown = ", ".join(f"{a} {row[a]}" for a in varying if a not in skip)
    return f" ({shown})" if shown else ""


def _against(ok: list[dict], axis: str, reference: str, varying: list[str]) -> list[str]:
    """Each row against the row with `axis` = reference and every other axis equal."""
    others = [a for a in axes() if a not in (axis, "repeat", "effective_batch")]
    groups: dict[tuple, list[dict]] = {}
    for r in ok:
        groups.setdefault(tuple(r.get(a) for a in others), []).append(r)
    sentences = []
    for group in groups.values():
        refs = [r for r in group if r[axis] == reference]
        if not refs:
            continue
        ref, ref_curve = refs[0], read_curve(refs[0]["curve_path"])
        for r in group:
            if r[axis] == reference:
                continue
            diff = max_relative_difference(ref_curve, read_curve(r["curve_path"]))
            skipped = f"; {r['skipped_steps']:g} skipped step(s)" if axis == "precision" else ""
            sentences.append(
                f"{axis} {r[axis]} vs {reference}{_others(r, varying, (axis,))}: final loss "
                f"{r['final_loss']:.6g} vs {ref['final_loss']:.6g} "
                f"({_percent(r['final_loss'], ref['final_loss'])}), val loss "
                f"{r['val_loss']:.6g} vs {ref['val_loss']:.6g} "
                f"({_percent(r['val_loss'], ref['val_loss'])}); max relative loss difference "
                f"{diff:.2e} over the curve{skipped}."
            )
    return sentences


# How one optimizer step's images are split: across ranks, into micro-batches, exchanged when.
SPLIT_AXES = ("ranks", "parallel", "grad_sync", "batch", "accum")


def _split(row: dict) -> str:
    ranks = "" if row["parallel"] == "none" else f"{row['ranks']} rank(s) {row['parallel']} x "
    sync = "" if row["grad_sync"] == "last" else f" (gradients synced {row['grad_sync']})"
    return f"{ranks}batch {row['batch']} x accum {row['accum']}{sync}"


def compare(rows: list[dict], context: RunContext) -> list[str]:
    ok = [r for r in rows if r["status"] == "ok" and r.get("curve_path")]
    varying = [a for a in axes() if len({r.get(a) for r in ok}) > 1]
    sentences = []
    # What is not an axis, said once: the options every spec of this run trained with.
    for setup in sorted({(r["dataset"], r["val_images"], r["lr"], r["threads"]) for r in ok}):
        sentences.append(
            f"Trained on {setup[0]} ({setup[1]:g} validation images) with AdamW "
            f"lr {setup[2]:g}, {setup[3]:g} CPU thread(s) per spec."
        )
    # 1. Accumulation: rows equal in every axis but batch/accum, with the same effective batch.
    groups: dict[tuple, list[dict]] = {}
    for r in ok:
        key = tuple(
            r.get(a)
            for a in (
                "preset",
                *ARCHITECTURE,
                "image_size",
                "effective_batch",
                "precision",
                "attention",
                "compile",
                "checkpointing",
                "device",
                "impl",
                "model_config",
            )
        )
        groups.setdefault(key, []).append(r)
    for group in groups.values():
        if len(group) < 2:
            continue
        # Reference: one rank if there is one, and the least accumulation.
        group = sorted(group, key=lambda r: (r["ranks"], r["accum"]))
        ref, ref_curve = group[0], read_curve(group[0]["curve_path"])
        dropout = (
            PRESETS[ref["preset"]].dropout
            if ref.get("dropout", "preset") == "preset"
            else float(ref["dropout"])
        )
        for r in group[1:]:
            curve = read_curve(r["curve_path"])
            steps = min(len(curve), len(ref_curve))
            tolerance = accum_tolerance(ref["precision"], ref["device"], steps)
            diff = max_relative_difference(ref_curve, curve)
            if diff <= tolerance and len(curve) == len(ref_curve):
                answer = "equal within float rounding"
            else:
                answer = "DIFFERENT: accumulation changed the loss curve"
                if dropout:  # the masks are drawn per micro-batch from the global generator
                    answer += (
                        f" (expected here: {ref['preset']} trains with dropout {dropout:g}, "
                        "whose masks differ with the micro-batch split; --dropout 0 or "
                        "--preset tiny has none)"
                    )
            lengths = (
                ""
                if len(curve) == len(ref_curve)
                else f" (one curve stops early: {len(ref_curve)} vs {len(curve)} steps)"
            )
            split = (
                "Accumulation"
                if ref["ranks"] == r["ranks"] == 1 and ref["parallel"] == r["parallel"]
                else "Ranks and accumulation"
            )
            sentences.append(
                f"{split}, effective batch {ref['effective_batch']}"
                f"{_others(ref, varying, SPLIT_AXES)}: {_split(r)} vs {_split(ref)}: max relative "
                f"loss difference {diff:.2e} over {steps} steps{lengths} — {answer} (tolerance "
                f"{tolerance:.2g} for {ref['precision']} at {steps} steps); final loss "
                f"{r['final_loss']:.6g} vs {ref['final_loss']:.6g}, val loss "
                f"{r['val_loss']:.6g} vs {ref['val_loss']:.6g}."
            )
    # 2. Precision against fp32, 3. attention against none: rows equal in every other axis.
    sentences += _against(ok, "precision", "fp32", varying)
    sentences += _against(ok, "attention", "none", varying)
    return sentences


# ----- one spec -----------------------------------------------------------------------------------


def validation_draws(
    images: torch.Tensor, timesteps: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps and noise for the held-out images (ddpm.objective.held_out_draws), the same for
    every spec with this seed."""
    return held_out_draws(images, timesteps, seed + VAL_SEED_OFFSET)


def validation_loss(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    images: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    device: torch.device,
    objective: Objective | None = None,
) -> float:
    """The training objective (L_simple, or the implementation's own: the Trainer's) on fixed
    (images, t, noise) (ddpm.objective.held_out_loss), in fp32 whatever the training precision,
    in chunks of VAL_CHUNK: the same weights give the same number."""
    chunks = zip(images.split(VAL_CHUNK), t.split(VAL_CHUNK), noise.split(VAL_CHUNK))
    return held_out_loss(
        model,
        schedule.to(device),
        ((x0.to(device), tt.to(device), eps.to(device)) for x0, tt, eps in chunks),
        precision="fp32",
        objective=objective,
    )


def is_diverged(loss: float) -> bool:
    """NaN or inf: the run has left the numbers; nothing after it means anything."""
    return not math.isfinite(loss)


def final_loss(losses: list[float], last_k: int) -> float:
    tail = losses[-last_k:]
    return sum(tail) / len(tail) if tail else math.nan


def curve_dir(spec: BenchSpec, context: RunContext) -> Path:
    return rank_folder(Path(context.out) / "loss" / context.run_id / spec.name)


def measure(spec: BenchSpec, context: RunContext, options: LossOptions | None = None) -> dict:
    from torch.utils.tensorboard import SummaryWriter  # slow to import: only where it is used

    opts = options or LossOptions.from_context(context)
    torch.set_num_threads(opts.threads)
    device = cuda.resolve(spec.device)
    cuda.start(device, spec.precision)
    unet = spec.unet_config()
    data = load_dataset(
        spec.dataset, unet.image_size, unet.in_channels, root=opts.data_root, seed=spec.seed
    )
    schedule = NoiseSchedule.linear()
    # The spec's own TrainConfig (grad_sync included), with this harness's learning rate.
    trainer = build_trainer(
        spec, device, schedule=schedule, lr=opts.lr, lr_warmup_steps=opts.lr_warmup
    )
    val_images = data.validation()[: opts.val_images]
    val_t, val_noise = validation_draws(val_images, schedule.timesteps, spec.seed)

    def validate() -> float:
        return validation_loss(
            trainer.model,
            trainer.schedule,
            val_images,
            val_t,
            val_noise,
            device,
            trainer.objective,
        )

    folder = curve_dir(spec, context)
    folder.mkdir(parents=True, exist_ok=True)
    curve_path = folder / "curve.csv"
    losses: list[float] = []
    diverged_step = None
    train_s = 0.0
    val_start = val_end = math.nan
    writer = SummaryWriter(log_dir=str(folder))
    try:
        val_start = validate()
        writer.add_scalar("val/loss", val_start, 0)
        batches = data.batches(spec.effective_batch, seed=spec.seed)
        with curve_path.open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["step", "loss", "grad_norm", "lr", "skipped", "val_loss"])
            for step in range(1, spec.measure_steps + 1):
                x0 = next(batches)
                start = time.perf_counter()
                stats = trainer.step(x0)
                loss, grad_norm = float(stats.loss), float(stats.grad_norm)  # syncs the device
                train_s += time.perf_counter() - start
                losses.append(loss)
                diverged = is_diverged(loss)
                last = step == spec.measure_steps or diverged
                val = ""
                if last or (opts.val_every and step % opts.val_every == 0):
                    val = val_end = validate()
                    writer.add_scalar("val/loss", val, step)
                    diverged = diverged or is_diverged(val)
                out.writerow(
                    [
                        step,
                        repr(loss),
                        repr(grad_norm),
                        repr(stats.lr),
                        int(stats.skipped),
                        "" if val == "" else repr(val),
                    ]
                )
                for tag, value in (
                    ("train/loss", loss),
                    ("train/grad_norm", grad_norm),
                    ("train/lr", stats.lr),
                    ("train/skipped", int(stats.skipped)),
                ):
                    writer.add_scalar(tag, value, step)
                if diverged:
                    diverged_step = step
                    break
    finally:
        writer.close()
    k = min(opts.last_k, len(losses))
    return {
        "data_root": opts.data_root,
        "lr": opts.lr,
        "last_k": k,
        "val_images": val_images.shape[0],
        "val_every": opts.val_every,
        "threads": opts.threads,
        "lr_warmup": opts.lr_warmup,
        "steps_done": len(losses),
        "final_loss": final_loss(losses, k),
        "val_loss": val_end,
        "val_loss_start": val_start,
        "skipped_steps": trainer.skipped_steps,
        "diverged": diverged_step is not None,
        "diverged_step": diverged_step,
        "train_s": train_s,
        "img_per_s": spec.effective_batch * len(losses) / train_s if train_s else None,
        "curve_path": str(curve_path),
    }


# ----- the command line ---------------------------------------------------------------------------


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


HARNESS = Harness(
    name="loss",
    figure_columns=[
        "data_root",
        "lr",
        "last_k",
        "val_images",
        "val_every",
        "threads",
        "lr_warmup",
        "steps_done",
        "final_loss",
        "val_loss",
        "val_loss_start",
        "skipped_steps",
        "diverged",
        "diverged_step",
        "train_s",
        "img_per_s",
        "curve_path",
    ],
    display_columns=[
        "status",
        "steps_done",
        "final_loss",
        "val_loss",
        "val_loss_start",
        "skipped_steps",
        "diverged",
        "img_per_s",
    ],
    notes=[
        "Losses are L_simple (Ho et al. 2020, eq. 14): mean squared error of the predicted "
        "noise, per pixel, dimensionless. final_loss: mean training loss of the last last_k "
        "optimizer steps (fewer if the run is shorter). val_loss: the same loss on val_images "
        "held-out images (at most --val-images), each with a timestep (evenly spread over "
        "0..T-1) and noise drawn once from a seeded generator, computed in fp32 with the raw "
        "(not EMA) weights after the last step, so every spec is measured on the same draws; "
        "val_loss_start: the same before the first step (equal for every spec: the same "
        "initial weights).",
        "skipped_steps: fp16 steps the gradient scaler skipped for inf/NaN gradients. "
        "diverged: the training or validation loss became NaN or inf; training stops at that "
        "step (diverged_step). steps_done: optimizer steps trained. train_s: seconds of "
        "training, validation excluded; img_per_s = effective_batch x steps_done / train_s "
        "(informative: each step's loss is read, a device sync). lr: AdamW learning rate "
        "after --lr-warmup linear warm-up steps; gradients clipped at norm 1.",
        "Every spec starts from the same weights (seeded) and sees the same images in the "
        "same order: batches of effective_batch images, split into accum micro-batches. "
        "Curves: curve_path (CSV: step, loss, grad_norm, lr, skipped, val_loss) and "
        "TensorBoard scalars in the same folder (tensorboard --logdir <out>/loss).",
        "Options recorded in each row: dataset and data_root (absolute path; unused by "
        "digits), lr, last_k (steps averaged), val_images (held-out images used), val_every "
        "(steps between validation points in the curve; 0: start and end only), threads "
        "(CPU threads each spec trained with, --threads; the environment line gives the "
        "sweep process's own count).",
    ],
    verdict=verdict,
    compare=compare,
    figure_kinds={"data_root": str, "diverged": bool, "curve_path": str},
    unbounded_columns=["final_loss", "val_loss", "val_loss_start"],  # NaN or inf: diverged
    measure=measure,
    options=loss_options,
)


def main(argv: list[str] | None = None) -> list[dict]:
    return run_cli(HARNESS, build_loss_parser(), argv, make_specs)


if __name__ == "__main__":
    main(sys.argv[1:])
