"""The ranks of tests/bench/harnesses/test_loss_ranks.py, started by torchrun (2 processes, gloo
on the CPU):

    python -m torch.distributed.run --standalone --nproc-per-node 2 \
        tests/helpers/loss_ranks_worker.py OUT

Each rank reads ARGV with bench.loss's own parser and make_specs, trains every spec with the
harness's measure (the route `python -m bench.loss` takes in each spec's process), and counts the
collectives each optimizer step runs (torch's CommDebugMode around Trainer.step). Rank 0 writes
each spec's grad_sync and its counts per step to OUT/comms.json. The test module imports ARGV and
ACCUM, so both sides mean the same run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch.distributed.tensor.debug import CommDebugMode

from bench import loss as loss_command
from bench.core import RunContext
from bench.harnesses import loss
from ddpm import parallel
from ddpm.train import Trainer

RANKS, ACCUM, STEPS = 2, 2, 2
ARGV = [
    "--ranks",
    str(RANKS),
    "--parallel",
    "ddp",
    "--grad-sync",
    "last,every",
    "--batch",
    "2",
    "--accum",
    str(ACCUM),
    "--precision",
    "fp32",
    "--steps",
    str(STEPS),
    "--val-every",
    "0",
    "--val-images",
    "8",
    "--device",
    "cpu",
]


def main(out: Path) -> None:
    torch.set_num_threads(1)
    counts: list[dict] = []
    step = Trainer.step

    def counted(self, x0):
        with CommDebugMode() as comms:
            stats = step(self, x0)
        counts.append({str(op): n for op, n in comms.get_comm_counts().items()})
        return stats

    Trainer.step = counted
    with parallel.session("cpu"):
        assert parallel.world_size() == RANKS, parallel.world_size()
        args = loss_command.build_loss_parser().parse_args([*ARGV, "--out", str(out)])
        results = []
        for spec in loss_command.make_specs(args):
            counts.clear()
            loss.measure(spec, RunContext(out, "r", options=loss_command.loss_options(args)))
            results.append({"grad_sync": spec.grad_sync, "steps": list(counts)})
        if parallel.rank() == 0:
            (out / "comms.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
