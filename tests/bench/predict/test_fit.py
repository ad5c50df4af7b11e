"""bench.predict.fit: does a spec fit a card, with what headroom, and the largest batch that
does. The arithmetic against an allocator case worked out by hand from the caching allocator's
rules; the search against batches whose answer is known."""

from __future__ import annotations

import pytest

from bench.predict.allocator import replay
from bench.predict.fit import SEARCH_LIMITS, Fit, largest, largest_batch, predict_fit
from bench.predict.trace import Prediction, step_peak
from bench.spec import BenchSpec

MiB = 2**20
# The cuBLAS workspace of one thread on sm86 (aten's CublasHandlePool.cpp, ":4096:2:16:8"):
# 2 x 4096 KiB + 8 x 16 KiB.
WORKSPACE = 8 * MiB + 128 * 1024


def tiny(**changes) -> BenchSpec:
    fields = dict(preset="tiny", image_size=16, attention="8", batch=2, device="cpu")
    return BenchSpec(**{**fields, **changes})


def hand_case() -> Prediction:
    """A step worked out by hand under the allocator's rules (bench/predict/allocator.py):
    - the forward's workspace, 8.125 MiB: large pool, under 10 MiB, so a new 20 MiB segment,
      split (11.875 MiB left, more than 1 MiB);
    - the backward's, 8.125 MiB: best fit is that 11.875 MiB block, split again (3.75 left);
    - a 12 MiB activation: 10 MiB or more, a segment of its own rounded to 2 MiB: 12 MiB;
    - freed, then a 3 MiB temporary: the 3.75 MiB block fits, and its 0.75 MiB rest (not
      over 1 MiB) is not split off.
    Peak allocated: 8.125 + 8.125 + 12 = 28.25 MiB; reserved: 20 + 12 = 32 MiB."""
    events = [
        ("alloc", "cublas-forward", WORKSPACE),
        ("alloc", "cublas-backward", WORKSPACE),
        ("alloc", "activation", 12 * MiB),
        ("free", "activation"),
        ("alloc", "temporary", 3 * MiB),
    ]
    allocator = replay(events)
    assert (allocator.peak_allocated, allocator.peak_reserved) == (28.25 * MiB, 32 * MiB)
    return Prediction(
        None, allocator.peak_allocated, allocator.peak_reserved, 2 * WORKSPACE, (8, 6)
    )


def test_a_hand_computed_step_fits_with_the_headroom_worked_out_by_hand():
    """The card holds 32 MiB reserved + the 32 MiB cuDNN allowance + a 426 MiB context = 490 MiB:
    it fits 490 MiB exactly (headroom 0), not 489.5."""
    exact = Fit(hand_case(), context_mib=426.0, budget_mib=490.0)
    assert exact.figures() == {
        "target_sm": 86,
        "predicted_alloc_mib": 28.25,
        "predicted_reserved_mib": 32.0,
        "cublas_workspace_mib": 16.25,
        "cudnn_workspace_mib": 32.0,
        "context_mib": 426.0,
        "predicted_cuda_mib": 490.0,
        "budget_mib": 490.0,
        "fits": True,
        "headroom_mib": 0.0,
    }
    short = Fit(hand_case(), context_mib=426.0, budget_mib=489.5)
    assert short.fits is False and short.headroom_mib == -0.5


def test_a_real_step_holds_its_tensors_and_workspaces_in_whole_segments():
    """tiny on the default card: both workspaces held, every tensor's block at least its
    512-byte rounded size, segments whole multiples of 2 MiB; 100 MiB is too little (the
    context and the cuDNN allowance alone are 458 MiB), 8 GiB plenty."""
    spec = tiny(budget=100.0)
    fit = predict_fit(spec)
    row = fit.figures()
    tensors = step_peak(spec, fake=True).mib()
    assert row["target_sm"] == 86 and row["context_mib"] == 426.0
    assert row["cublas_workspace_mib"] == 2 * WORKSPACE / MiB
    assert row["predicted_alloc_mib"] >= tensors + row["cublas_workspace_mib"]
    assert row["predicted_reserved_mib"] >= row["predicted_alloc_mib"]
    assert row["predicted_reserved_mib"] % 2 == 0
    assert fit.fits is False and fit.headroom_mib < 100.0 - 458.0
    roomy = predict_fit(spec.replace(budget=8192.0), context_mib=500.0)
    assert roomy.fits is True and 0 < roomy.headroom_mib < 8192.0 - 500.0


@pytest.mark.parametrize("answer", [0, 1, 2, 3, 100, 65_535, 65_536, 65_537, 99_999, 1 << 20])
def test_largest_finds_the_last_batch_that_fits(answer):
    """fits(n) = n <= answer: the search returns answer, or the limit when answer passes it,
    in at most 2 log2(limit) + 1 probes."""
    limit = 1 << 17
    probes = []
    found = largest(lambda n: probes.append(n) or n <= answer, limit)
    assert found == min(answer, limit)
    assert len(probes) <= 2 * 17 + 1 and max(probes) <= limit


def test_the_largest_batch_keeps_every_other_axis_and_its_limit():
    """A spec across 8 ranks is searched at 8 ranks (its per-rank batch); a search that always
    fits stops at the limit of where its answer comes from."""
    asked = []
    spec = tiny(ranks=8, parallel="fsdp", accum=2)
    assert largest_batch(spec, lambda s: asked.append(s) or s.batch <= 5, "predicted") == 5
    assert {s.replace(batch=2) for s in asked} == {spec}
    assert largest_batch(spec, lambda s: True, "measured") == SEARCH_LIMITS["measured"] == 1 << 16
    assert largest_batch(spec, lambda s: True, "predicted") == 1 << 24
