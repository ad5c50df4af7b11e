"""Every way to train one model at one effective batch on a card, predicted and ranked.

An option is a split of the effective batch (micro-batch x accumulation) and a value of each
allowed lever (bench.planning.levers); the levers not allowed keep the model's own setting. Each
option's memory is the fit predicted for the card (bench.predict.fit); each option that fits has
its step time predicted (bench.planning.timing). Options are ranked by predicted hours to train;
a tie keeps the simpler option: every lever's earlier value (fp32 before fp16, no checkpointing
before checkpointing), then fewer cards, then less accumulation.

Every split of one set of lever values comes from a few traces, shared by the cards of one
compute capability and kept on disk: the memory of accumulation 1 from the trace at the
effective batch, and of every accumulation from 2 on from the lines of two traces at
accumulation 2 (bench.predict.batches); the time from the kernels' lines at accumulation 1 and 2
(bench.planning.timing). The lines are confirmed where the answer matters: the top choice of each
card is traced at its own batch, memory and kernels; where a trace is off its lines, they are
dropped and the card is planned again with each batch traced.

An option that cannot run is left out of the ranking with the reason, never predicted as if it
ran: an attention backend the card's dispatcher refuses in its dtype (NoBackend), or a lever
value its implementation does not take (bench.sweep.cli.check_levers, as every harness checks
it)."""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass

from bench.cards import CARDS
from bench.measure.tracked import MemoryPeak
from bench.parsers import SpecError
from bench.planning import timing
from bench.planning.levers import BY_NAME, LEVERS, SPLIT, splits, values_on
from bench.planning.timing import StepTime, step_time
from bench.predict import cache
from bench.predict.attention import NoBackend
from bench.predict.batches import step_model
from bench.predict.fit import Fit, predict_fit
from bench.predict.stream import Prediction
from bench.spec import BenchSpec
from bench.sweep.cli import check_levers as check_lever_values


@dataclass(frozen=True)
class Option:
    """One way to train on one card: its spec (the card, batch, accumulation and levers set),
    the fit, and the step time where it fits; or why it cannot run."""

    spec: BenchSpec
    fit: Fit | None  # None where it cannot run: not predicted
    time: StepTime | None  # None where it does not fit or cannot run: not predicted
    simplicity: tuple[int, ...]  # each lever's value's place in its list, cards, accumulation
    cannot_run: str | None = None  # why, where the card or implementation refuses it

    @property
    def card(self) -> str:
        return self.spec.card

    def hours(self, train_steps: int) -> tuple[float, float, float] | None:
        """Hours to train: predicted, low, high."""
        if self.time is None:
            return None
        return tuple(s * train_steps / 3600 for s in self.time.astuple())

    @property
    def changes_loss(self) -> list[str]:
        return [
            f"{lever.field} {getattr(self.spec, lever.field)}"
            for lever in LEVERS
            if getattr(self.spec, lever.field) in lever.changes_loss
        ]

    @property
    def predicted_as(self) -> list[str]:
        """The levers the predictions do not see at this option's values, and what they took:
        "compile default predicted as off", "optimizer lion timed as adamw"."""
        said = (lever.taken_as(getattr(self.spec, lever.field)) for lever in LEVERS)
        return [words for words in said if words is not None]


def predicted_spec(spec: BenchSpec) -> BenchSpec:
    """The spec the memory prediction is asked about: each lever it does not model at the value
    it takes it at (Lever.predicted_as)."""
    return spec.replace(
        **{lever.field: lever.predicted_as for lever in LEVERS if lever.predicted_as is not None}
    )


def timed_spec(spec: BenchSpec) -> BenchSpec:
    """The spec the time prediction is asked about: predicted_spec, and each value whose speed
    it does not see at the value it is timed as (Lever.timed_as)."""
    asked = predicted_spec(spec)
    return asked.replace(
        **{
            lever.field: lever.timed_as[getattr(asked, lever.field)]
            for lever in LEVERS
            if getattr(asked, lever.field) in lever.timed_as
        }
    )


