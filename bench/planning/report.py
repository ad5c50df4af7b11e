"""What a plan says: its options as rows (plan.csv, every option of every card, appended), the
fastest few of each card as text (stdout) and as markdown (plan.md, rebuilt from plan.csv: the
latest plan of each question)."""

from __future__ import annotations

import csv
import io
import textwrap
from pathlib import Path

from bench.cards import card_words
from bench.planning.levers import LEVERS
from bench.planning.planner import Option
from bench.tables.results import ResultsError, atomic_write, markdown_table

COLUMNS = [
    "run_id",
    "timestamp",
    "command",
    "model",
    "params",
    "effective_batch",
    "train_steps",
    "card",
    "rank",
    "ranks",
    "batch",
    "accum",
    *(lever.field for lever in LEVERS),
    "fits",
    "predicted_cuda_mib",
    "budget_mib",
    "headroom_mib",
    "predicted_step_s",
    "predicted_step_s_low",
    "predicted_step_s_high",
    "predicted_train_h",
    "predicted_train_h_low",
    "predicted_train_h_high",
    "changes_loss",
    "predicted_as",
    "cannot_run",
    "usd_per_hour",
    "predicted_usd",
]
GIB = 1024  # MiB
WIDTH = 80  # stdout's columns


def rows(question: dict, card: str, ranked: list[Option], price: float | None) -> list[dict]:
    """plan.csv's rows of one card: `question` holds the columns every row of the plan shares
    (run_id .. train_steps)."""
    found = []
    for place, option in enumerate(ranked, 1):
        hours = option.hours(question["train_steps"])
        fit = option.fit
        found.append(
            {
                **question,
                "card": card,
                "rank": place if hours else None,
                "ranks": option.spec.ranks,
                "batch": option.spec.batch,
                "accum": option.spec.accum,
                **{lever.field: getattr(option.spec, lever.field) for lever in LEVERS},
                "fits": fit is not None and fit.fits,
                **_memory_columns(fit),
                **_time_columns(option, hours),
                "changes_loss": "; ".join(option.changes_loss),
                "predicted_as": "; ".join(option.predicted_as),
                "cannot_run": option.cannot_run,
                "usd_per_hour": price,
                # An hour of training rents every card the option trains on.
                "predicted_usd": round(hours[0] * price * option.spec.ranks, 2)
                if hours and price
                else None,
            }
        )
    return found


def _memory_columns(fit) -> dict:
    if fit is None:
        return {}
    return {
        "predicted_cuda_mib": round(fit.cuda_mib, 1),
        "budget_mib": round(fit.budget_mib, 1),
        "headroom_mib": round(fit.headroom_mib, 1),
    }


def _time_columns(option: Option, hours) -> dict:
    if hours is None:
        return {}
    step = option.time.astuple()
    return {
        "predicted_step_s": step[0],
        "predicted_step_s_low": step[1],
        "predicted_step_s_high": step[2],
        "predicted_train_h": round(hours[0], 2),
        "predicted_train_h_low": round(hours[1], 2),
        "predicted_train_h_high": round(hours[2], 2),
    }


def append(path: Path, new: list[dict]) -> None:
    """The rows at the end of plan.csv, the file rewritten under this version's header;
    ResultsError where an existing file has columns this version does not write."""
    if path.is_dir():
        raise ResultsError(f"{path} is a folder where the plan writes a file; pass another --out.")
    header = next(csv.reader(io.StringIO(path.read_text())), []) if path.exists() else []
    if not set(header) <= set(COLUMNS):
        raise ResultsError(
            f"{path} has other columns than this version writes; move it aside or pass "
            "another --out."
        )
    # An older file's rows are carried forward under this version's columns (those it did not
    # have blank: cards_of takes a blank ranks as one card).
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    for row in [*(read(path) if header else []), *new]:
        writer.writerow({c: "" if row.get(c) is None else row[c] for c in COLUMNS})
    atomic_write(path, text.getvalue())


def read(path: Path) -> list[dict]:
    """plan.csv's rows, a column an older file lacks blank."""
    with path.open(newline="") as f:
        return [{c: row.get(c) or "" for c in COLUMNS} for row in csv.DictReader(f)]


# Each lever's value as the setting column says it, where it says it (None: left unsaid, the
# lever's default).
WORDS = {
    "precision": lambda v: v,
    "checkpointing": lambda v: "ckpt" if v == "on" else None,
    "compile": lambda v: None if v == "off" else f"compile {v}",
    "optimizer": lambda v: None if v == "adamw" else v,
    "ema": lambda v: None if v == "device" else f"ema-{v}",
    "attention_backend": lambda v: None if v == "auto" else f"{v}-attn",
    "channels_last": lambda v: "ch-last" if v == "on" else None,
}
SETTING = 20  # the setting column's width on stdout


def cards_of(row: dict) -> int:
    """The cards a row trains on (blank in a file written before plans shared a batch across
    cards: one)."""
    return int(row["ranks"] or 1)


