"""What each memory lever buys and costs, from the committed results: each largest batch
bench.memory found (--find-max-batch, accumulation 1) on a card, joined to the step
bench.throughput predicted for the same settings at that batch; the table per card and the plot
(largest batch against predicted images per second, one point per combination) that
`python -m bench.lever_costs` writes. Every figure in both is a prediction."""

from __future__ import annotations

from pathlib import Path

from matplotlib import style

from bench.tables import plots

# The settings that make a combination, each with its default and how a value off it is said.
LEVERS = (
    ("precision", "fp32", "{}"),
    ("checkpointing", "off", "checkpointing"),
    ("optimizer", "adamw", "{}"),
    ("ema", "device", "EMA on the {}"),
    ("ema_dtype", "fp32", "{} EMA"),
    ("attention_backend", "auto", "{} attention"),
    ("channels_last", "off", "channels-last"),
)
# Also equal between a largest batch and its predicted step.
SAME = ("preset", "image_size", "impl", "card", "batch", "accum", "compile", "attention")


def combination(row: dict) -> str:
    said = [words.format(row[f]) for f, default, words in LEVERS if row[f] != default]
    return " + ".join(said) or "baseline (fp32, AdamW, EMA on the card)"


def joined(memory: list[dict], throughput: list[dict], preset: str) -> list[dict]:
    """Each largest batch of `preset` at accumulation 1 on a card, with the predicted step
    of the same settings at that batch (the latest of each); those without one are left out."""
    key_fields = SAME + tuple(f for f, _, _ in LEVERS)
    timed = {
        tuple(r[f] for f in key_fields): r
        for r in plots.latest_ok(throughput)
        if r.get("predicted_img_per_s") is not None
    }
    found = []
    for row in plots.latest_ok(memory):
        if row["preset"] != preset or row["accum"] != 1 or row["card"] in (None, "none"):
            continue
        if not row.get("max_batch_source") or not row.get("fits"):
            continue
        step = timed.get(tuple(row[f] for f in key_fields))
        if step is not None:
            found.append({**row, **{k: v for k, v in step.items() if k.startswith("predicted")}})
    return found


def table(rows: list[dict]) -> str:
    lines = []
    for card in dict.fromkeys(r["card"] for r in rows):
        mine = sorted((r for r in rows if r["card"] == card), key=lambda r: r["batch"])
        base = next((r for r in mine if combination(r).startswith("baseline")), None)
        lines += [
            f"### {card} (predicted)",
            "",
            "| combination | largest batch | step s | images/s | vs baseline |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in mine:
            ratio = r["predicted_img_per_s"] / base["predicted_img_per_s"] if base else None
            lines.append(
                f"| {combination(r)} | {r['batch']} | {r['predicted_step_s']:.3f} "
                f"| {r['predicted_img_per_s']:.2f} | "
                + (f"{ratio:.2f}x |" if ratio is not None else "|")
            )
        lines.append("")
    return "\n".join(lines)


def _clusters(rows: list[dict], within: float = 0.02) -> dict[tuple[int, float], list[str]]:
    """One label per point, the names of combinations at the same batch and within `within`
    of each other's images per second joined (their labels would print over each other)."""
    found: dict[tuple[int, float], list[str]] = {}
    for r in sorted(rows, key=lambda r: (r["batch"], r["predicted_img_per_s"])):
        x, y = r["batch"], r["predicted_img_per_s"]
        near = [k for k in found if k[0] == x and abs(k[1] - y) <= within * y]
        name = combination(r).split(" (")[0]
        found.setdefault(near[0] if near else (x, y), []).append(name)
    return found


def plot(rows: list[dict], path: Path) -> None:
    with style.context("default"):
        fig, ax = plots.new_figure()
        for card in dict.fromkeys(r["card"] for r in rows):
            mine = [r for r in rows if r["card"] == card]
            ax.scatter(
                [r["batch"] for r in mine],
                [r["predicted_img_per_s"] for r in mine],
                label=f"{card} (predicted)",
            )
            for (x, y), names in _clusters(mine).items():
                ax.annotate(
                    "\n".join(names),
                    (x, y),
                    fontsize="x-small",
                    xytext=(4, 3),
                    textcoords="offset points",
                )
        plots.batch_axis(ax, [r["batch"] for r in rows])
        ax.set_xlabel("largest batch that fits (accumulation 1, predicted)")
        ax.set_ylabel("images per second (predicted)")
        ax.set_title(f"{rows[0]['preset']}: each memory lever, alone and together")
        plots.finish(fig, ax, path)
