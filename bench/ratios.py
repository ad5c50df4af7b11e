"""ddpm against diffusers in one sweep: per spec, the median of each implementation's figure over
the --repeats passes, the spread, and the ratio (the sentences under the table)."""

from __future__ import annotations

import statistics

from bench.core import axes

OURS, THEIRS = "ddpm", "diffusers"


def impl_ratios(rows: list[dict], figure: str, unit: str, also: tuple[str, ...] = ()) -> list[str]:
    """One sentence per spec measured with both implementations: median `figure` of each (higher
    is better), its min-max over the repeats, ours / theirs; `also`: more figures' medians."""
    ok = [r for r in rows if r["status"] == "ok" and r.get(figure) is not None]
    keys = [a for a in axes() if a not in ("impl", "repeat")]
    varying = [a for a in keys if len({r.get(a) for r in ok}) > 1]
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in ok:
        key = tuple(r.get(a) for a in keys)
        groups.setdefault(key, {}).setdefault(r.get("impl"), []).append(r)
    sentences = []
    for key, by_impl in groups.items():
        if OURS not in by_impl or THEIRS not in by_impl:
            continue
        spec = ", ".join(f"{a} {dict(zip(keys, key))[a]}" for a in varying) or "every spec"
        ours, theirs = ([r[figure] for r in by_impl[impl]] for impl in (OURS, THEIRS))
        mine, base = statistics.median(ours), statistics.median(theirs)
        text = (f"{OURS} vs {THEIRS}, {spec}: {mine:.3g} vs {base:.3g} {unit} (medians of "
                f"{len(ours)} and {len(theirs)} alternating runs; ranges {min(ours):.3g}-"
                f"{max(ours):.3g} and {min(theirs):.3g}-{max(theirs):.3g}): "
                f"{mine / base:.2f}x")
        for name in also:
            a, b = ([r[name] for r in by_impl[impl] if r.get(name) is not None]
                    for impl in (OURS, THEIRS))
            if a and b:
                text += f"; {name} {statistics.median(a):.3g} vs {statistics.median(b):.3g}"
        sentences.append(text + ".")
    return sentences
