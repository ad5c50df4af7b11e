"""The loss harness: does a configuration change the loss? Its HARNESS: the figures of a row,
the notes and the verdict; the pass is bench/passes/loss.py, the comparisons
bench/tables/curves.py, the command line bench/loss.py."""

from __future__ import annotations

from bench.core import Harness, RunContext
from bench.figure import Figure
from bench.passes.loss import LossOptions, train
from bench.spec import BenchSpec
from bench.tables.curves import compare

# The options every spec trained with (--data-root, --lr, ...), recorded in its row, then what
# its training measured.
FIGURES = (
    Figure("data_root", "", str, source="setting"),
    Figure("lr", "", source="setting"),
    Figure("last_k", "", source="setting"),
    Figure("val_images", "", source="setting"),
    Figure("val_every", "", source="setting"),
    Figure("threads", "", source="setting"),
    Figure("lr_warmup", "", source="setting"),
    Figure("steps_done", "", shown=True),
    # NaN or infinite where the run diverged.
    Figure("final_loss", "", shown=True, unbounded=True),
    Figure("val_loss", "", shown=True, unbounded=True),
    Figure("val_loss_start", "", shown=True, unbounded=True),
    Figure("skipped_steps", "", shown=True),
    Figure("diverged", "", bool, shown=True),
    Figure("diverged_step", ""),
    Figure("train_s", "s"),
    Figure("img_per_s", "img/s", shown=True),
    Figure("curve_path", "", str),
)


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


def measure(spec: BenchSpec, context: RunContext) -> dict:
    return train(spec, context, LossOptions.from_context(context))


HARNESS = Harness(
    name="loss",
    figures=FIGURES,
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
    measure=measure,
)
