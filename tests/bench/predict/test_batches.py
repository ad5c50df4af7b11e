"""One trace serves every batch (bench.predict.batches): the step read off the lines of two
traces against a real trace at batches never traced, across models and levers; the fallback
where two traces do not pair; the search that checks its answer against a trace of its own."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench.harnesses import memory
from bench.predict import batches
from bench.predict.allocator import SMALL_SIZE
from bench.predict.batches import PAIR_BATCHES, StepModel
from bench.predict.trace import DEFAULT_TARGET, allocation_stream, predict
from bench.spec import BenchSpec
from tests.helpers.steps import MiB, synthetic_steps

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(**changes) -> BenchSpec:
    fields = dict(preset="tiny", image_size=16, attention="8", accum=1, device="cpu")
    return BenchSpec(**{**fields, **changes})


CASES = {
    "tiny fp32, attention, batch 100": (tiny(), 100),
    "tiny bf16, accumulation 3": (tiny(precision="bf16", accum=3), 9),
    "tiny fp16, checkpointing": (tiny(precision="fp16", checkpointing="on"), 9),
    "tiny without attention": (tiny(attention="none"), 7),
    "tiny on 2 ranks, DDP, accumulation 2": (tiny(ranks=2, parallel="ddp", accum=2), 6),
    "tiny on 4 ranks, FSDP2": (tiny(ranks=4, parallel="fsdp"), 6),
    "ddpm-cifar10 fp32, batch 37": (BenchSpec(preset="ddpm-cifar10", accum=1), 37),
}


@pytest.mark.parametrize("case", CASES)
def test_the_lines_of_two_traces_are_the_trace_at_another_batch(case):
    """The step at a batch never traced, read off the lines of the traces at 2 and 3, is the
    trace at that batch allocation for allocation, and the allocator makes the same of it."""
    spec, batch = CASES[case]
    model = StepModel(spec, DEFAULT_TARGET, many=True)
    read = model.stream(batch)
    assert model.lines is not None and model.unpaired is None
    assert set(model.traced) == set(PAIR_BATCHES)  # `batch` itself was never traced
    real = allocation_stream(spec.replace(batch=batch))
    assert read.records() == real.records()
    found, expected = model.prediction(batch), predict(spec.replace(batch=batch))
    assert (found.alloc_bytes, found.reserved_bytes) == (
        expected.alloc_bytes,
        expected.reserved_bytes,
    )
    assert found.tensors is None  # no tracker ran at this batch


def test_the_allocator_rounds_each_batch_its_own_way():
    """Sizes that the small pool serves at batch 3 and the large one at 100: the pools and
    segments come from the replay of each batch's sizes, not from the two traces' figures."""
    spec, batch = CASES["tiny fp32, attention, batch 100"]
    model = StepModel(spec, DEFAULT_TARGET, many=True)
    sizes = [
        (e[2], f[2])
        for e, f in zip(model.stream(3).events, model.stream(batch).events)
        if e[0] == "alloc"
    ]
    assert any(small <= SMALL_SIZE < large for small, large in sizes)
    two, three, hundred = (model.prediction(n).reserved_bytes for n in (2, 3, batch))
    assert hundred != three + (three - two) * (batch - 3)  # not a line in the batch


def test_batch_1_is_its_own_trace():
    """A reshape of one image's attention heads is a view, of two a copy: batch 1 is not the
    others' step, so it is traced, never read off the lines."""
    spec = tiny()
    model = StepModel(spec, DEFAULT_TARGET, many=True)
    assert model.prediction(1) == predict(spec.replace(batch=1))
    assert 1 in model.traced


def test_traces_that_do_not_pair_are_traced_at_each_batch(monkeypatch):
    """Paired at batches 1 and 2, tiny's steps differ (a copy at 2 that 1 makes as a view): the
    model says so and traces each batch it is asked, which is then the trace itself."""
    monkeypatch.setattr(batches, "PAIR_BATCHES", (1, 2))
    spec = tiny()
    model = StepModel(spec, DEFAULT_TARGET, many=True)
    found = model.prediction(5)
    assert model.lines is None
    assert "do not pair" in model.unpaired and "aten.clone.default" in model.unpaired
    assert set(model.traced) == {1, 2, 5}
    assert found == predict(spec.replace(batch=5))


def test_a_search_whose_answer_is_off_the_lines_searches_again_by_trace(monkeypatch):
    """Activations of 4 MiB per 4 images begun (not affine: a block of 4 images at a time) pair
    at 2 and 3 as a constant, so the lines say everything fits; the trace of that answer is off
    the lines, and the search runs again tracing each batch. By hand at 100 GiB: the cuBLAS
    workspaces' 20 MiB segment, the weights' 2 MiB one, 4 ceil(n / 4) MiB of activations, 32
    MiB of cuDNN allowance and 426 of context: 4 ceil(n / 4) <= 101,920, n <= 101,920."""
    traced = synthetic_steps(monkeypatch, lambda n: 4 * MiB * -(-n // 4))
    spec = tiny(find_max_batch=True, predict_only=True, budget=102_400.0)
    said = []
    row = memory.max_batch_row(spec, SimpleNamespace(say=said.append))
    assert row["batch"] == 101_920 and row["fits"] is True
    assert traced[:3] == [2, 3, 1 << 24]  # the lines' answer: the search's limit, off the lines
    (line,) = said
    assert line.startswith("Each batch traced: the trace at batch 16777216 is off the lines")