def options(
    base: BenchSpec,
    card: str,
    effective_batch: int,
    max_accum: int,
    allowed: tuple[str, ...],
    only: dict[str, tuple[str, ...]] | None = None,
    ranks: int = 1,
) -> list[tuple[BenchSpec, tuple[int, ...]]]:
    """Every (spec, simplicity) of the grid on `card`: the allowed levers' values the card runs
    (those `only` names, where it names a lever's), times the shares of the effective batch:
    on each count of cards up to `ranks` that divides it (more than one in DDP), its splits
    into micro-batch x accumulation (or one micro-batch where the split is not allowed)."""
    levers = [lever for lever in LEVERS if lever.field in allowed]
    chosen = [values_on(lever, CARDS[card], only or {}) for lever in levers]
    grid = []
    for values in itertools.product(*chosen):
        for count, batch, accum in shares(effective_batch, max_accum, SPLIT in allowed, ranks):
            spec = base.replace(
                card=card,
                batch=batch,
                accum=accum,
                **dict(zip((lv.field for lv in levers), values)),
            )
            if count > 1:
                spec = spec.replace(ranks=count, parallel="ddp")
            places = tuple(c.index(v) for c, v in zip(chosen, values))
            grid.append((spec, (*places, count, accum)))
    return grid


def shares(effective_batch: int, max_accum: int, split: bool, ranks: int):
    """(cards, micro-batch, accumulation) triples whose product is the effective batch: the
    fewest cards first."""
    for count in range(1, ranks + 1):
        if effective_batch % count:
            continue
        each = effective_batch // count
        for batch, accum in splits(each, max_accum) if split else [(each, 1)]:
            yield count, batch, accum


class Planner:
    """Predicts options, each memory trace and time asked once per process (the disk keeps
    them between processes). `say` hears progress."""

    def __init__(self, say: Callable[[str], None] = lambda line: None):
        self.say = say
        self._fits: dict[BenchSpec, Fit] = {}
        self._times: dict[tuple[BenchSpec, str], StepTime] = {}
        self._refused: dict[tuple[BenchSpec, tuple[int, int]], str] = {}
        self.kept = True  # answers kept on disk are taken (else each is predicted again)

    def fit(self, spec: BenchSpec) -> Fit:
        """NoBackend where the card cannot run the option's attention backend."""
        asked = predicted_spec(spec)
        if asked not in self._fits:
            self._fits[asked] = kept_fit(asked, self.kept)
        return self._fits[asked]

    def cannot_run(self, spec: BenchSpec) -> str | None:
        """Why the option cannot run, or None. A refusal depends on neither the batch nor the
        accumulation (the dtype, head dim and card decide it), so it is asked once for all
        splits."""
        key = (spec.replace(batch=1, accum=1), CARDS[spec.card].capability)
        if key not in self._refused:
            try:
                check_lever_values([spec], predict_only=True)
                self.fit(spec)
                self._refused[key] = ""
            except (SpecError, NoBackend) as exc:
                self._refused[key] = str(exc)
        return self._refused[key] or None

    def time(self, spec: BenchSpec) -> StepTime:
        asked = (timed_spec(spec), spec.card)
        if asked not in self._times:
            self._times[asked] = step_time(asked[0], CARDS[spec.card], self.kept)
        return self._times[asked]

    def confirmed(self, option: Option) -> bool:
        """Trace the option at its own batch, its memory and its kernels, and compare them with
        the lines its predictions were read off: False where one is off (the lines are dropped)."""
        spec = predicted_spec(option.spec)
        model = step_model(spec, CARDS[spec.card].capability)
        memory = spec.batch in model.traced or model.verify(spec.batch)
        return memory and timing.verify(timed_spec(option.spec), CARDS[spec.card])

    def plan(
        self,
        base: BenchSpec,
        card: str,
        effective_batch: int,
        max_accum: int,
        allowed: tuple[str, ...],
        train_steps: int,
        only: dict[str, tuple[str, ...]] | None = None,
        ranks: int = 1,
    ) -> list[Option]:
        """Every option on `card` (on up to `ranks` of them), ranked: those that fit by
        predicted hours (ties: simpler first), then those that do not, the nearest to fitting
        first."""
        grid = options(base, card, effective_batch, max_accum, allowed, only, ranks)
        ranked = rank(self._predicted(grid, card), train_steps)
        if ranked and ranked[0].time is not None and not self.confirmed(ranked[0]):
            self.say(f"{card}: the top choice is off the lines of two traces; tracing each batch")
            self._fits.clear()
            self._times.clear()
            self.kept = False
            ranked = rank(self._predicted(grid, card), train_steps)
        return ranked

    def _predicted(self, grid, card: str) -> list[Option]:
        found = []
        for done, (spec, simplicity) in enumerate(grid, 1):
            refused = self.cannot_run(spec)
            if refused:
                found.append(Option(spec, None, None, simplicity, refused))
            else:
                fit = self.fit(spec)
                time = self.time(spec) if fit.fits else None
                found.append(Option(spec, fit, time, simplicity))
            self.say(f"{card}: {done}/{len(grid)} options predicted")
        return found


