"""The ranks of tests/bench/predict/test_ranks.py, started by torchrun (2 processes, gloo on
the CPU):

    python -m torch.distributed.run --standalone --nproc-per-node 2 \\
        tests/helpers/memory_ranks_worker.py OUT

Each rank traces one steady-state optimizer step of every spec in SPECS on real tensors, with
the tracker the prediction uses (bench.predict.trace.step_memory, fake=False), and writes the
live bytes by category at the step's peak and after it to OUT/rank<r>.json. The test module
imports SPECS, so both sides trace the same steps.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from bench.predict.trace import step_memory
from bench.spec import BenchSpec
from ddpm import parallel

RANKS = 2
TINY = dict(
    preset="tiny",
    image_size=16,
    attention="8",
    batch=2,
    accum=2,
    precision="fp32",
    device="cpu",
    ranks=RANKS,
)
SPECS = {
    "fsdp-last": BenchSpec(**TINY, parallel="fsdp", grad_sync="last"),
    "fsdp-every": BenchSpec(**TINY, parallel="fsdp", grad_sync="every"),
    "ddp-last": BenchSpec(**TINY, parallel="ddp", grad_sync="last"),
}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    with parallel.session("cpu"):
        results = {}
        for name, spec in SPECS.items():
            memory = step_memory(spec, fake=False)
            results[name] = {"peak": memory.peak.by_category, "kept": memory.kept.by_category}
        (out / f"rank{parallel.rank()}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
