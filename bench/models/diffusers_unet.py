"""`--impl diffusers`: diffusers' UNet2DModel, built to our architecture or from a hub
config.json alone (`--model-config`, no weights), trained the way diffusers' own
train_unconditional example trains it.

It answers the memory question for users of that library and is the baseline our speed work is
measured against (bench/PERF.md). An optional dependency: pip install 'ddpm-bench[diffusers]'."""

from __future__ import annotations

import importlib.util
import inspect

import torch
from torch import nn

from bench import model_config
from ddpm.config import TrainConfig, UNetConfig

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


def config_kwargs(path: str) -> dict:
    """UNet2DModel's arguments from a hub config.json: its bookkeeping keys ("_class_name",
    "_diffusers_version") dropped, and a key UNet2DModel does not take refused (from_config
    would ignore it with a warning, and the table would describe another model)."""
    from diffusers import UNet2DModel

    kwargs = {k: v for k, v in model_config.load(path).items() if not k.startswith("_")}
    taken = set(inspect.signature(UNet2DModel.__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - taken)
    if unknown:
        raise model_config.ModelConfigError(
            f"--model-config {path}: UNet2DModel takes no argument {unknown[0]!r}."
        )
    return kwargs


class DiffusersUNet(nn.Module):
    """UNet2DModel behind our calling convention: eps = model(x_t, t). Built from `path` (a
    config.json) when given, else to our architecture `config`."""

    def __init__(self, config: UNetConfig, path: str = ""):
        super().__init__()
        from diffusers import UNet2DModel

        if path:
            self.unet = UNet2DModel.from_config(config_kwargs(path))
        else:
            reason = diffusers_unsupported(config)
            if reason:
                raise ValueError(reason)
            self.unet = UNet2DModel(**diffusers_kwargs(config))
        self.config = config
        if config.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, return_dict=False)[0]


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