def kept_fit(spec: BenchSpec, kept: bool = True) -> Fit:
    """spec's fit on its card: the prediction kept on disk beside the traces where there is one
    (`kept`), else predict_fit's, from the traces (accumulation 1 asked at one batch, the
    effective one; from 2 on at many: their lines), then kept. A question asked again replays
    no allocator."""
    target = CARDS[spec.card].capability
    conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    entry = cache.key(spec, target)
    name = [entry, spec.batch, spec.accum, conf]
    found = cache.load_answer("memory", name) if kept and entry is not None else None
    if found is not None:
        try:
            return Fit(prediction_of(found), spec.context_mib, spec.budget_mib)
        except (KeyError, TypeError, ValueError):
            pass  # not a prediction: predicted again
    fit = predict_fit(spec, target, many=spec.accum >= 2)
    if entry is not None:
        cache.save_answer("memory", name, dataclasses.asdict(fit.prediction))
    return fit


def prediction_of(data: dict) -> Prediction:
    """The Prediction that dataclasses.asdict made `data` of."""
    tensors = data["tensors"]
    if tensors is not None:
        tensors = MemoryPeak(int(tensors["total"]), dict(tensors["by_category"]))
    return Prediction(
        tensors,
        int(data["alloc_bytes"]),
        int(data["reserved_bytes"]),
        int(data["cublas_workspace_bytes"]),
        tuple(data["target"]),
    )


def rank(found: list[Option], train_steps: int) -> list[Option]:
    """Those that fit by predicted hours (ties: simpler first), then those that do not, the
    nearest first, then those that cannot run (unranked)."""
    fitting = sorted(
        (o for o in found if o.time is not None),
        key=lambda o: (o.hours(train_steps)[0], o.simplicity),
    )
    short = sorted(
        (o for o in found if o.fit is not None and o.time is None),
        key=lambda o: -o.fit.headroom_mib,
    )
    return fitting + short + [o for o in found if o.fit is None]


def parse_levers(text: str, cards: list[str]) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """--levers' names, and the values each NAME=A+B item keeps its lever to. ValueError naming
    a lever no declaration has, a value no card gives its lever, or a card the values leave
    with none of the lever's."""
    known = (SPLIT, *BY_NAME)
    allowed, only = [], {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, sign, values = item.partition("=")
        if name not in known:
            raise ValueError(f"--levers {name!r} is not a lever: choose from {', '.join(known)}")
        allowed.append(name)
        if sign:
            only[name] = _kept_values(item, name, values, cards)
    return tuple(dict.fromkeys(allowed)), only


def _place(value: str, runs: list[tuple[str, ...]]) -> int:
    """Where a value stands among its lever's values on the cards that run the most of them."""
    return max(values.index(value) for values in runs if value in values)


def _kept_values(item: str, name: str, values: str, cards: list[str]) -> tuple[str, ...]:
    if name == SPLIT:
        raise ValueError(f"--levers {item!r}: the split takes no values (see --max-accum)")
    lever = BY_NAME[name]
    runs = [lever.values(card) for card in CARDS.values()]
    given = sorted({v for values in runs for v in values}, key=lambda v: _place(v, runs))
    kept = tuple(filter(None, values.split("+")))
    for value in kept or ("",):
        if value not in given:
            raise ValueError(
                f"--levers {item!r}: {value!r} is not a value of {name} ({'+'.join(given)})"
            )
    for card in cards:
        if not values_on(lever, CARDS[card], {name: kept}):
            its = "+".join(lever.values(CARDS[card]))
            raise ValueError(f"--levers {item!r}: the {card} runs none of them ({name}: {its})")
    return kept
