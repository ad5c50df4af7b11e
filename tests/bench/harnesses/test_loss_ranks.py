"""bench.loss across 2 real ranks: a spec's --grad-sync is the one its trainer exchanges
gradients with (the row's grad_sync column is what was trained)."""

from __future__ import annotations

import json

import pytest
import torch.distributed as dist

from bench.models.workload import parameter_count
from bench.spec import BenchSpec
from tests.helpers import loss_ranks_worker as worker
from tests.helpers import torchrun


@pytest.mark.slow
def test_grad_sync_every_exchanges_gradients_after_every_micro_batch(tmp_path):
    torchrun.launch(worker.__file__, worker.RANKS, str(tmp_path))
    got = json.loads((tmp_path / "comms.json").read_text())
    assert [r["grad_sync"] for r in got] == ["last", "every"]
    # DDP all-reduces each gradient bucket per synced backward; the tiny UNet's fp32 parameters
    # fit in DDP's first bucket (1 MiB), so a synced backward is one all-reduce. The step adds
    # one all-reduce of its own (the loss averaged over the ranks).
    params = parameter_count(BenchSpec(preset="tiny", image_size=16, attention="8"))
    assert 4 * params <= dist._DEFAULT_FIRST_BUCKET_BYTES
    exchanges = {"last": 1, "every": worker.ACCUM}
    for run in got:
        assert len(run["steps"]) == worker.STEPS
        assert [s["c10d.allreduce_"] for s in run["steps"]] == (
            [exchanges[run["grad_sync"]] + 1] * worker.STEPS
        ), run
