"""The step time of a plan's option: the time model's public prediction
(bench.predict.runtime.training_figures), asked at accumulation 1 and 2 and extended to any
accumulation, and kept on disk beside the traces (bench.predict.cache).

An optimizer step of accumulation a runs a micro-batches of the same work one after another,
then one optimizer update and EMA: T(a) = T(1) + (a - 1) (T(2) - T(1)), for the time and for
each end of its band. Asking the model at a itself would trace a micro-batches; two calls answer
every accumulation (tests/bench/planning/test_planner.py holds the line to the model at a = 4
and 5)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

from bench.cards import Card
from bench.predict import cache
from bench.predict.runtime import training_figures
from bench.spec import BenchSpec
from bench.tables.results import atomic_write

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepTime:
    """One optimizer step on a card, predicted: its seconds and their likely range."""

    step_s: float
    low_s: float
    high_s: float

    def extended(self, other: StepTime, accum: int) -> StepTime:
        """From this step at accumulation 1 and `other` at 2, the step at `accum`."""
        return StepTime(
            *(a + (accum - 1) * (b - a) for a, b in zip(self.astuple(), other.astuple()))
        )

    def astuple(self) -> tuple[float, float, float]:
        return (self.step_s, self.low_s, self.high_s)


def _asked(spec: BenchSpec, card: Card) -> StepTime:
    """The model's own answer at spec's accumulation, from the disk where it was kept."""
    entry = cache.key(spec, card.capability)
    where = cache.folder()
    path = None
    if entry is not None and where is not None:
        name = json.dumps([entry, card.key, spec.batch, spec.accum])
        path = where / f"time-{hashlib.sha256(name.encode()).hexdigest()}.json"
        try:
            return StepTime(*json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            log.debug("time cache: %s not read (%s)", path, exc)
    figures = training_figures(spec, card)
    found = StepTime(
        figures["predicted_step_s"],
        figures["predicted_step_s_low"],
        figures["predicted_step_s_high"],
    )
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps(found.astuple()))
        except OSError as exc:
            log.debug("time cache: cannot write %s (%s)", path, exc)
    return found


def step_time(spec: BenchSpec, card: Card) -> StepTime:
    """spec's optimizer step on `card`: asked of the model up to accumulation 2, extended past."""
    if spec.accum <= 2:
        return _asked(spec, card)
    return _asked(spec.replace(accum=1), card).extended(
        _asked(spec.replace(accum=2), card), spec.accum
    )
