"""The sampling harness: how fast does the model sample, and how well? Its HARNESS: the figures
of a row, the notes and the verdict; the passes are bench/passes/sampling.py, the command line
bench/sampling.py."""

from __future__ import annotations

import torch

from bench import cards
from bench.cards import CARDS
from bench.core import Harness, RunContext
from bench.figure import Figure
from bench.passes.sampling import measured
from bench.predict.denoise import largest_sampling_batch, memory_figures
from bench.predict.fit import SEARCH_LIMITS
from bench.predict.runtime import sampling_figures
from bench.tables.ratios import impl_ratios
from bench.tables.results import format_value

FIGURES = (
    Figure("measured_steps", "", shown=True, verdict="measured rows"),
    Figure("step_s", "s", shown=True, verdict="measured rows"),
    Figure("step_s_min", "s"),
    Figure("step_s_max", "s"),
    Figure("step_ms_per_image", "ms", shown=True, verdict="measured rows"),
    # A full run, projected from the timed steps
    Figure("projected_full_run_s", "s", source="projected", shown=True, verdict="measured rows"),
    Figure("projected_s_per_image", "s", source="projected", shown=True, verdict="measured rows"),
    # img_per_s before: images per second of complete sampling are projected, not measured
    Figure(
        "projected_img_per_s",
        "img/s",
        source="projected",
        was=("img_per_s",),
        shown=True,
        verdict="measured rows",
    ),
    Figure("warmup_s", "s", shown=True),
    Figure("peak_alloc_mib", "MiB", shown=True, cuda=True),
    Figure("peak_reserved_mib", "MiB", cuda=True),
    # With --checkpoint: the samples' quality (bench.measure.quality)
    Figure("quality_samples", ""),
    Figure("frechet_digits", "", shown=True),
    Figure("frechet_digits_real", "", shown=True),
    # The time prediction for the row's --card (bench.predict.runtime); never a measurement.
    Figure("predicted_step_s", "s", source="predicted", shown=True, verdict="predicted rows"),
    Figure("predicted_full_run_s", "s", source="predicted", shown=True, verdict="predicted rows"),
    Figure(
        "predicted_img_per_s", "img/s", source="predicted", shown=True, verdict="predicted rows"
    ),
    # The full run's likely range (the public training runs' leave-one-out band); the verdict
    # reads it only where a row has it: rows written before it have none.
    Figure("predicted_full_run_s_low", "s", source="predicted", shown=True),
    Figure("predicted_full_run_s_high", "s", source="predicted", shown=True),
    # The memory prediction for the row's --card (bench.predict.denoise), read by the verdict
    # where a row has it (rows written before it have none): the sampling pass alone, or, with a
    # train_batch, the one ddpm.cli.train runs next to its training state.
    Figure("train_batch", "", source="setting", shown=True),
    Figure("target_sm", "", source="predicted"),
    Figure("predicted_tensors_mib", "MiB", source="predicted"),
    Figure("predicted_alloc_mib", "MiB", source="predicted"),
    Figure("predicted_reserved_mib", "MiB", source="predicted"),
    Figure("cublas_workspace_mib", "MiB", source="predicted"),
    Figure("cudnn_workspace_mib", "MiB", source="predicted"),
    Figure("context_mib", "MiB", source="predicted"),
    Figure("predicted_cuda_mib", "MiB", source="predicted", shown=True),
    Figure("budget_mib", "MiB", source="predicted"),
    Figure("fits", "", bool, source="predicted", shown=True),
    Figure("headroom_mib", "MiB", source="predicted", signed=True),
    # The prediction's error where a CUDA card measured the same pass alone
    Figure("alloc_error_pct", "%", cuda=True, signed=True),
    # --find-max-batch: the row's batch is the largest that fits, predicted, and its upper
    # bound, were the allocator to give back its unused cached segments before failing
    Figure("max_batch_source", "", str, source="setting", shown=True),
    Figure("max_batch_released", "", source="predicted", shown=True),
)


