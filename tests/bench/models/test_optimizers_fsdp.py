"""--parallel fsdp with the optimizers: those whose own step fails on FSDP2's sharded parameters
(DTensors) are refused in one line, and the failure is real: each steps rank 0's DTensor of a
parameter sharded over 2 ranks here (torch's fake process group, as bench.predict.ranks traces a
rank). torchao's, which shard their state with the parameters, are predicted."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

from bench.models import optimizers
from bench.models.impl import build_unet
from bench.models.optimizer_state import state_bytes
from bench.parsers import SpecError
from bench.predict.trace import CUDA_BLOCK_BYTES, step_memory
from bench.spec import BenchSpec
from bench.sweep.cli import NOT_ON_DTENSORS, check_levers
from ddpm.config import TrainConfig

FSDP = BenchSpec(preset="tiny", image_size=16, attention="8", batch=2, ranks=2, parallel="fsdp")


@pytest.fixture
def mesh():
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    try:
        yield init_device_mesh("cpu", (2,))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", sorted(NOT_ON_DTENSORS))
def test_the_refused_optimizers_fail_on_a_dtensor(mesh, name):
    """One step of the library's optimizer over sharded DTensor parameters raises, as the
    refusal says; the same step over the plain tensors runs. The parameters are two a UNet has:
    a linear layer's weight and its 3-channel output convolution (which 2 ranks split
    unevenly)."""
    shapes = [(64, 128), (3, 128, 3, 3)]
    plain = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
    for p in plain:
        p.grad = torch.randn(p.shape)
    optimizers.build_optimizer(name, plain, TrainConfig()).step()
    sharded = []
    for shape in shapes:
        p = torch.nn.Parameter(distribute_tensor(torch.randn(shape), mesh, [Shard(0)]))
        p.grad = distribute_tensor(torch.randn(shape), mesh, [Shard(0)])
        sharded.append(p)
    with pytest.raises((RuntimeError, NotImplementedError)):
        optimizers.build_optimizer(name, sharded, TrainConfig()).step()


@pytest.mark.parametrize("name", sorted(NOT_ON_DTENSORS))
def test_fsdp_refuses_them_in_one_line(name):
    with pytest.raises(SpecError, match=f"--optimizer {name} does not run on FSDP2"):
        check_levers([FSDP.replace(optimizer=name)], predict_only=True)
    check_levers([FSDP.replace(optimizer=name, parallel="ddp")], predict_only=True)
    check_levers([FSDP.replace(optimizer="ao-adamw8bit")], predict_only=True)


def test_torchaos_state_is_predicted_for_rank_zeros_shards():
    """FSDP2 on 2 ranks: rank 0 keeps ceil(dim 0 / 2) rows of each parameter, and torchao's
    8-bit state of those rows (quantized where the shard passes 4,096 values in whole blocks),
    each tensor in whole 512-byte blocks."""
    with torch.device("meta"):
        model = build_unet(FSDP)
        shards = [torch.empty(-(-p.shape[0] // 2), *p.shape[1:]) for p in model.parameters()]
    predicted = step_memory(FSDP.replace(optimizer="ao-adamw8bit"), fake=True)
    expected = state_bytes("ao-adamw8bit", shards, round_to=CUDA_BLOCK_BYTES)
    assert predicted.kept.by_category["optimizer_state"] == expected
