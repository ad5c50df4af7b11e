"""Data parallelism: joining torchrun's process group, each rank's share of the global batch, and
2 ranks (DDP and FSDP2, gloo on the CPU) taking the very steps one rank takes with twice the
micro-batch: losses, gradient norms, weights, EMA, the gradient exchanges and checkpoints saved on
one rank count and resumed on the other."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from ddpm import parallel
from ddpm.config import TrainConfig
from ddpm.schedule import NoiseSchedule
from ddpm.train import Trainer
from ddpm.unet import AttentionBlock, ResBlock, UNet
from tests.helpers import parallel_worker as worker
from tests.helpers import torchrun

INIT_PROCESS_GROUP = dist.init_process_group  # the real one, for the fake group below
MODES = ("ddp", "fsdp")
TORCHRUN_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)


# --------------------------------------------------------------------------- the process group


@pytest.fixture
def not_launched(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def launched_as(monkeypatch):
    """torchrun's variables for one rank, with init_process_group recorded instead of run."""
    calls = []
    monkeypatch.setattr(
        dist, "init_process_group", lambda backend, **kw: calls.append((backend, kw))
    )

    def set_env(rank: int, local_rank: int, local_world: int, world: int) -> list:
        for name, value in (
            ("RANK", rank),
            ("LOCAL_RANK", local_rank),
            ("LOCAL_WORLD_SIZE", local_world),
            ("WORLD_SIZE", world),
        ):
            monkeypatch.setenv(name, str(value))
        return calls

    yield set_env
    parallel.teardown()  # forgets the group it believes it made (none was)


def test_without_torchrun_one_process_is_rank_0_of_1(not_launched):
    assert not parallel.launched()
    assert parallel.init("cpu") == torch.device("cpu")
    assert not dist.is_initialized()
    assert (parallel.rank(), parallel.world_size()) == (0, 1)
    parallel.teardown()  # nothing to end


def test_torchrun_on_the_cpu_joins_with_gloo(launched_as):
    calls = launched_as(rank=3, local_rank=1, local_world=2, world=4)
    assert parallel.init("cpu") == torch.device("cpu")
    assert calls == [("gloo", {})]


def test_torchrun_on_cuda_binds_each_rank_to_its_card(launched_as, fake_cuda):
    gpu = fake_cuda(count=2)
    calls = launched_as(rank=3, local_rank=1, local_world=2, world=4)
    assert parallel.init("cuda") == torch.device("cuda", 1)
    assert calls == [("nccl", {"device_id": torch.device("cuda", 1)})]
    assert ("set_device", 1) in gpu.calls


def test_more_ranks_than_cards_is_a_one_line_error(launched_as, fake_cuda):
    fake_cuda(count=1)
    calls = launched_as(rank=0, local_rank=0, local_world=2, world=2)
    with pytest.raises(RuntimeError) as error:
        parallel.init("cuda")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("2 ranks on this node but 1 CUDA card(s)")
    assert "--nproc-per-node 1" in message
    assert calls == []  # refused before joining: no rank waits for one that will never come