def verdict(row: dict) -> str | None:
    if row["status"] != "ok":
        return f"{row['spec_id']}: {row['status']} ({row['error']})."
    name = "DDPM" if row["sampler"] == "ddpm" else "DDIM"
    if row.get("impl", "ddpm") != "ddpm":
        name = f"{name} ({row['impl']} UNet)"
    v = {k: format_value(row.get(k)) for k in row}
    # What the card does not run as predicted (bench.cards), as bench.memory's verdict says it.
    caveats = "".join(
        f" {c}." for c in cards.caveats(row.get("card") or "", row["precision"], row["compile"])
    )
    if row.get("max_batch_source"):
        return largest_batch_words(row, name) + caveats
    if HARNESS.predict_only(row):
        likely = ""
        if row.get("predicted_full_run_s_low") is not None:
            likely = f", likely {v['predicted_full_run_s_low']}-{v['predicted_full_run_s_high']} s"
        return (
            f"{name} {row['sampling_steps']} steps, batch {row['batch']}, {row['precision']} "
            f"on {CARDS[row['card']].name}: PREDICTED {v['predicted_step_s']} s per denoising "
            f"step, a full run {v['predicted_full_run_s']} s{likely}, "
            f"{v['predicted_img_per_s']} images/s{memory_words(row)} (nothing measured)."
            f"{caveats}"
        )
    text = (
        f"{name} {row['sampling_steps']} steps, batch {row['batch']}, {row['precision']}, "
        f"compile {row['compile']}: {v['step_s']} s per denoising step "
        f"({v['step_ms_per_image']} ms per image); a full run is projected at "
        f"{v['projected_full_run_s']} s, {v['projected_s_per_image']} s per image, "
        f"{v['projected_img_per_s']} images/s (from {row['measured_steps']} timed steps)."
    )
    if row.get("frechet_digits") is not None:
        text += (
            f" Frechet distance to real digits over {row['quality_samples']} samples: "
            f"{v['frechet_digits']} (as many real held-out digits: "
            f"{v['frechet_digits_real']})."
        )
    if row.get("predicted_step_s") is not None:
        text += (
            f" PREDICTED on {CARDS[row['card']].name}: {v['predicted_step_s']} s per denoising "
            f"step{memory_words(row)}.{caveats}"
        )
    if row.get("alloc_error_pct") is not None:
        text += (
            f" Measured on {row['device']}: {v['peak_alloc_mib']} MiB allocated (the predicted "
            f"allocation off by {row['alloc_error_pct']:+.1f}%)."
        )
    return text


def where_words(row: dict) -> str:
    """Where the pass runs: alone, or after ddpm.cli.train's last step at its training batch."""
    if row.get("train_batch") is None:
        return "alone"
    return (
        f"inside ddpm.cli.train after its last step at training batch {row['train_batch']:g} "
        f"in {row['precision']} (its weights, gradients, AdamW state, EMA and held-out batches "
        "on the card; the pass in fp32 from the EMA weights, as its ddim_sample runs it)"
    )


def memory_words(row: dict) -> str:
    """The memory prediction in words, where the row has one ("" where it has none)."""
    if row.get("predicted_cuda_mib") is None:
        return ""
    v = {k: format_value(row.get(k)) for k in row}
    answer = "fits" if row["fits"] else "does NOT fit"
    return (
        f"; the pass {where_words(row)} {answer} in {row['budget_mib'] / 1024:.3g} GiB: "
        f"{v['predicted_cuda_mib']} MiB ({v['predicted_reserved_mib']} MiB reserved by the "
        f"allocator + {v['cudnn_workspace_mib']} MiB cuDNN workspace + {v['context_mib']} MiB "
        f"CUDA context), headroom {v['headroom_mib']} MiB"
    )


def largest_batch_words(row: dict, name: str) -> str:
    """A --find-max-batch row: the largest sampling batch, predicted."""
    limit = SEARCH_LIMITS["predicted"]
    released = ""
    if row.get("max_batch_released") is not None:
        released = (
            f"; up to {row['max_batch_released']:,.0f} where CUDA's allocator gives back its "
            "unused cached segments before it fails, which the prediction does not count on"
        )
    best = f"{row['batch']:,}"
    if row["batch"] >= limit:
        best = f"at least {best} (the search stops at {limit:,})"
    return (
        f"Largest sampling batch that fits {row['budget_mib'] / 1024:.3g} GiB on "
        f"{CARDS[row['card']].name} ({name} {row['sampling_steps']} steps, {row['precision']}, "
        f"{where_words(row)}): {best} (PREDICTED: {format_value(row['predicted_cuda_mib'])} MiB "
        f"there, {format_value(row['predicted_reserved_mib'])} MiB of it reserved for "
        f"{format_value(row['predicted_alloc_mib'])} MiB allocated; nothing measured){released}."
    )


def measure(spec, context: RunContext | None = None) -> dict:
    train_batch = (context.options if context is not None else {}).get("train_batch")
    if spec.find_max_batch:
        return max_batch_row(spec, train_batch)
    prediction = {}
    if spec.card:
        card = CARDS[spec.card]
        prediction = {
            **sampling_figures(sampled(spec, train_batch), card),
            **memory_figures(spec, card, train_batch),
            "train_batch": train_batch,
        }
    if spec.predict_only:
        return prediction
    figures = {**measured(spec, context), **prediction}
    if figures.get("peak_alloc_mib") is not None and spec.card and train_batch is None:
        predicted, found = figures["predicted_alloc_mib"], figures["peak_alloc_mib"]
        figures["alloc_error_pct"] = 100.0 * (predicted - found) / found
    return figures


