"""Every way to train one model at one effective batch on a card, predicted and ranked.

An option is a split of the effective batch (micro-batch x accumulation) and a value of each
allowed lever (bench.planning.levers); the levers not allowed keep the model's own setting. Each
option's memory is the fit predicted for the card (bench.predict.fit: the trace of its step, one
per micro-batch and lever values, shared by the cards of one compute capability and kept on
disk); each option that fits has its step time predicted (bench.planning.timing). Options are
ranked by predicted hours to train; a tie keeps the simpler option: every lever's earlier value
(fp32 before fp16, no checkpointing before checkpointing), then less accumulation."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from bench.cards import CARDS
from bench.planning.levers import BY_NAME, LEVERS, SPLIT, splits
from bench.planning.timing import StepTime, step_time
from bench.predict.fit import Fit, predict_fit
from bench.spec import BenchSpec


@dataclass(frozen=True)
class Option:
    """One way to train on one card: its spec (the card, batch, accumulation and levers set),
    the fit, and the step time where it fits."""

    spec: BenchSpec
    fit: Fit
    time: StepTime | None  # None where it does not fit: not predicted
    simplicity: tuple[int, ...]  # each lever's value's place in its list, then accumulation

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
        return [
            f"{lever.field} {lever.predicted_as}"
            for lever in LEVERS
            if lever.predicted_as is not None
            and getattr(self.spec, lever.field) != lever.predicted_as
        ]


def predicted_spec(spec: BenchSpec) -> BenchSpec:
    """The spec the predictions are asked about: each lever they do not model at the value they
    take it at (Lever.predicted_as)."""
    return spec.replace(
        **{lever.field: lever.predicted_as for lever in LEVERS if lever.predicted_as is not None}
    )


def options(
    base: BenchSpec, card: str, effective_batch: int, max_accum: int, allowed: tuple[str, ...]
) -> list[tuple[BenchSpec, tuple[int, ...]]]:
    """Every (spec, simplicity) of the grid on `card`: the allowed levers' values the card runs,
    times the splits of the effective batch (or the effective batch in one micro-batch where
    the split is not allowed)."""
    levers = [lever for lever in LEVERS if lever.field in allowed]
    chosen = [lever.values(CARDS[card]) for lever in levers]
    shares = splits(effective_batch, max_accum) if SPLIT in allowed else [(effective_batch, 1)]
    grid = []
    for values in itertools.product(*chosen):
        for batch, accum in shares:
            spec = base.replace(
                card=card,
                batch=batch,
                accum=accum,
                **dict(zip((lv.field for lv in levers), values)),
            )
            places = tuple(c.index(v) for c, v in zip(chosen, values))
            grid.append((spec, (*places, accum)))
    return grid


class Planner:
    """Predicts options, each memory trace and time asked once per process (the disk keeps
    them between processes). `say` hears progress."""

    def __init__(self, say: Callable[[str], None] = lambda line: None):
        self.say = say
        self._fits: dict[BenchSpec, Fit] = {}
        self._times: dict[tuple[BenchSpec, str], StepTime] = {}

    def fit(self, spec: BenchSpec) -> Fit:
        asked = predicted_spec(spec)
        if asked not in self._fits:
            self._fits[asked] = predict_fit(asked, CARDS[spec.card].capability)
        return self._fits[asked]

    def time(self, spec: BenchSpec) -> StepTime:
        asked = (predicted_spec(spec), spec.card)
        if asked not in self._times:
            self._times[asked] = step_time(asked[0], CARDS[spec.card])
        return self._times[asked]

    def plan(
        self,
        base: BenchSpec,
        card: str,
        effective_batch: int,
        max_accum: int,
        allowed: tuple[str, ...],
        train_steps: int,
    ) -> list[Option]:
        """Every option on `card`, ranked: those that fit by predicted hours (ties: simpler
        first), then those that do not, the nearest to fitting first."""
        grid = options(base, card, effective_batch, max_accum, allowed)
        found = []
        for done, (spec, simplicity) in enumerate(grid, 1):
            fit = self.fit(spec)
            time = self.time(spec) if fit.fits else None
            found.append(Option(spec, fit, time, simplicity))
            self.say(f"{card}: {done}/{len(grid)} options predicted")
        return rank(found, train_steps)


def rank(found: list[Option], train_steps: int) -> list[Option]:
    fitting = sorted(
        (o for o in found if o.time is not None),
        key=lambda o: (o.hours(train_steps)[0], o.simplicity),
    )
    short = sorted((o for o in found if o.time is None), key=lambda o: -o.fit.headroom_mib)
    return fitting + short


def check_levers(allowed: tuple[str, ...]) -> None:
    """ValueError naming a lever no declaration has."""
    known = (SPLIT, *BY_NAME)
    for name in allowed:
        if name not in known:
            raise ValueError(f"--levers {name!r} is not a lever: choose from {', '.join(known)}")
