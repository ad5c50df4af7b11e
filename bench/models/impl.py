"""The implementations a spec can run (the `--impl` axis, bench.spec.IMPLS): ours (`ddpm`), or
diffusers' UNet2DModel built to the same architecture and trained the way diffusers' own example
trains it.

`diffusers` answers the memory question for users of that library and is the baseline our speed
work is measured against (bench/PERF.md). It is an optional dependency:
pip install 'ddpm-bench[diffusers]'."""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from ddpm.config import TrainConfig, UNetConfig
from ddpm.unet import UNet

INSTALL_HINT = "pip install 'ddpm-bench[diffusers]' (or pip install diffusers)"


def diffusers_installed() -> bool:
    return importlib.util.find_spec("diffusers") is not None


def diffusers_unsupported(config: UNetConfig) -> str | None:
    """Why UNet2DModel cannot express this architecture, or None when it can."""
    c = config
    if c.time_embed_dim != c.base_channels or c.time_hidden_dim != 4 * c.base_channels:
        return (
            f"UNet2DModel ties the time embedding to the base width ({c.base_channels} -> "
            f"{4 * c.base_channels}); this model has {c.time_embed_dim} -> "
            f"{c.time_hidden_dim}"
        )
    if c.attention_resolutions and c.num_heads != 1:
        return (
            f"UNet2DModel's head width is one number for every level; this model has "
            f"{c.num_heads} heads per block"
        )
    return None


def diffusers_kwargs(config: UNetConfig) -> dict:
    """UNet2DModel's arguments for our architecture: same layers, same parameter count, and the
    same function (GroupNorm eps 1e-5 as ours, symmetric downsampling padding, [sin, cos] time
    features with frequencies 10000^(-k / (half - 1)))."""
    c = config
    attn = [r in c.attention_resolutions for r in c.resolutions]
    return dict(
        sample_size=c.image_size,
        in_channels=c.in_channels,
        out_channels=c.in_channels,
        block_out_channels=c.level_channels,
        layers_per_block=c.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        add_attention=bool(c.attention_resolutions),
        attention_head_dim=None,
        norm_num_groups=c.norm_groups,
        norm_eps=1e-5,
        downsample_padding=1,
        flip_sin_to_cos=False,
        freq_shift=1,
        dropout=c.dropout,
    )


class DiffusersUNet(nn.Module):
    """UNet2DModel behind our calling convention: eps = model(x_t, t)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        from diffusers import UNet2DModel

        reason = diffusers_unsupported(config)
        if reason:
            raise ValueError(reason)
        self.config = config
        self.unet = UNet2DModel(**diffusers_kwargs(config))
        if config.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, return_dict=False)[0]


def build_unet(config: UNetConfig, impl: str = "ddpm") -> nn.Module:
    return DiffusersUNet(config) if impl == "diffusers" else UNet(config)


class DiffusersEMA:
    """diffusers' EMAModel with its defaults (a per-tensor loop, foreach off), behind the
    interface the Trainer calls: update(model), and the shadow tensors as .params."""

    def __init__(self, model: nn.Module, config: TrainConfig):
        from diffusers.training_utils import EMAModel

        # As diffusers' train_unconditional example: warm-up 1 - (1 + step)^(-3/4), capped.
        self.ema = EMAModel(
            model.parameters(),
            decay=config.ema_decay,
            use_ema_warmup=config.ema_warmup,
            inv_gamma=1.0,
            power=0.75,
        )

    @property
    def params(self) -> list[torch.Tensor]:
        return self.ema.shadow_params

    def update(self, model: nn.Module) -> None:
        self.ema.step(model.parameters())

    def state_dict(self) -> dict:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state)


def diffusers_recipe(model: nn.Module, config: TrainConfig) -> dict:
    """The optimizer and EMA of diffusers' train_unconditional example: torch's AdamW with its
    defaults (on CPU, the per-tensor loop) and EMAModel. Trainer(..., **diffusers_recipe(...))."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )
    return {"optimizer": optimizer, "ema": DiffusersEMA(model, config)}
