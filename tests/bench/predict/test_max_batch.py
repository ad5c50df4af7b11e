"""--find-max-batch --predict-only from two traces (bench.predict.fit.SpecFit) against the
search that traces every batch it probes, on the cases committed in results/memory.csv.

The default run takes a few small cases, one per lever, and checks the answer where the traced
search decides it: the answer traced fits and the next batch traced does not (the search assumes
memory grows with the batch, so that is its answer). `pytest --heavy` runs both searches whole
on one committed case per lever and model path, the 256 px ones too (HEAVY_STEPS)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from bench.core import axes
from bench.predict.fit import SEARCH_LIMITS, Fit, SpecFit, largest
from bench.predict.trace import Prediction, predict
from bench.spec import BenchSpec
from bench.tables.results import read_rows

RESULTS = Path(__file__).resolve().parents[3] / "results" / "memory.csv"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def committed() -> dict[str, tuple[BenchSpec, int]]:
    """Each committed predicted search once: its spec and its answer, by its spec's name."""
    cases = {}
    for row in read_rows(RESULTS):
        if row.get("max_batch_source") != "predicted" or row["status"] != "ok":
            continue
        spec = BenchSpec(
            **{a: row[a] for a in axes() if row.get(a) is not None},
            budget=row["budget_mib"],
            context_mib=row["context_mib"],
            find_max_batch=True,
            predict_only=True,
        ).replace(batch=1)
        cases[spec.name] = (spec, row["batch"])
    return cases


CASES = committed()
# The model alone and over ranks (tests/bench/predict/test_batches.py holds the lines of bf16,
# checkpointing, accumulation and FSDP2 against real traces, on the tiny model).
SMALL = [
    "ddpm-cifar10-32px-b1x1-fp32-attn16-compile-off-ckpt-off-cpu",
    "ddpm-cifar10-32px-b1x1-fp32-attn16-compile-off-ckpt-off-cpu-ranks2-parallelddp",
]


def test_the_cases_are_there():
    assert set(SMALL) <= set(CASES) and len(CASES) >= 70
    assert CASES[SMALL[0]][1] == 139


@functools.cache
def traced(step: BenchSpec, target: tuple[int, int], batch: int) -> Prediction:
    """A trace at `batch` (no lines, no cache), as every search probed before: once per step
    and card's compute capability, whatever the card's budget."""
    return predict(step.replace(batch=batch), target)


def fits_traced(spec: BenchSpec, batch: int) -> bool:
    prediction = traced(spec.replace(card="", budget=None), spec.target, batch)
    return Fit(prediction, spec.context_mib, spec.budget_mib).fits


@pytest.mark.parametrize("name", SMALL)
def test_two_traces_answer_as_the_traced_search(name):
    spec, answer = CASES[name]
    fitter = SpecFit(spec, spec.target, spec.context_mib)
    assert fitter.largest_batch() == answer
    # The search traced its answer (to check its lines there): that trace, and one of the next
    # batch, decide the traced search.
    at_answer = fitter.model.traced[answer].predict(spec.target)
    assert Fit(at_answer, spec.context_mib, spec.budget_mib).fits
    assert not fits_traced(spec, answer + 1)


# `pytest --heavy`: one committed case per lever and model path, on an RTX 30-series budget
# (sm86), one of them at 256 px. The traced search traces each batch it probes: every committed
# case would take hours here, and a 256 px search minutes. guided-diffusion's steps do not pair,
# so its search traces every batch as this one does.
HEAVY_STEPS = [
    "ddpm-cifar10-32px-b1x1-fp32-attn16-compile-off-ckpt-off-cpu",
    "ddpm-cifar10-32px-b1x1-bf16-attn16-compile-off-ckpt-off-cpu",
    "ddpm-cifar10-32px-b1x1-fp16-attn16-compile-off-ckpt-on-cpu",
    "ddpm-cifar10-32px-b1x1-fp32-attnnone-compile-off-ckpt-off-cpu",
    "ddpm-cifar10-32px-b1x1-bf16-attn16-compile-off-ckpt-off-cpu-ranks2-parallelfsdp",
    "ddpm-cifar10-128px-b1x1-fp32-attn16-compile-off-ckpt-off-cpu-lucidrains",
    "ddpm-256-256px-b1x1-fp32-attn16-compile-off-ckpt-off-cpu",
]


def heavy_cases() -> list[str]:
    """The first committed case (by name) of each of HEAVY_STEPS on an sm86 card."""
    chosen = {}
    for name in sorted(CASES):
        spec = CASES[name][0]
        step = spec.replace(card="", budget=None).name
        if step in HEAVY_STEPS and spec.target == (8, 6):
            chosen.setdefault(step, name)
    return [chosen[step] for step in HEAVY_STEPS]


def test_the_heavy_cases_are_there():
    assert len(heavy_cases()) == len(HEAVY_STEPS)


@pytest.mark.heavy
@pytest.mark.parametrize("name", heavy_cases())
def test_two_traces_answer_as_the_whole_traced_search(name):
    spec, answer = CASES[name]
    before = largest(lambda n: fits_traced(spec, n), SEARCH_LIMITS["predicted"])
    assert SpecFit(spec, spec.target, spec.context_mib).largest_batch() == before == answer