def _setting(row: dict) -> str:
    """The levers of a row as words: ddp-2 (two cards), fp32, bf16*, ckpt, compile default,
    adamw8bit*, ema-cpu, math-attn, ch-last (* changes the loss)."""
    marked = set(filter(None, row["changes_loss"].split("; ")))
    words = [f"ddp-{cards_of(row)}"] if cards_of(row) > 1 else []
    for lever in LEVERS:
        value = row[lever.field]
        said = WORDS[lever.field](value)
        if said is not None:
            words.append(said + ("*" if f"{lever.field} {value}" in marked else ""))
    return " ".join(words)


def _unseen(shown: list[dict]) -> list[str]:
    """What the predictions do not see of the levers of the rows shown, each lever once."""
    said = []
    for lever in LEVERS:
        taken = [lever.taken_as(r[lever.field]) for r in shown]
        taken = list(dict.fromkeys(t for t in taken if t is not None))
        if taken:
            said.append(f"{', '.join(taken)} ({lever.unseen})")
    return said


def _refused(card_rows: list[dict]) -> list[str]:
    """Why the options that cannot run on the card were left out, each reason once."""
    reasons = dict.fromkeys(r["cannot_run"] for r in card_rows if r["cannot_run"])
    if not reasons:
        return []
    count = sum(1 for r in card_rows if r["cannot_run"])
    return [f"Left out, {count} options that cannot run: " + "; ".join(reasons) + "."]


def _twin(row: dict) -> bool:
    """Whether both predictions took the row as another (compile default as off)."""
    return any(
        lever.predicted_as is not None and row[lever.field] != lever.predicted_as
        for lever in LEVERS
    )


def _ranked(card_rows: list[dict]) -> list[dict]:
    """The rows that fit, fastest first, without those the predictions took as another."""
    return [r for r in card_rows if r["fits"] in (True, "True") and not _twin(r)]


def _hours(row: dict) -> str:
    """Predicted hours and their range: whole hours from 100 on (a tenth of an hour says
    nothing against a range of a quarter either way)."""
    h = [float(row[f"predicted_train_h{s}"]) for s in ("", "_low", "_high")]
    said = [f"{v:,.0f}" if v >= 100 else f"{v:,.1f}" for v in h]
    return f"{said[0]} ({said[1]}-{said[2]})"


def card_lines(card_rows: list[dict], top: int) -> list[str]:
    """A card's fastest `top` options as text no wider than 80 columns, or what comes closest
    where none fits."""
    card = card_rows[0]["card"]
    fitting = [r for r in card_rows if r["fits"] in (True, "True")]
    predicted = [r for r in card_rows if not r["cannot_run"]]
    head = f"{card_words(card)}: {len(fitting)} of {len(predicted)} options fit"
    fitting = _ranked(card_rows)
    if not fitting:
        if not predicted:
            return [f"{head}.", *_wrapped(_refused(card_rows))]
        near = predicted[0]
        return [
            f"{head}. Closest: {_shape(near)} {_setting(near)}, "
            f"{float(near['predicted_cuda_mib']) / GIB:.2f} GiB, "
            f"{-float(near['headroom_mib']) / GIB:.2f} GiB over.",
            *_wrapped(_refused(card_rows)),
        ]
    lines = [
        head + "; the fastest:",
        f"{'#':>3}  {'micro x accum':<13}  {'setting':<{SETTING}} {'GiB':>5} {'free':>5} "
        f"{'step s':>7} hours to train",
    ]
    for place, r in enumerate(fitting[:top], 1):
        # A long setting goes on under its column, so that a line stays within 80 columns.
        first, *rest = textwrap.wrap(_setting(r), SETTING)
        line = (
            f"{place:>3}  {_shape(r):<13}  {first:<{SETTING}} "
            f"{float(r['predicted_cuda_mib']) / GIB:>5.2f} {float(r['headroom_mib']) / GIB:>5.2f} "
            f"{float(r['predicted_step_s']):>7.3f} "
        )
        more = [" " * 20 + words for words in rest]
        hours, spread = _hours(r).split(" ", 1)
        if len(line + hours + " " + spread) <= WIDTH:
            lines.append(line + hours + " " + spread)
        else:  # the range goes on under the hours
            lines.append(line + hours)
            more = [(more or [""])[0].ljust(len(line)) + spread, *more[1:]]
        lines += more
    return lines + _wrapped(notes(card_rows, top))


def _loss_kept(ranked: list[dict]) -> list[str]:
    """Where the fastest option changes the loss, the fastest that does not and what it costs
    in hours: a user weighing bf16 or 8-bit states against the run they know reads both."""
    if not ranked or not ranked[0]["changes_loss"]:
        return []
    fastest = float(ranked[0]["predicted_train_h"])
    for place, r in enumerate(ranked, 1):
        if not r["changes_loss"]:
            longer = 100 * (float(r["predicted_train_h"]) / fastest - 1)
            percent = f"{longer:.2f}%" if longer < 1 else f"{longer:.0f}%"
            return [
                f"The fastest that leaves the loss as it is: #{place}, {_shape(r)} "
                f"{_setting(r)}, {_hours(r)} h, {percent} longer."
            ]
    return ["Every option that fits changes the loss."]


