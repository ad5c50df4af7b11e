"""The ranks of tests/ddpm/test_parallel.py, started by torchrun (2 processes, gloo on the CPU):

    python -m torch.distributed.run --standalone --nproc-per-node 2 \\
        tests/helpers/parallel_worker.py OUT

For DDP and for FSDP2 it trains 3 steps of 2 ranks x micro-batch B x ACCUM (saving checkpoints
before step 1 and after step 2), again with grad_sync "every", once more from OUT/one-rank.pt (a
one-rank checkpoint after step 2, written by the test) for the last step, and all 3 steps from
OUT/one-rank-0.pt (one rank's checkpoint before step 1). Rank 0 writes the weights, EMA
shadows, losses and gradient norms it saw, and the collectives of each run's last step (counted by
torch's CommDebugMode), to OUT/results.pt.

The test module imports the settings below, so both sides train the same thing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.debug import CommDebugMode

from ddpm import parallel
from ddpm.config import PRESETS, TrainConfig
from ddpm.schedule import NoiseSchedule
from ddpm.train import Trainer
from ddpm.unet import UNet

RANKS, B, ACCUM, STEPS, SAVE_AT = 2, 2, 2, 3, 2
GLOBAL_BATCH = RANKS * B * ACCUM
# dropout 0 (the tiny preset's): dropout masks come from each rank's own generator, so only a
# model without dropout can take the very steps one rank takes.
MODEL = PRESETS["tiny"]
# grad_clip below the gradient norms these steps see (1.8-3.2), so clipping is at work and must
# use the global norm; lr 1e-3 so that 3 steps move the weights well past float rounding.
TRAIN = dict(accum_steps=ACCUM, lr=1e-3, grad_clip=0.2, seed=5)
# Adam divides each element by its own gradient's size, so float rounding in an element whose
# true gradient is ~0 (attention key biases: softmax ignores a shift shared by all keys) would
# become an O(lr) step; eps 1e-4 keeps such elements linear in their gradient, so the weights
# inherit the gradients' agreement (as in tests/ddpm/test_train.py). The optimizer is still Adam.
ADAM_EPS = 1e-4


def batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(42)
    return [torch.rand(GLOBAL_BATCH, 1, 16, 16, generator=g) * 2 - 1 for _ in range(STEPS)]


def trainer(model: torch.nn.Module, batch_size: int, **changes) -> Trainer:
    config = TrainConfig(batch_size=batch_size, **{**TRAIN, **changes})
    t = Trainer(model, NoiseSchedule.linear(1000), config, device="cpu")
    for group in t.optimizer.param_groups:
        group["eps"] = ADAM_EPS
    return t


def fresh_model(init_seed: int = 0) -> UNet:
    torch.manual_seed(init_seed)
    return UNet(MODEL)


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A parameter or shadow gathered whole, read here without ddpm.parallel's helpers."""
    tensor = tensor.detach()
    return (tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).clone()


def weights(t: Trainer) -> dict:
    module = t.model.module if hasattr(t.model, "module") else t.model  # DDP's inner UNet
    params = {name: whole(p) for name, p in module.named_parameters()}
    shadows = {name: whole(e) for name, e in zip(t.ema.param_names, t.ema.params)}
    return {"params": params, "ema": shadows}


def counted_step(t: Trainer, x0: torch.Tensor) -> tuple:
    """The step's stats and how many of each collective it ran."""
    with CommDebugMode() as comms:
        stats = t.step(x0)
    return stats, {str(op): n for op, n in comms.get_comm_counts().items()}


def run(mode: str, out: Path) -> dict:
    data = batches()
    result = {}

    t = trainer(parallel.wrap(fresh_model(), mode, torch.device("cpu")), B)
    # Before any update the optimizer has no state: saving must not create it (the run would
    # then differ from one rank's).
    t.save(out / f"{mode}-two-ranks-0.pt")
    stats = []
    for step, x0 in enumerate(data[:-1], start=1):
        stats.append(t.step(x0))
        if step == SAVE_AT:
            t.save(out / f"{mode}-two-ranks.pt")
    last, result["comms_last"] = counted_step(t, data[-1])
    stats.append(last)
    result["last"] = weights(t)
    result["loss"] = torch.stack([s.loss for s in stats])
    result["grad_norm"] = torch.stack([s.grad_norm for s in stats])
    result["images"] = [s.images for s in stats]

    t = trainer(parallel.wrap(fresh_model(), mode, torch.device("cpu")), B, grad_sync="every")
    for x0 in data[:-1]:
        t.step(x0)
    result["comms_every"] = counted_step(t, data[-1])[1]
    result["every"] = weights(t)

    # Other initial weights: whatever the run ends with comes from the checkpoint.
    t = trainer(parallel.wrap(fresh_model(init_seed=99), mode, torch.device("cpu")), B)
    t.load(out / "one-rank.pt")
    result["resumed_step"] = t.step_count
    result["resumed_loss"] = t.step(data[SAVE_AT]).loss
    result["resumed"] = weights(t)

    t = trainer(parallel.wrap(fresh_model(init_seed=99), mode, torch.device("cpu")), B)
    t.load(out / "one-rank-0.pt")
    for x0 in data:
        t.step(x0)
    result["from_0"] = weights(t)
    return result


def main(out: Path) -> None:
    torch.set_num_threads(1)
    with parallel.session("cpu"):
        assert parallel.world_size() == RANKS, parallel.world_size()
        results = {mode: run(mode, out) for mode in ("ddp", "fsdp")}
        if parallel.rank() == 0:
            torch.save(results, out / "results.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
