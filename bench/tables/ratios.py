"""Comparisons in one sweep, the sentences under the table: ddpm against each other implementation
(diffusers, lucidrains, a user's factory; per spec, the
median of each implementation's figure over the --repeats passes, the spread, and the ratio), and
N ranks against one (scaling efficiency)."""

from __future__ import annotations

import statistics

from bench.core import axes

OURS = "ddpm"


def impl_ratios(rows: list[dict], figure: str, unit: str, also: tuple[str, ...] = ()) -> list[str]:
    """One sentence per spec and other implementation measured beside ours: median `figure` of
    each (higher is better), its min-max over the repeats, ours / theirs; `also`: more figures'
    medians. --model-config belongs to its implementation, so it does not part the rows."""
    ok = [r for r in rows if r["status"] == "ok" and r.get(figure) is not None]
    keys = [a for a in axes() if a not in ("impl", "repeat", "model_config")]
    varying = [a for a in keys if len({r.get(a) for r in ok}) > 1]
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in ok:
        key = tuple(r.get(a) for a in keys)
        groups.setdefault(key, {}).setdefault(r.get("impl"), []).append(r)
    sentences = []
    for (key, by_impl), other in (
        (item, name) for item in groups.items() for name in sorted(item[1]) if name != OURS
    ):
        if OURS not in by_impl:
            continue
        spec = ", ".join(f"{a} {dict(zip(keys, key))[a]}" for a in varying) or "every spec"
        ours, theirs = ([r[figure] for r in by_impl[impl]] for impl in (OURS, other))
        mine, base = statistics.median(ours), statistics.median(theirs)
        text = (
            f"{OURS} vs {other}, {spec}: {mine:.3g} vs {base:.3g} {unit} (medians of "
            f"{len(ours)} and {len(theirs)} alternating runs; ranges {min(ours):.3g}-"
            f"{max(ours):.3g} and {min(theirs):.3g}-{max(theirs):.3g}): "
            f"{mine / base:.2f}x"
        )
        for name in also:
            a, b = (
                [r[name] for r in by_impl[impl] if r.get(name) is not None]
                for impl in (OURS, other)
            )
            if a and b:
                text += f"; {name} {statistics.median(a):.3g} vs {statistics.median(b):.3g}"
        sentences.append(text + ".")
    return sentences


def rank_scaling(rows: list[dict], figure: str, unit: str) -> list[str]:
    """Scaling efficiency, one sentence per spec on N > 1 ranks whose 1-rank twin (every other
    axis equal, the per-rank batch included) is in the rows: `figure` (global, higher is better)
    at N ranks / (N x at 1 rank). Then one per 1-rank spec spread by ddp or fsdp with a plain
    twin (parallel none): the wrapper's own cost. Medians over the repeats."""
    ok = [r for r in rows if r["status"] == "ok" and r.get(figure) is not None]
    keys = [a for a in axes() if a != "repeat"]
    runs: dict[tuple, list[float]] = {}
    for r in ok:
        runs.setdefault(tuple(r.get(a) for a in keys), []).append(r[figure])
    median = {key: statistics.median(values) for key, values in runs.items()}
    said = ("ranks", "parallel", "grad_sync")  # named in every sentence when they matter
    varying = [a for a in keys if a not in said and len({r.get(a) for r in ok}) > 1]

    def twin(spec: dict, **changes) -> float | None:
        return median.get(tuple({**spec, **changes}[a] for a in keys))

    def where(spec: dict) -> str:
        return "".join(f", {a} {spec[a]}" for a in varying)

    def repeats(*specs: dict) -> str:
        counts = [len(runs[tuple(s[a] for a in keys)]) for s in specs]
        return f" (medians of {' and '.join(map(str, counts))} runs)" if max(counts) > 1 else ""

    sentences = []
    specs = [dict(zip(keys, key)) for key in median]
    for spec in specs:
        one = twin(spec, ranks=1)
        if spec["ranks"] > 1 and one is not None:
            n, many = spec["ranks"], median[tuple(spec[a] for a in keys)]
            sync = f", grad_sync {spec['grad_sync']}" if spec["grad_sync"] != "last" else ""
            sentences.append(
                f"Scaling {spec['parallel']}{sync}{where(spec)}: {many:.3g} {unit} on {n} ranks vs "
                f"{one:.3g} on 1{repeats(spec, {**spec, 'ranks': 1})}: efficiency {many:.3g} / "
                f"({n} x {one:.3g}) = {many / (n * one):.0%}."
            )
    for spec in specs:
        plain = twin(spec, parallel="none", grad_sync="last")
        if spec["ranks"] == 1 and spec["parallel"] != "none" and plain is not None:
            spread = median[tuple(spec[a] for a in keys)]
            sync = f", grad_sync {spec['grad_sync']}" if spec["grad_sync"] != "last" else ""
            base = {**spec, "parallel": "none", "grad_sync": "last"}
            sentences.append(
                f"{spec['parallel']}{sync} vs none on 1 rank{where(spec)}: {spread:.3g} vs "
                f"{plain:.3g} {unit}{repeats(spec, base)}: {spread / plain:.0%}."
            )
    return sentences
