"""The public training runs the step-time model is held to: one entry each, its configuration as
its source gives it, its measured steps per second and how they follow from the source's words.

A run is predicted as `bench.throughput --card CARD --predict-only` predicts its spec, with the
run's own training loop where it differs from ours (`recipe`: the public code's optimizer, EMA,
upsampling), and one rank of its DDP run where it had several cards. `calibrate` says whether
its constants are fitted on it; every run is also predicted by constants fitted without it
(bench.predict.calibrate). A new run is one more entry here and a rerun of
`python -m bench.predict.calibrate`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bench.spec import BenchSpec
from ddpm.train import Trainer
from ddpm.unet import Upsample


@dataclass(frozen=True)
class PublicRun:
    key: str
    source: str  # where the figure is published
    setup: str  # the configuration, as the source gives it
    spec: BenchSpec  # what bench.throughput predicts for it (one rank)
    measured_it_s: float  # optimizer steps per second of one rank
    derivation: str  # how measured_it_s follows from the source's words
    recipe: tuple[str, ...] = ()  # the run's own training loop, where it is not ours (RECIPES)
    calibrate: bool = True  # the constants are fitted on it


def textbook_upsample(trainer: Trainer) -> None:
    """Nearest x2 then a 3x3 convolution, as the public code computes it (ours computes the
    same function with fewer FLOPs: ddpm.unet.Upsample)."""
    for module in trainer.module.modules():
        if isinstance(module, Upsample):
            module.phased = False


def foreach_adam(trainer: Trainer) -> None:
    """torch.optim.Adam with torch's defaults: the foreach kernels on CUDA."""
    lr = trainer.optimizer.param_groups[0]["lr"]
    trainer.optimizer = torch.optim.Adam(trainer.model.parameters(), lr=lr)


class StateDictEMA:
    """torchcfm's `ema(source, target, decay)`: for every state_dict entry,
    target.copy_(target * decay + source * (1 - decay)), one tensor at a time."""

    def __init__(self, model: nn.Module, decay: float = 0.9999):
        self.decay = decay
        self.target = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for key, source in model.state_dict().items():
            target = self.target[key]
            target.copy_(target * self.decay + source * (1 - self.decay))


class LerpEMA:
    """EDM's EMA: p_ema.copy_(p_net.detach().lerp(p_ema, beta)) for every parameter, and EDM's
    guard on the gradients before its optimizer step, nan_to_num on each (both once a step)."""

    def __init__(self, model: nn.Module, beta: float = 0.999):
        self.beta = beta
        self.params = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for p_ema, p_net in zip(self.params, model.parameters(), strict=True):
            p_ema.copy_(p_net.detach().lerp(p_ema, self.beta))


def state_dict_ema(trainer: Trainer) -> None:
    trainer.ema = StateDictEMA(trainer.module)


def lerp_ema(trainer: Trainer) -> None:
    trainer.ema = LerpEMA(trainer.module)


def nan_to_num_grads(trainer: Trainer) -> None:
    """EDM's training loop runs nan_to_num on every gradient before the optimizer step."""
    step = trainer.optimizer.step

    def guarded_step(*args, **kwargs):
        for p in trainer.model.parameters():
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
        return step(*args, **kwargs)

    trainer.optimizer.step = guarded_step


RECIPES: dict[str, Callable[[Trainer], None]] = {
    "textbook upsample": textbook_upsample,
    "foreach Adam": foreach_adam,
    "state_dict EMA": state_dict_ema,
    "lerp EMA": lerp_ema,
    "nan_to_num gradients": nan_to_num_grads,
}


def recipe_of(run: PublicRun) -> Callable[[Trainer], None] | None:
    if not run.recipe:
        return None

    def apply(trainer: Trainer) -> None:
        for name in run.recipe:
            RECIPES[name](trainer)

    return apply


