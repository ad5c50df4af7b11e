"""Memory per rank without a card (bench.predict.ranks): rank 0 of a fake process group, traced on
real tensors and predicted on fake ones, against closed forms of what FSDP2 shards and DDP
replicates, and against 2 real gloo ranks measuring the same step with the same tracker."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensorMode

from bench.measure.tracked import CATEGORIES
from bench.models.impl import build_unet
from bench.models.workload import build_trainer, parameter_count, synthetic_images
from bench.predict.cuda_rules import CudaRules
from bench.predict.ranks import rank_zero
from bench.predict.trace import CUDA_BLOCK_BYTES, DEFAULT_TARGET, predict, step_memory
from bench.spec import BenchSpec
from ddpm.schedule import NoiseSchedule
from ddpm.unet import AttentionBlock, ResBlock
from tests.helpers import memory_ranks_worker as worker
from tests.helpers import torchrun

FP32 = 4


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def spec(**changes) -> BenchSpec:
    return BenchSpec(**{**worker.TINY, "ranks": 1, "parallel": "none", **changes})


@functools.cache
def memory(s: BenchSpec, fake: bool):
    """Deterministic for a spec on one machine: each traced once per session. Every trace makes
    and ends its own fake group, so none may be left behind."""
    result = step_memory(s, fake=fake)
    assert not dist.is_initialized()
    return result


PARAMS = parameter_count(spec())


def _shapes() -> tuple[list[torch.Size], list[list[torch.Size]]]:
    """The tiny UNet's parameter shapes, all of them and by FSDP2 unit: ddpm.parallel.shard makes
    each ResBlock and attention block a unit and the model the unit of the rest."""
    with torch.device("meta"):
        model = build_unet(spec())
    blocks = [
        list(m.parameters()) for m in model.modules() if isinstance(m, (ResBlock, AttentionBlock))
    ]
    in_blocks = {id(p) for block in blocks for p in block}
    rest = [p for p in model.parameters() if id(p) not in in_blocks]
    return (
        [p.shape for p in model.parameters()],
        [[p.shape for p in unit] for unit in [*blocks, rest]],
    )


SHAPES, UNITS = _shapes()


def shard_bytes(shape: torch.Size, n: int) -> int:
    """Rank 0's share of a float32 parameter: FSDP2 pads dim 0 to a multiple of n and gives each
    rank one chunk of ceil(dim0 / n) rows."""
    return math.ceil(shape[0] / n) * math.prod(shape[1:]) * FP32


def block(nbytes: int) -> int:
    """What the CUDA caching allocator takes for one allocation: whole 512-byte blocks."""
    return -(-nbytes // CUDA_BLOCK_BYTES) * CUDA_BLOCK_BYTES


# ----- FSDP2: weights, gradients and AdamW state sharded by n -------------------------------------


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_fsdp2_shards_weights_gradients_and_adamw_state_by_n(n):
    assert sum(math.prod(s) for s in SHAPES) == PARAMS
    # The elements FSDP2 adds so that each dim 0 splits evenly.
    padding = sum((math.ceil(s[0] / n) * n - s[0]) * math.prod(s[1:]) for s in SHAPES)
    share = sum(shard_bytes(s, n) for s in SHAPES)
    assert share * n == (PARAMS + padding) * FP32

    real = memory(spec(ranks=n, parallel="fsdp", grad_sync="every"), fake=False)
    # After the step, as between steps: rank 0 keeps its shard of the weights, of the gradients
    # (reduce-scattered) and of the EMA, and AdamW's two moments of that shard plus one float32
    # `step` per parameter.
    kept = real.kept.by_category
    assert kept["parameters"] - PARAMS * FP32 / n == padding * FP32 / n
    assert kept["parameters"] == kept["gradients"] == kept["ema"] == share
    assert kept["optimizer_state"] == 2 * share + FP32 * len(SHAPES)
    assert kept["activations"] == kept["temporaries"] == 0
    # The gathered whole parameters are working copies: at the peak the parameters are the shards.
    peak = real.peak.by_category
    assert (peak["parameters"], peak["ema"], peak["optimizer_state"]) == (
        share,
        share,
        kept["optimizer_state"],
    )

    # The prediction: the same shards, each allocation in whole blocks. A parameter's shard is a
    # storage of its own; a unit's gradients share its reduce-scatter output.
    predicted = memory(spec(ranks=n, parallel="fsdp", grad_sync="every"), fake=True)
    blocks = sum(block(shard_bytes(s, n)) for s in SHAPES)
    kept = predicted.kept.by_category
    assert kept["parameters"] == kept["ema"] == blocks
    assert kept["optimizer_state"] == 2 * blocks + block(FP32) * len(SHAPES)
    assert kept["gradients"] == sum(block(sum(shard_bytes(s, n) for s in unit)) for unit in UNITS)
    peak = predicted.peak.by_category
    assert (peak["parameters"], peak["ema"], peak["optimizer_state"]) == (
        blocks,
        blocks,
        kept["optimizer_state"],
    )


@pytest.mark.parametrize("n", [2, 4, 8])
def test_fsdp2_accumulating_without_exchange_holds_whole_gradients(n):
    """grad_sync last: until the last micro-batch each rank accumulates every unit's whole
    gradient (FSDP2 reduce-scatters only when syncing), so the peak holds about (1 - 1/n) of the
    gradients more than exchanging after every micro-batch, which keeps only shards."""
    every = memory(spec(ranks=n, parallel="fsdp", grad_sync="every"), fake=False).peak
    last = memory(spec(ranks=n, parallel="fsdp", grad_sync="last"), fake=False).peak
    assert last.total - every.total == pytest.approx(PARAMS * FP32 * (1 - 1 / n), rel=0.02)
    # The gradients at that peak are the same bytes whatever n: they are not sharded.
    assert (
        last.by_category["gradients"]
        == memory(spec(ranks=2, parallel="fsdp", grad_sync="last"), fake=False).peak.by_category[
            "gradients"
        ]
    )
    predicted = [
        memory(spec(ranks=m, parallel="fsdp", grad_sync="last"), fake=True).peak.by_category[
            "gradients"
        ]
        for m in (2, n)
    ]
    assert predicted[0] == predicted[1]


def cuda_traced_calls(s: BenchSpec) -> set:
    """The calls CudaRules traced on CUDA stand-ins during one step of `s` (rank 0's)."""
    schedule = NoiseSchedule.linear()  # its validation reads values: made outside fake mode
    with (
        rank_zero(s, fake_tensors=True) as mesh,
        FakeTensorMode(allow_non_fake_inputs=True),
        CudaRules(DEFAULT_TARGET) as rules,
    ):
        trainer = build_trainer(s, device="cpu", compiled=False, schedule=schedule, mesh=mesh)
        trainer.step(synthetic_images(s, trainer.world * s.batch * s.accum))
    return set(rules._graphs)


def test_cuda_rules_trace_the_model_alone_inside_fsdp2_units():
    """In bf16 every call with tensors inside autocast is traced under CUDA's rules. Inside an
    FSDP2 unit those must be the model's own calls, with the same shapes (the gathered whole
    parameters), and none of FSDP2's gathers: the same set as without FSDP2."""
    one = cuda_traced_calls(spec(precision="bf16", accum=1))
    assert len(one) > 50  # convolutions, linears, norms, attention, ... each traced once
    assert cuda_traced_calls(spec(precision="bf16", accum=1, ranks=2, parallel="fsdp")) == one


# ----- DDP: a replica per rank, plus its gradient buckets -----------------------------------------


@pytest.mark.parametrize("n", [2, 4, 8])
def test_ddp_keeps_its_bucket_as_the_gradients_and_adds_it_within_a_step(n):
    """DDP allocates one flat bucket of every gradient for the all-reduce when it is built
    (tiny's 0.7 MB of gradients fit in one: DDP's first bucket takes up to 1 MiB). With
    gradient_as_bucket_view each param.grad becomes a view into it at the exchange, so after a
    step the gradients are the bucket alone: one allocation instead of one per parameter. Within
    the step, zero_grad(set_to_none=True) has freed the views, and the micro-batches' fresh
    gradients sit beside the bucket: the peak holds it on top of one rank's. Everything else is
    one rank's."""
    one, ddp = memory(spec(), fake=True), memory(spec(ranks=n, parallel="ddp"), fake=True)
    bucket = block(PARAMS * FP32)
    per_parameter = sum(block(math.prod(s) * FP32) for s in SHAPES)
    mine, theirs = ddp.kept.by_category, one.kept.by_category
    assert {c: mine[c] - theirs[c] for c in CATEGORIES} == {
        **dict.fromkeys(CATEGORIES, 0),
        "gradients": bucket - per_parameter,
    }
    # At the peak the state is one rank's plus the bucket; the last backward frees each fresh
    # gradient once it is copied into the bucket, so the peak may move to another moment of the
    # step, where activations and temporaries differ, but never above one rank's plus the bucket.
    mine, theirs = ddp.peak.by_category, one.peak.by_category
    assert {c: mine[c] - theirs[c] for c in CATEGORIES[:4]} == {
        **dict.fromkeys(CATEGORIES[:4], 0),
        "gradients": bucket,
    }
    assert one.peak.total < ddp.peak.total <= one.peak.total + bucket
    real = memory(spec(ranks=n, parallel="ddp"), fake=False).kept.by_category
    assert real["gradients"] == real["parameters"] == real["ema"] == PARAMS * FP32


# ----- the prediction against 2 real ranks --------------------------------------------------------


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict[int, dict]:
    """torchrun with 2 gloo ranks; on a timeout the launcher and its ranks (its own process
    group) are killed and the test fails with their output."""
    out = tmp_path_factory.mktemp("ranks")
    torchrun.launch(worker.__file__, worker.RANKS, str(out))
    return {r: json.loads((out / f"rank{r}.json").read_text()) for r in range(worker.RANKS)}


@pytest.mark.parametrize("name", list(worker.SPECS))
def test_fake_group_prediction_within_10_percent_of_two_real_ranks(name, two_ranks):
    """Each real rank's tracked peak against rank 0's prediction. Rank 0 of the fake group on
    real tensors is rank 0 of the real group: the fake group changes nothing a rank holds (the
    weights, gradients, AdamW state and EMA to the byte; the whole peak up to the 4-byte loss a
    gloo all-reduce may still hold from the step before). Rank 1 holds a little less: FSDP2
    leaves the padding rows to the last rank, and AdamW and the EMA keep no state for them."""
    s = worker.SPECS[name]
    traced = memory(s, fake=False)
    state = ("parameters", "gradients", "optimizer_state", "ema")
    for when in ("peak", "kept"):
        assert {c: two_ranks[0][name][when][c] for c in state} == {
            c: getattr(traced, when).by_category[c] for c in state
        }, when
    assert abs(sum(two_ranks[0][name]["peak"].values()) - traced.peak.total) <= 4
    predicted = memory(s, fake=True).peak.total
    for rank, measured in two_ranks.items():
        real = sum(measured[name]["peak"].values())
        assert predicted == pytest.approx(real, rel=0.10), (rank, predicted, real)
        # Block rounding only adds: the prediction is never below the real tensors.
        assert predicted >= real, (rank, predicted, real)
    assert sum(two_ranks[1][name]["peak"].values()) <= sum(two_ranks[0][name]["peak"].values())


# ----- where the prediction runs, and the harness -------------------------------------------------


def test_a_rank_of_a_real_group_predicts_in_a_process_of_its_own(tmp_path):
    """Under torchrun the process is in a real group, where fake tensors cannot take part in
    collectives: predict() traces in a spawned process instead, with the same figures."""
    s = spec(ranks=2, parallel="fsdp")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        inside = predict(s)
        assert dist.is_initialized()  # the caller's group is left as it was
    finally:
        dist.destroy_process_group()
    assert inside == predict(s)