@pytest.fixture
def fake_group():
    """An already-initialized group of 2 in which this process is rank 1: a fake backend, whose
    collectives do nothing (what a memory prediction runs under)."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    INIT_PROCESS_GROUP("fake", store=FakeStore(), rank=1, world_size=2)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mode", MODES)
def test_a_group_already_there_is_used_and_kept(fake_group, launched_as, mode):
    calls = launched_as(rank=1, local_rank=1, local_world=2, world=2)
    assert parallel.init("cpu") == torch.device("cpu")
    assert calls == []  # joined nothing: the group there is this process's
    assert (parallel.rank(), parallel.world_size()) == (1, 2)
    torch.manual_seed(0)
    model = parallel.wrap(UNet(worker.MODEL), mode, torch.device("cpu"))
    trainer = Trainer(model, NoiseSchedule.linear(1000), TrainConfig(batch_size=2, accum_steps=3))
    assert (trainer.rank, trainer.world) == (1, 2)
    # Micro-batch i of the 12 images is [4i, 4i+4); rank 1 takes its second pair.
    assert trainer.share(torch.arange(12)).tolist() == [2, 3, 6, 7, 10, 11]
    with pytest.raises(
        ValueError,
        match=r"got 6 images.*ranks\*batch_size\*accum_steps = "
        r"2\*2\*3 = 12\.",
    ):
        trainer.step(torch.zeros(6, 1, 16, 16))
    parallel.teardown()
    assert dist.is_initialized()  # not init's group: teardown leaves it to its maker


def test_ema_of_a_sharded_model_keeps_only_this_ranks_shard(fake_group):
    from torch.distributed.tensor import DTensor

    from ddpm.ema import EMA

    torch.manual_seed(0)
    model = parallel.wrap(UNet(worker.MODEL), "fsdp", torch.device("cpu"))
    ema = EMA(model, decay=0.9999, warmup=True)
    params = list(model.parameters())
    for p, e in zip(params, ema.params):
        assert isinstance(e, DTensor) and e.placements == p.placements
        assert e.to_local().shape == p.to_local().shape  # a shard, not the whole tensor
    before = [p.to_local().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.to_local().add_(1.0)
    ema.update(model)
    # The first update's warm-up decay is min(0.9999, 1/10) = 0.1.
    for e, old in zip(ema.params, before):
        torch.testing.assert_close(e.to_local(), 0.1 * old + 0.9 * (old + 1.0))
    with ema.swap_into(model):
        for p, e in zip(params, ema.params):
            assert torch.equal(p.to_local(), e.to_local())
    for p, old in zip(params, before):
        assert torch.equal(p.to_local(), old + 1.0)


# --------------------------------------------------------------------------- 2 ranks vs 1


def flat(tensors: dict) -> torch.Tensor:
    return torch.cat([t.flatten() for t in tensors.values()])


def assert_same_weights(got: dict, want: dict, start: dict) -> None:
    """Float rounding only. The two runs sum the same per-image gradients in another order (two
    halves averaged across ranks vs one mean), ~1e-7 relative, and Adam (eps 1e-4, see the
    worker) passes that on linearly. Measured: the largest difference 1.19e-7 (one float32 ulp
    at |w| ~ 1) and the whole vector 1.7e-6 of the update's size; the bounds leave 8x and 6x.
    Images trained twice or skipped would move weights by the order of the update itself."""
    assert got.keys() == want.keys()
    got, want, start = flat(got), flat(want), flat(start)
    update = (want - start).norm()
    assert update > 1e-3 * want.norm()  # the steps happened
    assert (got - want).norm() <= 1e-5 * update
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def launch(out: Path) -> None:
    torchrun.launch(worker.__file__, worker.RANKS, str(out))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The one-rank reference (micro-batch 2B, a checkpoint after step 2), then the 2-rank runs."""
    out = tmp_path_factory.mktemp("parallel")
    data = worker.batches()
    one = worker.trainer(worker.fresh_model(), worker.RANKS * worker.B)
    one.save(out / "one-rank-0.pt")
    stats = []
    for step, x0 in enumerate(data, start=1):
        stats.append(one.step(x0))
        if step == worker.SAVE_AT:
            one.save(out / "one-rank.pt")
    reference = {
        "loss": torch.stack([s.loss for s in stats]),
        "grad_norm": torch.stack([s.grad_norm for s in stats]),
        **worker.weights(one),
        "start": {n: p.detach() for n, p in worker.fresh_model().named_parameters()},
    }
    launch(out)
    return reference, torch.load(out / "results.pt"), out


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_two_ranks_take_the_steps_of_one_rank_with_twice_the_batch(runs, mode):
    ref, results, _ = runs
    got = results[mode]
    assert got["images"] == [worker.GLOBAL_BATCH] * worker.STEPS
    # The global mean (measured: 1.2e-7 relative, one float32 ulp); each rank's own mean would
    # differ from it by the order of the loss.
    torch.testing.assert_close(got["loss"], ref["loss"], rtol=1e-6, atol=0)
    # The global norm (clipping acts on it: grad_clip is below every step's norm; measured equal
    # to the last bit). One rank's own shard (FSDP2) or an unaveraged sum (DDP) would be off by
    # a factor.
    assert (ref["grad_norm"] > worker.TRAIN["grad_clip"]).all()
    torch.testing.assert_close(got["grad_norm"], ref["grad_norm"], rtol=1e-5, atol=0)
    assert_same_weights(got["last"]["params"], ref["params"], ref["start"])
    assert_same_weights(got["last"]["ema"], ref["ema"], ref["start"])


