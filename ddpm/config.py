"""Configuration dataclasses that validate themselves, and the model presets with their sources."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
# When data-parallel ranks average gradients within an accumulated step: after the last
# micro-batch only (the same mean, one exchange), or after every one (to measure what that costs).
GRAD_SYNCS = ("last", "every")
# Where the EMA's shadow copy lives: on the model's device, in host memory (updated there after
# each step, as diffusers' offload does), or nowhere; and the dtype it is kept in.
EMA_PLACES = ("device", "cpu", "off")
EMA_DTYPES = ("fp32", "bf16")
# torch's scaled_dot_product_attention backends (ddpm.attention): "auto" lets its dispatcher pick.
ATTENTION_BACKENDS = ("auto", "flash", "efficient", "math")


def _positive(name: str, value: int) -> None:
    _integer(name, value)
    if value <= 0:
        raise ValueError(f"{name}={value!r} is not allowed: it must be a positive integer.")


# Values come from JSON, TOML and checkpoints too, not only from typed Python: each field's type
# is checked first, so a message names the field rather than an operator that failed on it.
def _kind(value) -> str:
    if isinstance(value, bool):
        return "true/false"
    return {str: "text", float: "a decimal number"}.get(type(value), f"a {type(value).__name__}")


def _integer(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            f"{name}={value!r} is not allowed: it must be an integer, not {_kind(value)}."
        )


def _number(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(
            f"{name}={value!r} is not allowed: it must be a number, not {_kind(value)}."
        )


def _integers(name: str, value) -> None:
    if not isinstance(value, (list, tuple)):
        raise ValueError(
            f"{name}={value!r} is not allowed: it must be a list of integers, not {_kind(value)}."
        )
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int):
            raise ValueError(
                f"{name}={value!r} is not allowed: it must be a list of integers, and "
                f"{item!r} is {_kind(item)}."
            )


def _boolean(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not allowed: it must be true or false.")


# Sizes past these build a model no card holds, or take minutes only to build: the largest
# published diffusion UNets (ADM, Imagen) use 2 or 3 residual blocks per level, 7 levels at
# most, at most 2,048 channels and sides up to 1,024. One 3x3 convolution at MAX_WIDTH channels
# holds 9.7e9 weights, 36 GiB in fp32: more than any card bench.cards knows.
MAX_WIDTH = 2**15  # channels of any layer: the input's, every level's, the time embedding's
MAX_SIDE = 2**15  # the image side in pixels
MAX_RES_BLOCKS = 64  # residual blocks per level
MAX_LEVELS = 16  # entries of channel_mults


@dataclass(frozen=True)
class UNetConfig:
    """Shape of the DDPM UNet (Ho et al. 2020, Appendix B; the `ddpm-cifar10` preset is theirs).

    Resolution r is visited at level i when r = image_size / 2**i; attention_resolutions lists the
    resolutions that get self-attention after each residual block (down and up paths), and any
    attention at all also puts one in the middle block. `()` means no attention anywhere.
    """

    image_size: int = 32
    in_channels: int = 3
    base_channels: int = 128
    channel_mults: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    num_heads: int = 1
    dropout: float = 0.1
    norm_groups: int = 32
    time_embed_dim: int = 128  # width of the sinusoidal embedding (Vaswani et al. 2017)
    time_hidden_dim: int = 512  # width after the MLP; injected into every residual block
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        _integers("channel_mults", self.channel_mults)
        _integers("attention_resolutions", self.attention_resolutions)
        _number("dropout", self.dropout)
        _boolean("gradient_checkpointing", self.gradient_checkpointing)
        # Accept lists from callers (JSON, argparse) but store tuples so configs stay hashable.
        object.__setattr__(self, "channel_mults", tuple(self.channel_mults))
        object.__setattr__(self, "attention_resolutions", tuple(self.attention_resolutions))
        for name in (
            "image_size",
            "in_channels",
            "base_channels",
            "num_res_blocks",
            "num_heads",
            "norm_groups",
            "time_embed_dim",
            "time_hidden_dim",
        ):
            _positive(name, getattr(self, name))
        if not self.channel_mults or any(m <= 0 for m in self.channel_mults):
            raise ValueError(
                f"channel_mults={self.channel_mults!r} is not allowed: "
                "it must be a non-empty list of positive integers."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout!r} is not allowed: it must be in [0, 1).")
        self._check_sizes()
        if self.time_embed_dim % 2 or self.time_embed_dim < 4:
            # Frequencies are spaced over half - 1 intervals: a width of 2 has none.
            raise ValueError(
                f"time_embed_dim={self.time_embed_dim} is not allowed: "
                "the sinusoidal embedding needs an even width of at least 4."
            )
        halvings = len(self.channel_mults) - 1
        if self.image_size % (2**halvings):
            raise ValueError(
                f"image_size={self.image_size} is not allowed: {len(self.channel_mults)} levels "
                f"halve it {halvings} times, so it must be a multiple of {2**halvings}."
            )
        for ch in sorted(set(self.level_channels)):
            if ch % self.norm_groups:
                raise ValueError(
                    f"norm_groups={self.norm_groups} does not divide {ch} channels: "
                    "GroupNorm needs every level's channel count divisible by it."
                )
        visited = self.resolutions
        for res in self.attention_resolutions:
            if res not in visited:
                raise ValueError(
                    f"attention resolution {res} is never visited: this UNet visits "
                    f"{', '.join(map(str, visited))}."
                )
            ch = self.level_channels[visited.index(res)]
            if ch % self.num_heads:
                raise ValueError(
                    f"num_heads={self.num_heads} does not divide the {ch} channels "
                    f"at resolution {res}."
                )
        if self.attention_resolutions and self.level_channels[-1] % self.num_heads:
            raise ValueError(
                f"num_heads={self.num_heads} does not divide the "
                f"{self.level_channels[-1]} channels of the middle block."
            )

    def _check_sizes(self) -> None:
        """Refuse a model past the MAX_* bounds before anything builds it."""
        widest = max(self.level_channels)
        if widest > MAX_WIDTH:
            raise ValueError(
                f"base_channels={self.base_channels} x channel_mults {max(self.channel_mults)} "
                f"= {widest:,} channels is not allowed: at most {MAX_WIDTH:,} per level "
                "(one 3x3 convolution of that width already fits no card)."
            )
        limits = {
            "image_size": MAX_SIDE,
            "in_channels": MAX_WIDTH,
            "num_res_blocks": MAX_RES_BLOCKS,
            "time_embed_dim": MAX_WIDTH,
            "time_hidden_dim": MAX_WIDTH,
        }
        for name, limit in limits.items():
            if getattr(self, name) > limit:
                raise ValueError(
                    f"{name}={getattr(self, name)} is not allowed: at most {limit:,} "
                    "(a model past that fits no card, or takes minutes only to build)."
                )
        if len(self.channel_mults) > MAX_LEVELS:
            raise ValueError(
                f"channel_mults has {len(self.channel_mults)} levels: at most {MAX_LEVELS} "
                "are allowed."
            )

    @property
    def level_channels(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_mults)

    @property
    def resolutions(self) -> tuple[int, ...]:
        """The feature-map side at each level, from the input down."""
        return tuple(self.image_size // 2**i for i in range(len(self.channel_mults)))

    def replace(self, **changes) -> UNetConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TrainConfig:
    """One optimizer step sees batch_size * accum_steps images, in accum_steps micro-batches, on
    each data-parallel rank: batch_size is one rank's micro-batch."""

    batch_size: int = 128
    accum_steps: int = 1
    precision: str = "fp32"
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    lr_warmup_steps: int = 0  # learning-rate warm-up, linear from 0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    seed: int = 0
    grad_sync: str = "last"
    ema: str = "device"  # EMA_PLACES
    ema_dtype: str = "fp32"  # EMA_DTYPES
    attention_backend: str = "auto"  # ATTENTION_BACKENDS

    def __post_init__(self) -> None:
        for name in ("lr", "weight_decay", "ema_decay"):
            _number(name, getattr(self, name))
        if self.grad_clip is not None:
            _number("grad_clip", self.grad_clip)
        numbers = isinstance(self.betas, (list, tuple)) and all(
            isinstance(b, (int, float)) and not isinstance(b, bool) for b in self.betas
        )
        if not numbers:
            raise ValueError(f"betas={self.betas!r} is not allowed: two numbers in [0, 1).")
        _integer("lr_warmup_steps", self.lr_warmup_steps)
        _integer("seed", self.seed)
        _boolean("ema_warmup", self.ema_warmup)
        object.__setattr__(self, "betas", tuple(self.betas))
        _positive("batch_size", self.batch_size)
        _positive("accum_steps", self.accum_steps)
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision={self.precision!r} is not allowed: "
                f"choose one of {', '.join(PRECISIONS)}."
            )
        if not 0 < self.lr < math.inf:
            raise ValueError(f"lr={self.lr!r} is not allowed: it must be positive.")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight_decay={self.weight_decay!r} is not allowed: it must be >= 0.")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas={self.betas!r} is not allowed: two numbers in [0, 1).")
        if self.lr_warmup_steps < 0:
            raise ValueError(
                f"lr_warmup_steps={self.lr_warmup_steps} is not allowed: it must be >= 0."
            )
        if self.grad_clip is not None and not 0 < self.grad_clip < math.inf:
            raise ValueError(
                f"grad_clip={self.grad_clip!r} is not allowed: positive, or None for no clipping."
            )
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay={self.ema_decay!r} is not allowed: it must be in [0, 1).")
        if self.grad_sync not in GRAD_SYNCS:
            raise ValueError(
                f"grad_sync={self.grad_sync!r} is not allowed: "
                f"choose one of {', '.join(GRAD_SYNCS)}."
            )
        for name, allowed in (
            ("ema", EMA_PLACES),
            ("ema_dtype", EMA_DTYPES),
            ("attention_backend", ATTENTION_BACKENDS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} is not allowed: "
                    f"choose one of {', '.join(allowed)}."
                )

    @property
    def effective_batch(self) -> int:
        """One rank's images per optimizer step; all ranks together see world size times it."""
        return self.batch_size * self.accum_steps

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, UNetConfig] = {
    # Ho, Jain, Abbeel 2020, Appendix B and the released code (diffusion/models/unet.py, cifar10):
    # ch 128, ch_mult (1,2,2,2), 2 res blocks, attention at 16x16, dropout 0.1.
    # 35,746,307 parameters; 34,164,227 without attention.
    "ddpm-cifar10": UNetConfig(),
    # Ho, Jain, Abbeel 2020, the CelebA-HQ and LSUN (church, cat) models at 256 px: ch 128,
    # ch_mult (1,1,2,2,4,4), 2 res blocks, attention at 16x16, no dropout (the released code's
    # scripts/run_celebahq.py and run_lsun.py). 113,673,219 parameters, as diffusers' UNet2DModel
    # in the layout of google/ddpm-celebahq-256.
    "ddpm-256": UNetConfig(image_size=256, channel_mults=(1, 1, 2, 2, 4, 4), dropout=0.0),
    # The LSUN Bedroom model's "larger variant ... with approximately 256 million parameters by
    # increasing filter count" (Ho et al. 2020, Appendix B). Not a released config (the code has
    # only ddpm-256's unet2d16b2c112244): inferred as ddpm-256 with the base width ch raised to
    # 192, the one multiple of 32 (GroupNorm's groups) near that count, and the time embedding
    # widened with it (ch -> 4 ch, as the released diffusion_tf/models/unet.py ties it):
    # 255,677,955 parameters; ch 160 gives 177,578,243 and ch 224 gives 347,972,355.
    "ddpm-256-large": UNetConfig(
        image_size=256,
        base_channels=192,
        channel_mults=(1, 1, 2, 2, 4, 4),
        dropout=0.0,
        time_embed_dim=192,
        time_hidden_dim=768,
    ),
    # MNIST padded to 32x32 as in the tutorials this project grew from: base 64, three resolutions
    # (32, 16, 8), one residual block per level, time embedding 128 -> 512; attention at 16 as DDPM.
    "ddpm-mnist": UNetConfig(
        image_size=32,
        in_channels=1,
        base_channels=64,
        channel_mults=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(16,),
        time_embed_dim=128,
        time_hidden_dim=512,
    ),
    # Small enough that tests train it on a CPU in seconds; every block type is still present.
    "tiny": UNetConfig(
        image_size=16,
        in_channels=1,
        base_channels=16,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        num_heads=2,
        dropout=0.0,
        norm_groups=8,
        time_embed_dim=32,
        time_hidden_dim=64,
    ),
}