def max_batch_row(spec, train_batch: int | None) -> dict:
    """The row of --find-max-batch: the largest sampling batch that fits the --card, predicted,
    with its memory and time figures there."""
    card = CARDS[spec.card]
    best, figures = largest_sampling_batch(spec, card, train_batch)
    if best == 0:
        where = "alone" if train_batch is None else f"inside training at batch {train_batch}"
        raise torch.OutOfMemoryError(
            f"not even sampling batch 1 fits {spec.budget_mib:g} MiB {where} (predicted)"
        )
    return {
        "batch": best,
        "max_batch_source": "predicted",
        "train_batch": train_batch,
        **figures,
        **sampling_figures(sampled(spec, train_batch).replace(batch=best), card),
    }


def sampled(spec, train_batch: int | None):
    """The spec as its sampling pass runs: inside ddpm.cli.train in fp32 whatever the training
    precision (its ddim_sample call takes none)."""
    return spec if train_batch is None else spec.replace(precision="fp32")


HARNESS = Harness(
    name="sampling",
    figures=FIGURES,
    key_axes=("sampler", "sampling_steps"),
    notes=[
        "One denoising step = one UNet call on the whole batch + the sampler's update "
        "(ddpm_step, or ddim_step with eta 0), in inference mode. step_s: median seconds of "
        "the measured_steps steps timed (step_s_min/max in the CSV), each after a device "
        "sync; warmup_s: the warm-up steps together, compilation included. "
        "step_ms_per_image = 1000 x step_s / batch.",
        "PROJECTED, not measured: projected_full_run_s = step_s x sampling_steps (one "
        "complete run for the batch; ddpm: all T timesteps; a step costs the same at every "
        "t); projected_s_per_image = projected_full_run_s / batch; projected_img_per_s = "
        "batch / projected_full_run_s, images per second of complete sampling.",
        "bf16/fp16: autocast around the UNet call, the sampler's update in fp32; tf32: TF32 "
        "matmuls on CUDA, plain fp32 elsewhere. peak_alloc_mib / peak_reserved_mib: CUDA "
        "caching allocator peaks over the timed steps, MiB = 2^20 bytes (empty on CPU).",
        "frechet_digits (only with --checkpoint, a model trained on digits): Frechet distance "
        "between features of quality_samples images drawn with the full sampler and of real "
        "digits, under a small MLP trained on scikit-learn's digits (bench.measure.quality; "
        "lower is better; not comparable with published FIDs); frechet_digits_real: what as "
        "many real held-out digits score (a finite sample's floor). The quality pass runs "
        "eager and after the timed one; it writes a grid per spec under "
        "<out>/sampling/<run_id>/.",
        "PREDICTED, not measured (with --card; --predict-only: these alone): "
        "predicted_step_s for one denoising step on that card, the step-time model over the "
        "step's traced kernels (bench.predict.runtime, docs/throughput.md); "
        "predicted_full_run_s = predicted_step_s x sampling_steps, likely between "
        "predicted_full_run_s_low and _high (the public training runs' leave-one-out "
        "error range); predicted_img_per_s = batch / predicted_full_run_s, finished images "
        "per second of complete runs.",
        "PREDICTED, not measured (with --card): the memory of the sampling pass on that card "
        "(bench.predict.denoise, docs/memory.md), as bench.memory predicts a training step: "
        "two denoising steps traced on fake tensors under CUDA's rules, the model's weights "
        "and the loop's own tensors (x_t, the model's output, the noise, the update's "
        "temporaries), replayed through the caching-allocator model with one cuBLAS "
        "workspace. predicted_tensors_mib: the live tensors at the peak (512 B blocks); "
        "predicted_alloc_mib and predicted_reserved_mib: the allocator's peaks; "
        "predicted_cuda_mib = predicted_reserved_mib + cudnn_workspace_mib + context_mib; "
        "fits: predicted_cuda_mib <= budget_mib (the card's capacity, or --budget); "
        "headroom_mib = budget_mib - predicted_cuda_mib. With train_batch (--train-batch): "
        "the pass ddpm.cli.train runs after its last step at that training batch, DDIM in "
        "fp32 from the EMA weights, next to what training keeps on the card (weights, "
        "gradients, AdamW state, EMA, the held-out batches, swap_into's copy of the "
        "weights); its reserved memory starts from what the training steps cached. "
        "alloc_error_pct = 100 x (predicted_alloc_mib - peak_alloc_mib) / peak_alloc_mib "
        "where a CUDA card measured the pass alone. max_batch_source (--find-max-batch): "
        "the row's batch is the largest that fits, predicted, counting what the allocator "
        "reserves; max_batch_released: the largest whose allocated peak fits, its upper "
        "bound were the allocator to give back every cached segment no block uses (CUDA's "
        "does so when cudaMalloc fails; the model never does).",
    ],
    verdict=verdict,
    compare=lambda rows, context: impl_ratios(rows, "projected_img_per_s", "img/s"),
    measure=measure,
)