def notes(card_rows: list[dict], top: int) -> list[str]:
    """What leaves the loss as it is, what the predictions do not see of the options shown, and
    what was left out."""
    ranked = _ranked(card_rows)
    unseen = _unseen(ranked[:top])
    said = _loss_kept(ranked)
    said += [f"Not seen: {'; '.join(unseen)}."] if unseen else []
    twins = [r for r in card_rows if r["fits"] in (True, "True") and _twin(r)]
    if twins:
        said.append(
            f"Not ranked, {len(twins)} options predicted as another that ties with them: "
            f"{'; '.join(_unseen(twins))}."
        )
    return said + _refused(card_rows)


def _wrapped(said: list[str]) -> list[str]:
    return [wrapped for line in said for wrapped in textwrap.wrap(line, WIDTH)]


def _shape(row: dict) -> str:
    return f"{row['batch']} x {row['accum']}"


def summary(best: dict[str, dict]) -> list[str]:
    """Across cards (each card's top row): which trains soonest and, where priced, cheapest."""
    if len(best) < 2:
        return []
    soonest = min(best.values(), key=lambda r: float(r["predicted_train_h"]))
    said = [
        f"Soonest: {card_words(soonest['card'])}, {_hours(soonest)} h "
        f"({_shape(soonest)}, {_setting(soonest)})."
    ]
    priced = [r for r in best.values() if r["predicted_usd"] not in ("", None)]
    if priced:
        cheapest = min(priced, key=lambda r: float(r["predicted_usd"]))
        said.append(
            f"Cheapest: {card_words(cheapest['card'])}, "
            f"${float(cheapest['predicted_usd']):,.2f} at ${float(cheapest['usd_per_hour']):g}/h."
        )
    return said


def question_words(row: dict) -> str:
    return (
        f"The plan for {row['model']} ({int(row['params']):,} parameters) at an effective "
        f"batch of {row['effective_batch']}, {int(row['train_steps']):,} optimizer steps "
        "(predicted, not measured):"
    )


NOTE = (
    "GiB: predicted CUDA memory (caching allocator's reserved peak, cuDNN allowance and "
    "context); free: the card's budget left. step s, hours: the time model's prediction and "
    "its likely range. * changes the loss (16-bit autocast, an optimizer other than AdamW)."
)


def text(plan_rows: list[dict], top: int) -> list[str]:
    """The plan as stdout says it."""
    lines = [*textwrap.wrap(question_words(plan_rows[0]), WIDTH), ""]
    best = {}
    for card in dict.fromkeys(r["card"] for r in plan_rows):
        card_rows = [r for r in plan_rows if r["card"] == card]
        lines += card_lines(card_rows, top) + [""]
        if _ranked(card_rows):
            best[card] = _ranked(card_rows)[0]
    said = summary(best) + [NOTE]
    return lines + [wrapped for line in said for wrapped in textwrap.wrap(line, WIDTH)]


def markdown(all_rows: list[dict], top: int) -> str:
    """plan.md: the latest plan of each question (model, effective batch, steps, cards)."""
    latest: dict[tuple, str] = {}
    for r in all_rows:
        question = (r["model"], r["effective_batch"], r["train_steps"])
        latest[question] = r["run_id"]
    parts = ["# Plans", "", NOTE, ""]
    for run_id in dict.fromkeys(latest.values()):
        plan_rows = [r for r in all_rows if r["run_id"] == run_id]
        parts += [f"## {plan_rows[0]['model']} at {plan_rows[0]['effective_batch']}", ""]
        parts += [question_words(plan_rows[0]), "", f"`{plan_rows[0]['command']}`", ""]
        best = {}
        for card in dict.fromkeys(r["card"] for r in plan_rows):
            card_rows = [r for r in plan_rows if r["card"] == card]
            fitting = _ranked(card_rows)[:top]
            parts.append(card_lines(card_rows, top)[0].split(";")[0] + ".")
            parts.append("")
            if fitting:
                best[card] = fitting[0]
                shown = [
                    {
                        "#": place,
                        "micro x accum": _shape(r),
                        "setting": _setting(r),
                        "GiB": f"{float(r['predicted_cuda_mib']) / GIB:.2f}",
                        "free GiB": f"{float(r['headroom_mib']) / GIB:.2f}",
                        "step s": f"{float(r['predicted_step_s']):.3f}",
                        "hours": _hours(r),
                    }
                    for place, r in enumerate(fitting, 1)
                ]
                parts += [markdown_table(shown, list(shown[0])), ""]
            parts += [" ".join(notes(card_rows, top)), ""] if notes(card_rows, top) else []
        parts += summary(best) + ([""] if len(best) > 1 else [])
    return "\n".join(parts).rstrip() + "\n"


def write_markdown(folder: Path, top: int) -> Path:
    path = folder / "plan.md"
    atomic_write(path, markdown(read(folder / "plan.csv"), top))
    return path