def fsdp_units(model: torch.nn.Module) -> int:
    """parallel.shard's units: every ResBlock and attention block, and the root."""
    return 1 + sum(isinstance(m, (ResBlock, AttentionBlock)) for m in model.modules())


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_grad_sync_every_exchanges_per_micro_batch_and_changes_no_weights(runs, mode):
    ref, results, _ = runs
    got = results[mode]
    assert_same_weights(got["every"]["params"], got["last"]["params"], ref["start"])
    assert_same_weights(got["every"]["ema"], got["last"]["ema"], ref["start"])
    last, every = got["comms_last"], got["comms_every"]
    model = worker.fresh_model()
    if mode == "fsdp":
        # One reduce-scatter per unit per synced backward: once a step, or once per micro-batch.
        # The step's one c10d all-reduce is the loss (the norm is a functional all-reduce).
        units = fsdp_units(model)
        assert last["c10d._reduce_scatter_base_"] == units
        assert every["c10d._reduce_scatter_base_"] == worker.ACCUM * units
        assert last["c10d.allreduce_"] == every["c10d.allreduce_"] == 1
    else:
        # DDP all-reduces each gradient bucket per synced backward. The tiny UNet's 0.7 MB of
        # parameters fit in DDP's smallest bucket (its first, 1 MiB): one bucket. The loss adds
        # one all-reduce per step.
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        assert nbytes <= dist._DEFAULT_FIRST_BUCKET_BYTES
        assert last["c10d.allreduce_"] == 1 + 1
        assert every["c10d.allreduce_"] == worker.ACCUM + 1


def structure(state):
    """Names, nesting, shapes and dtypes: what one rank's checkpoint format is made of."""
    if isinstance(state, torch.Tensor):
        return ("tensor", tuple(state.shape), state.dtype, state.device.type)
    if isinstance(state, dict):
        return {k: structure(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [structure(v) for v in state]
    return type(state).__name__


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_a_two_rank_checkpoint_is_one_rank_format_and_resumes_on_one_rank(runs, mode):
    ref, _, out = runs
    for suffix in ("-0", ""):  # before step 1 (no optimizer state yet) and after step 2
        one = torch.load(out / f"one-rank{suffix}.pt", weights_only=True)
        two = torch.load(out / f"{mode}-two-ranks{suffix}.pt", weights_only=True)
        assert list(two) == list(one)
        for key in one:
            assert structure(two[key]) == structure(one[key]), key
    # Whole tensors equal to one rank's at the same step (float rounding, as the weights): the
    # shards were gathered, the Adam moments numbered as one rank numbers them.
    one = torch.load(out / "one-rank.pt", weights_only=True)
    two = torch.load(out / f"{mode}-two-ranks.pt", weights_only=True)
    assert two["step"] == one["step"] == worker.SAVE_AT
    assert torch.equal(two["rng"]["trainer"], one["rng"]["trainer"])  # the same global draws
    assert two["optimizer"]["param_groups"] == one["optimizer"]["param_groups"]
    for name in one["model"]:
        torch.testing.assert_close(two["model"][name], one["model"][name], rtol=0, atol=1e-6)
        torch.testing.assert_close(
            two["ema"]["params"][name], one["ema"]["params"][name], rtol=0, atol=1e-6
        )
    for i, moments in one["optimizer"]["state"].items():
        for key, value in moments.items():
            # Measured: 4e-6 of each tensor's largest element.
            scale = float(value.abs().max())
            torch.testing.assert_close(
                two["optimizer"]["state"][i][key], value, rtol=0, atol=1e-4 * scale
            )

    resumed = worker.trainer(worker.fresh_model(init_seed=99), worker.RANKS * worker.B)
    resumed.load(out / f"{mode}-two-ranks.pt")
    stats = resumed.step(worker.batches()[worker.SAVE_AT])
    torch.testing.assert_close(stats.loss, ref["loss"][-1], rtol=1e-6, atol=0)
    assert_same_weights(worker.weights(resumed)["params"], ref["params"], ref["start"])
    assert_same_weights(worker.weights(resumed)["ema"], ref["ema"], ref["start"])


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_a_one_rank_checkpoint_resumes_on_two_ranks(runs, mode):
    ref, results, _ = runs
    got = results[mode]
    assert got["resumed_step"] == worker.SAVE_AT
    torch.testing.assert_close(got["resumed_loss"], ref["loss"][-1], rtol=1e-6, atol=0)
    assert_same_weights(got["resumed"]["params"], ref["params"], ref["start"])
    assert_same_weights(got["resumed"]["ema"], ref["ema"], ref["start"])
    # From one rank's checkpoint before step 1, whose optimizer has no state yet.
    assert_same_weights(got["from_0"]["params"], ref["params"], ref["start"])
    assert_same_weights(got["from_0"]["ema"], ref["ema"], ref["start"])
