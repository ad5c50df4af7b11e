"""bench.tables.levers: each largest batch joined to the step predicted at it, by hand."""

from __future__ import annotations

from bench import lever_costs
from bench.tables import levers

BASE = {
    "preset": "ddpm-256",
    "image_size": 256,
    "impl": "ddpm",
    "card": "rtx3070",
    "accum": 1,
    "compile": "off",
    "attention": "16",
    "precision": "fp32",
    "checkpointing": "off",
    "optimizer": "adamw",
    "ema": "device",
    "ema_dtype": "fp32",
    "attention_backend": "auto",
    "channels_last": "off",
    "status": "ok",
}


def largest(spec_id: str, batch: int, **levers) -> dict:
    return {
        **BASE,
        **levers,
        "spec_id": spec_id,
        "batch": batch,
        "fits": True,
        "max_batch_source": "traced",
    }


def timed(spec_id: str, batch: int, img_per_s: float, **levers) -> dict:
    return {
        **BASE,
        **levers,
        "spec_id": spec_id,
        "batch": batch,
        "predicted_step_s": batch / img_per_s,
        "predicted_img_per_s": img_per_s,
    }


def test_each_largest_batch_takes_the_step_predicted_at_that_batch_and_those_settings():
    memory = [
        largest("a", 2),
        largest("b", 9, precision="bf16", checkpointing="on", optimizer="adamw8bit", ema="cpu"),
        largest("c", 3, optimizer="adamw8bit"),  # no predicted step: left out
        {**largest("d", 6), "accum": 2},  # accumulation 2: not a lever's largest batch
    ]
    throughput = [
        timed("t1", 2, 4.0),
        timed("t1", 2, 5.0),  # the latest of a spec wins
        timed("t2", 4, 9.0),  # another batch than the largest: not joined
        timed(
            "t3", 9, 12.0, precision="bf16", checkpointing="on", optimizer="adamw8bit", ema="cpu"
        ),
        timed("t4", 3, 6.0, optimizer="adamw8bit", ema="cpu"),  # not the same settings
    ]
    rows = levers.joined(memory, throughput, "ddpm-256")
    assert [(r["spec_id"], r["predicted_img_per_s"]) for r in rows] == [("a", 5.0), ("b", 12.0)]
    assert levers.combination(rows[0]) == "baseline (fp32, AdamW, EMA on the card)"
    assert levers.combination(rows[1]) == "bf16 + checkpointing + adamw8bit + EMA on the cpu"
    said = levers.table(rows)
    assert (
        "| bf16 + checkpointing + adamw8bit + EMA on the cpu | 9 | 0.750 | 12.00 | 2.40x |" in said
    )


def test_a_folder_without_results_is_one_line_and_status_2(tmp_path, capsys):
    assert lever_costs.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "lacks memory.csv" in err


def test_points_at_one_batch_and_nearly_one_speed_share_a_label():
    rows = [
        {**timed("a", 4, 3.68), "card": "rtx3060"},
        {**timed("b", 4, 3.65, optimizer="adamw8bit"), "card": "rtx3060"},
        {**timed("c", 4, 3.42, ema="cpu"), "card": "rtx3060"},
    ]
    labels = levers._clusters(rows)
    assert sorted(labels.values()) == [["EMA on the cpu"], ["adamw8bit", "baseline"]]
