"""The plan's step times from the kernels' lines (bench.planning.timing): the kernels read off
the traces at batches 2 and 3 are the trace at a batch never traced, kernel for kernel, and the
time is the time model's own at that batch; a trace off the lines drops them."""

from __future__ import annotations

import pytest

from bench.cards import CARDS
from bench.planning import timing
from bench.planning.timing import KernelLines, step_time
from bench.predict.batches import PAIR_BATCHES
from bench.predict.kernels import Kernel
from bench.predict.runtime import train_step_kernels, training_figures
from bench.spec import BenchSpec

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(**changes) -> BenchSpec:
    fields = dict(preset="tiny", image_size=16, attention="8", predict_only=True)
    return BenchSpec(**{**fields, **changes})


CASES = {
    "fp32, batch 5": tiny(batch=5),
    "fp16 with checkpointing, batch 6 x 2": tiny(
        batch=6, accum=2, precision="fp16", checkpointing="on"
    ),
    "2 ranks, DDP, batch 4 x 2": tiny(batch=4, accum=2, ranks=2, parallel="ddp"),
}


@pytest.mark.parametrize("case", CASES)
def test_the_kernels_off_the_lines_are_the_trace_at_another_batch(case):
    spec, card = CASES[case], CARDS["rtx3070"]
    lines = KernelLines(spec, card)
    found = lines.kernels(spec.batch)
    assert set(lines.traced) == set(PAIR_BATCHES) and lines.unpaired is None  # not spec.batch
    real = train_step_kernels(spec, card)
    assert found == real
    assert training_figures(spec, card, kernels=found) == training_figures(spec, card, kernels=real)


def test_a_plan_s_step_time_at_an_untraced_split_is_the_model_s_own(monkeypatch, tmp_path):
    """Batch 5 at accumulation 4 and 1 x 7: the line through accumulation 1 and 2, each read off
    the kernels' lines (or batch 1 traced), against the model asked at that very split."""
    monkeypatch.setenv("DDPM_BENCH_TRACE_CACHE", str(tmp_path))
    monkeypatch.setattr(timing, "_lines", {})
    card = CARDS["t4"]
    for batch, accum in ((5, 4), (1, 7)):
        spec = tiny(batch=batch, accum=accum, card="t4")
        found = step_time(spec, card)
        asked = training_figures(spec, card)
        assert found.step_s == pytest.approx(asked["predicted_step_s"], rel=1e-9)
        assert found.high_s == pytest.approx(asked["predicted_step_s_high"], rel=1e-9)


def synthetic(batch: int) -> list[Kernel]:
    """A step whose one GEMM's FLOPs are on a line through batches 2 and 3 but not at 5."""
    return [
        Kernel("aten.mm", "matmul", flops=max(2 * batch, 3 * batch - 3), gemm=(1, batch, 8, 8)),
        Kernel("aten.add", "memory", bytes=12 * batch),
    ]


def test_a_trace_off_the_lines_drops_them(monkeypatch):
    monkeypatch.setattr(timing, "train_step_kernels", lambda spec, card: synthetic(spec.batch))
    lines = KernelLines(tiny(), CARDS["t4"])
    # Read off the lines: 2 x 4 FLOPs, as batches 2 and 3 give, where the step has 9.
    assert lines.kernels(4) == [
        Kernel("aten.mm", "matmul", flops=8, gemm=(1, 4, 8, 8)),
        Kernel("aten.add", "memory", bytes=48),
    ]
    assert set(lines.traced) == set(PAIR_BATCHES)
    assert not lines.verify(5)  # 12 FLOPs, not the line's 10
    assert lines.lines is None and "batch 5" in lines.unpaired
    assert lines.kernels(4) == synthetic(4) and 4 in lines.traced  # traced from now on
    assert lines.verify(7)  # nothing left to check
