"""One trace at accumulation 2 serves every accumulation past it (bench.predict.trace.accumulated,
bench.predict.batches.StepModel): the step read so at (batch, accumulation) is a real trace at
that accumulation allocation for allocation, its tracked peak by category and the allocator's
figures equal, across levers and trainers."""

from __future__ import annotations

import pytest

from bench.predict.batches import StepModel, step_model
from bench.predict.trace import (
    DEFAULT_TARGET,
    INPUTS,
    MICRO_INPUTS,
    accumulated,
    allocation_stream,
    predict,
)
from bench.spec import BenchSpec
from tests.helpers.guided import guided_spec, needs_guided, tiny_file

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(**changes) -> BenchSpec:
    fields = dict(preset="tiny", image_size=16, attention="8", device="cpu")
    return BenchSpec(**{**fields, **changes})


CASES = {
    "fp32, batch 3 x 5": (tiny(batch=3, accum=5)),
    "bf16 with checkpointing, batch 2 x 7": (
        tiny(batch=2, accum=7, precision="bf16", checkpointing="on")
    ),
    "2 ranks, DDP, batch 1 x 4": (tiny(batch=1, accum=4, ranks=2, parallel="ddp")),
}


def _same_step(found, real) -> None:
    assert found.records() == real.records()
    assert found.peak == real.peak
    a, b = found.predict(DEFAULT_TARGET), predict_figures(real)
    assert (a.alloc_bytes, a.reserved_bytes) == (b.alloc_bytes, b.reserved_bytes)


def predict_figures(stream):
    return stream.predict(DEFAULT_TARGET)


@pytest.mark.parametrize("case", CASES)
def test_the_step_past_two_micro_batches_is_its_own_trace(case):
    """The trace at accumulation 2, its inputs grown, is the trace at the spec's accumulation:
    every allocation and free in order, each of its size; the tracker's peak by category; the
    caching allocator's peak allocated and reserved."""
    spec = CASES[case]
    two = allocation_stream(spec.replace(accum=2))
    real = allocation_stream(spec)
    found = accumulated(two, spec.accum)
    _same_step(found, real)
    # The inputs are what grew: sized for batch x accum images (x0 and noise in float32, one
    # int64 timestep each), by hand.
    c = spec.unet_config()
    images = spec.batch * spec.accum
    image = 4 * c.in_channels * c.image_size**2
    inputs = [e[2] for e in found.events if e[0] == "alloc" and e[3] == INPUTS]
    assert inputs == [images * image, images * image, images * 8]
    assert found.records() != two.records()  # not the step at 2 unchanged


def test_a_step_model_answers_every_accumulation_from_2_on_from_its_traces(monkeypatch):
    """A StepModel of accumulation 6 traces at accumulation 2 and answers 3 and 6 so; at 1 it
    refuses (one micro-batch is another step)."""
    spec = tiny(batch=2, accum=6)
    model = StepModel(spec, DEFAULT_TARGET)
    assert model.traced_spec.accum == 2
    assert model.prediction(2) == predict(spec)
    assert model.prediction(2, accum=3) == predict(spec.replace(accum=3))
    with pytest.raises(ValueError, match="accumulation 1"):
        model.prediction(2, accum=1)
    # Specs that differ only in accumulation past 2 share one model, and so its traces.
    assert step_model(spec, DEFAULT_TARGET) is step_model(spec.replace(accum=9), DEFAULT_TARGET)
    assert step_model(spec, DEFAULT_TARGET) is not step_model(spec.replace(accum=1), DEFAULT_TARGET)


@needs_guided
def test_guided_diffusion_holds_one_micro_batch_at_any_accumulation(tmp_path):
    """guided-diffusion's loop copies one micro-batch at a time: its held inputs do not grow with
    the accumulation, and the step at 2 is the step at 5 unchanged."""
    spec = guided_spec(tiny_file(tmp_path), batch=2, accum=5, device="cpu")
    two = allocation_stream(spec.replace(accum=2))
    real = allocation_stream(spec)
    assert not any(e[0] == "alloc" and e[3] == INPUTS for e in real.events)
    assert any(e[0] == "alloc" and e[3] == MICRO_INPUTS for e in real.events)
    _same_step(accumulated(two, 5), real)
    assert accumulated(two, 5) == two
