"""The DDPM UNet (Ho et al. 2020, Appendix B), written to match the released model parameter for
parameter: 35,746,307 for the CIFAR-10 configuration."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ddpm.config import UNetConfig


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017, as used by DDPM):
    [sin(t * w_k), cos(t * w_k)] with w_k = 10000^(-k / (dim/2 - 1))."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / (half - 1))
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, plus the projected time embedding, then GroupNorm-SiLU-dropout-conv,
    with a 1x1 shortcut when the channel count changes."""

    def __init__(self, in_ch: int, out_ch: int, time_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_proj = nn.Linear(time_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions, residual. DDPM uses one head over all
    channels; q, k, v and the output projection are 1x1 maps (here one qkv linear and one out)."""

    def __init__(self, channels: int, num_heads: int, groups: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        q, k, v = (
            z.reshape(b, h * w, self.num_heads, c // self.num_heads).transpose(1, 2)
            for z in (q, k, v)
        )
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        out = self.proj(out.transpose(1, 2).reshape(b, h * w, c))
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    """3x3 convolution with stride 2 (DDPM's `resamp_with_conv`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 convolution, computed without the upsampled map.

    After a nearest x2 upsampling, the 3x3 window of every output pixel covers only a 2x2 block of
    the input: rows (i-1, i) for even output rows and (i, i+1) for odd ones, with the kernel rows
    merged as (w0, w1 + w2) and (w0 + w1, w2); columns likewise. So the four output phases are four
    2x2 convolutions of the input: the same function with 16 instead of 36 multiply-adds per input
    pixel and channel pair (bench/PERF.md). Below PHASE_MIN_SIZE the direct form is faster."""

    PHASE_MIN_SIZE = 8

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.phased = True  # False: the textbook form (the FLOP counter counts that one)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        if not self.phased or min(x.shape[-2:]) < self.PHASE_MIN_SIZE:
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return phased_upsample_conv(x, self.conv.weight, self.conv.bias)


def _merge_taps(w: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2-tap kernels of the even and odd output phases along `dim` of a 3-tap kernel."""
    w0, w1, w2 = w.unbind(dim)
    return torch.stack([w0, w1 + w2], dim), torch.stack([w0 + w1, w2], dim)


def phased_upsample_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """conv2d(nearest_upsample_x2(x), weight, bias, padding=1) for a 3x3 weight, by phases."""
    b, _, h, w = x.shape
    out_ch = weight.shape[0]
    kernels = [k for rows in _merge_taps(weight, 2) for k in _merge_taps(rows, 3)]
    # One convolution for all four phases; padding 1 gives (h+1, w+1) windows: phase (a, c) of
    # input pixel (i, j) is the window at (i + a, j + c).
    y = F.conv2d(x, torch.cat(kernels), None if bias is None else bias.repeat(4), padding=1)
    y = y.view(b, 2, 2, out_ch, h + 1, w + 1)
    out = y.new_empty(b, out_ch, h, 2, w, 2)
    for a in (0, 1):
        for c in (0, 1):
            out[:, :, :, a, :, c] = y[:, a, c, :, a : a + h, c : c + w]
    return out.view(b, out_ch, 2 * h, 2 * w)


class Stage(nn.ModuleList):
    """Blocks applied in order, each given the time embedding (a residual block and its attention,
    or a resampler): the unit that gradient checkpointing recomputes."""

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        for block in self:
            h = block(h, temb)
        return h


class UNet(nn.Module):
    """eps_theta(x_t, t): predicts the noise in x_t. Input and output have the same shape."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        self.time_mlp = nn.Sequential(
            nn.Linear(c.time_embed_dim, c.time_hidden_dim),
            nn.SiLU(),
            nn.Linear(c.time_hidden_dim, c.time_hidden_dim),
        )
        self.conv_in = nn.Conv2d(c.in_channels, c.base_channels, 3, padding=1)

        def res(i: int, o: int) -> ResBlock:
            return ResBlock(i, o, c.time_hidden_dim, c.dropout, c.norm_groups)

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, c.num_heads, c.norm_groups)

        # Down path: every block's output is kept as a skip (conv_in's too), as in DDPM.
        self.down = nn.ModuleList()
        skip_channels = [c.base_channels]
        ch = c.base_channels
        last = len(c.channel_mults) - 1
        for level, (out_ch, res_) in enumerate(zip(c.level_channels, c.resolutions)):
            for _ in range(c.num_res_blocks):
                self.down.append(Stage([res(ch, out_ch)]))
                ch = out_ch
                if res_ in c.attention_resolutions:
                    self.down[-1].append(attn(ch))
                skip_channels.append(ch)
            if level != last:
                self.down.append(Stage([Downsample(ch)]))
                skip_channels.append(ch)

        mid = [res(ch, ch)]
        if c.attention_resolutions:
            mid.append(attn(ch))
        mid.append(res(ch, ch))
        self.mid = Stage(mid)

        # Up path: num_res_blocks + 1 blocks per level, each eating one skip by concatenation.
        self.up = nn.ModuleList()
        for level in reversed(range(len(c.channel_mults))):
            out_ch, res_ = c.level_channels[level], c.resolutions[level]
            for _ in range(c.num_res_blocks + 1):
                self.up.append(Stage([res(ch + skip_channels.pop(), out_ch)]))
                ch = out_ch
                if res_ in c.attention_resolutions:
                    self.up[-1].append(attn(ch))
            if level != 0:
                self.up[-1].append(Upsample(ch))

        self.norm_out = nn.GroupNorm(c.norm_groups, ch)
        self.conv_out = nn.Conv2d(ch, c.in_channels, 3, padding=1)

    def _run(self, stage: Stage, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        if self.config.gradient_checkpointing and self.training and torch.is_grad_enabled():
            # Recompute this stage's activations in backward instead of storing them. The RNG
            # state is restored for the recomputation, so dropout masks match.
            return checkpoint(stage, h, temb, use_reentrant=False)
        return stage(h, temb)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time_mlp(timestep_embedding(t, self.config.time_embed_dim).to(x.dtype))
        h = self.conv_in(x)
        skips = [h]
        for stage in self.down:
            h = self._run(stage, h, temb)
            skips.append(h)
        h = self._run(self.mid, h, temb)
        for stage in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(stage, h, temb)
        return self.conv_out(F.silu(self.norm_out(h)))