# torchcfm's CIFAR-10 UNet (examples/images/cifar10/train_cifar10.py): the DDPM layout (ch 128,
# mults 1,2,2,2, two residual blocks, attention at 16, dropout 0.1) with 4 heads of 64
# channels, 35.7M parameters; fp32; batch 128; Adam; grad clipping 1.0; its state_dict EMA.
TORCHCFM = BenchSpec(preset="ddpm-cifar10", heads="4", batch=128, precision="fp32")
TORCHCFM_RECIPE = ("textbook upsample", "foreach Adam", "state_dict EMA")
# FutureXiang/Diffusion's DDPM CIFAR-10 UNet (the paper's, 35.7M) on 4 cards, 128 per card.
FUTUREXIANG = BenchSpec(preset="ddpm-cifar10", batch=128, ranks=4, parallel="ddp")
# EDM's DDPM++ for CIFAR-10 (NVlabs/edm, --arch=ddpmpp): ch 128, mults 2,2,2, four residual
# blocks per level, attention at 16, dropout 0.13, in our UNet's blocks (53.6M parameters
# against DDPM++'s 56M: its resampling is residual blocks, ours convolutions); fp32; 512 images
# a step over 8 cards.
EDM = BenchSpec(
    preset="ddpm-cifar10",
    channel_mults="2,2,2",
    res_blocks="4",
    dropout="0.13",
    batch=64,
    ranks=8,
    parallel="ddp",
    precision="fp32",
)

RUNS = (
    PublicRun(
        key="torchcfm-v100",
        source="atong01/conditional-flow-matching issue 105",
        setup="torchcfm's CIFAR-10 UNet, fp32, batch 128, one V100 32 GB",
        spec=TORCHCFM.replace(card="v100-32gb"),
        measured_it_s=1.84,
        derivation="1.84 it/s, the rate the thread reports early in the run",
        recipe=TORCHCFM_RECIPE,
    ),
    PublicRun(
        key="torchcfm-4090",
        source="atong01/conditional-flow-matching issue 105",
        setup="the same model and code, fp32 (convolutions in TF32, torch's default), batch "
        "128, one RTX 4090",
        spec=TORCHCFM.replace(card="rtx4090"),
        measured_it_s=400_000 / (19 * 3600),
        derivation="about 19 h for 400k steps: 400,000 / (19 x 3600)",
        recipe=TORCHCFM_RECIPE,
    ),
    PublicRun(
        key="futurexiang-3080ti-fp32",
        source="FutureXiang/Diffusion issue 1",
        setup="DDPM's CIFAR-10 UNet, fp32 (before the repository's AMP commit of 2022-12-03), "
        "128 per card, DDP on 4 RTX 3080 Ti",
        spec=FUTUREXIANG.replace(precision="fp32", card="rtx3080ti"),
        measured_it_s=2000 * 98 / (19.4 * 3600),
        derivation="19.4 h for 2000 epochs of 98 steps per rank (50,000 / (4 x 128), rounded "
        "up): 2000 x 98 / (19.4 x 3600)",
        recipe=("textbook upsample",),
    ),
    PublicRun(
        key="futurexiang-3080ti-amp",
        source="FutureXiang/Diffusion README",
        setup="the same with torch AMP (fp16 autocast, GradScaler), 128 per card, DDP on 4 "
        "RTX 3080 Ti",
        spec=FUTUREXIANG.replace(precision="fp16", card="rtx3080ti"),
        measured_it_s=2000 * 98 / (14 * 3600),
        derivation="about 14 h for the same 2000 epochs: 2000 x 98 / (14 x 3600)",
        recipe=("textbook upsample",),
    ),
    PublicRun(
        key="edm-v100",
        source="NVlabs/edm README",
        setup="EDM's DDPM++ (56M), fp32, 512 images a step on 8 V100s (64 per card), DDP",
        spec=EDM.replace(card="v100-32gb"),
        measured_it_s=200e6 / 512 / (48 * 3600),
        derivation="about 2 days for 200 Mimg at batch 512: 200e6 / 512 / (48 x 3600)",
        recipe=("textbook upsample", "foreach Adam", "lerp EMA", "nan_to_num gradients"),
        # Faster than its FLOPs at the V100's FP32 peak allow (docs/throughput.md): a finding,
        # predicted by the fit on the others, not fitted.
        calibrate=False,
    ),
)
