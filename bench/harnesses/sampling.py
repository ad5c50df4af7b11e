"""The sampling harness: how fast does the model sample, and how well? Its HARNESS: the figures
of a row, the notes and the verdict; the passes are bench/passes/sampling.py, the command line
bench/sampling.py."""

from __future__ import annotations

from bench import cards
from bench.cards import CARDS
from bench.core import Harness, RunContext
from bench.figure import Figure
from bench.passes.sampling import measured
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
    if HARNESS.predict_only(row):
        likely = ""
        if row.get("predicted_full_run_s_low") is not None:
            likely = f", likely {v['predicted_full_run_s_low']}-{v['predicted_full_run_s_high']} s"
        return (
            f"{name} {row['sampling_steps']} steps, batch {row['batch']}, {row['precision']} "
            f"on {CARDS[row['card']].name}: PREDICTED {v['predicted_step_s']} s per denoising "
            f"step, a full run {v['predicted_full_run_s']} s{likely}, "
            f"{v['predicted_img_per_s']} images/s (nothing measured).{caveats}"
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
            f"step.{caveats}"
        )
    return text


def measure(spec, context: RunContext | None = None) -> dict:
    key = spec.card
    prediction = sampling_figures(spec, CARDS[key]) if key else {}
    if spec.predict_only:
        return prediction
    return {**measured(spec, context), **prediction}


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
    ],
    verdict=verdict,
    compare=lambda rows, context: impl_ratios(rows, "projected_img_per_s", "img/s"),
    measure=measure,
)
