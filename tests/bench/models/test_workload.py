"""One training step for every measurement: the throughput and memory timing, the profiler and
the pytest-benchmark suite all call workload.TrainStep, and its step is the trainer's exact
step on the spec's seeded global batch."""

from __future__ import annotations

import pytest
import torch

from bench.models.workload import TrainStep, build_trainer, synthetic_images, train_step
from bench.passes.profile import step_function
from bench.passes.training import timed_training
from bench.spec import BenchSpec

TINY = BenchSpec(
    preset="tiny", image_size=16, attention="8", batch=2, accum=2, measure_steps=2, warmup_steps=1
)


@pytest.fixture
def calls(monkeypatch):
    """Counts every TrainStep call (full steps and warm-ups) made anywhere in this process."""
    counted = {"step": 0, "warm_up": 0}
    step, warm_up = TrainStep.__call__, TrainStep.warm_up

    def counting_step(self, on_micro_batch=None):
        counted["step"] += 1
        return step(self, on_micro_batch)

    def counting_warm_up(self):
        counted["warm_up"] += 1
        return warm_up(self)

    monkeypatch.setattr(TrainStep, "__call__", counting_step)
    monkeypatch.setattr(TrainStep, "warm_up", counting_warm_up)
    return counted


def test_timed_training_measures_the_shared_step(calls):
    timed_training(TINY, torch.device("cpu"))
    assert calls == {"step": TINY.measure_steps, "warm_up": TINY.warmup_steps}


def test_the_profiler_profiles_the_shared_step(calls):
    step, _ = step_function(TINY, torch.device("cpu"))
    step()
    assert calls["step"] == 1


def test_the_pytest_suite_benchmarks_the_shared_step(calls):
    status = pytest.main(
        [
            "bench/suite/test_train_step.py",
            "--benchmark-disable",
            "--bench-batch",
            "2",
            "--bench-precision",
            "fp32",
            "-q",
            "-p",
            "no:cacheprovider",
        ]
    )
    assert status == 0
    assert calls["step"] >= 2  # a setup step, then the measured one


def test_a_step_is_the_trainers_step_on_the_seeded_batch():
    step = train_step(TINY)
    stats = step()
    trainer = build_trainer(TINY)  # the same seed: the same weights
    expected = trainer.step(synthetic_images(TINY, TINY.effective_batch))
    assert stats.images == TINY.effective_batch == 4
    assert float(stats.loss) == float(expected.loss)
    for mine, theirs in zip(step.trainer.model.parameters(), trainer.model.parameters()):
        assert torch.equal(mine, theirs)
    # The warm-up is one micro-batch: batch images, not batch x accum.
    assert step.warm_up().images == TINY.batch
