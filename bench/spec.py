"""BenchSpec: one point of a benchmark grid, and the grid expansion from comma lists.

Every harness shares these axes, each declared once here (bench.axis) with its parser
(bench.parsers), which checks its values before anything runs: a bad value costs one line and
exit status 2 instead of a half-finished sweep."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass

from bench import model_config
from bench.axis import axis, choice_list, int_list, one_of
from bench.cards import CARDS, DEFAULT_TARGET
from bench.parsers import (
    ARCHITECTURE,
    parse_architecture,
    parse_attention,
    parse_cards,
    parse_device,
    parse_image_size,
    parse_impls,
    parse_model_config,
    parse_optimizers,
    parse_preset,
)
from ddpm.config import (
    ATTENTION_BACKENDS,
    EMA_DTYPES,
    EMA_PLACES,
    GRAD_SYNCS,
    PRECISIONS,
    PRESETS,
    TrainConfig,
    UNetConfig,
)
from ddpm.parallel import PARALLEL

MIB = 2**20  # bytes per MiB: every *_mib figure of every table
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
ON_OFF = ("off", "on")
DATASETS = ("digits", "mnist", "cifar10", "folder")  # bench.loss's real data (ddpm.data)
SAMPLERS = ("ddpm", "ddim")  # bench.sampling's samplers (ddpm.sample)
# What CUDA reports as the total capacity of an 8 GB GeForce card ("7.79 GiB total capacity" in
# the out-of-memory messages users post): the default budget models that card, not 8 GiB.
DEFAULT_BUDGET = "7.79GiB"
DEFAULT_BUDGET_MIB = 7.79 * 1024
# What `--card` alone (no value) means: list the cards (bench.cards) instead of running.
LIST_CARDS = "list"
# The CUDA context with lazy module loading (the default since CUDA 11.7): published figures
# run from 256 MiB (RTX 3090, torch 2.7.1+cu128) to 426 MiB (RTX 6000 Ada, torch 2.10+cu130);
# the larger one, with the CUDA 13 this torch is built for, is the allowance off CUDA.
DEFAULT_CONTEXT_MIB = 426.0


# The name, part by part: the axes each part spells in its own words, and how. Every other axis
# is named after them, by its field, whenever it is off its default (BenchSpec.name), so no axis
# is left out of the name; repeat is spelled in the spec id instead.
_NAME_PARTS: tuple[tuple[tuple[str, ...], Callable[[BenchSpec], str]], ...] = (
    (
        ("preset", "image_size", "batch", "accum", "precision"),
        lambda s: f"{s.preset}-{s.image_size}px-b{s.batch}x{s.accum}-{s.precision}",
    ),
    (
        ("attention", "compile", "checkpointing", "device"),
        lambda s: (
            f"-attn{s.attention}-compile-{s.compile}-ckpt-{s.checkpointing}"
            f"-{s.device.replace(':', '')}"
        ),
    ),
    (("dataset",), lambda s: "" if s.dataset == "synthetic" else f"-{s.dataset}"),
    (
        ("sampler", "sampling_steps"),
        lambda s: (
            f"-{s.sampler}{s.sampling_steps}" if s.sampler != "none" or s.sampling_steps else ""
        ),
    ),
    (("impl",), lambda s: "" if s.impl == "ddpm" else f"-{s.impl.replace(':', '.')}"),
    (
        ("model_config",),
        lambda s: f"-config{model_config.tag(s.config_file)}" if s.config_file else "",
    ),
    (("repeat",), lambda s: ""),
)
_NAMED_ABOVE = frozenset(axis for axes, _ in _NAME_PARTS for axis in axes)


@dataclass(frozen=True)
class BenchSpec:
    # Axes: the columns of every table, in this order. A new axis is one declaration here: its
    # column, its place in the name, and (with help and parse) its command-line option.
    preset: str = axis(
        "ddpm-cifar10",
        group="run",
        parse=lambda o, t, s: [parse_preset(t)],
        help=f"{', '.join(PRESETS)} (default %(default)s)",
    )
    # The preset's architecture overridden ("preset": its own), one value each: declared before
    # image_size and attention, whose parsers check them against the levels these give.
    channels: str = axis(
        "preset",
        quiet=True,
        group="run",
        parse=lambda o, t, s: parse_architecture(o, t, s, "channels"),
        help="base width ch, a multiple of the GroupNorm groups (32; tiny's 8); the time "
        "embedding follows where the preset ties it to ch (ch -> 4 ch, as the paper's); one "
        "value (default: the preset's)",
    )
    channel_mults: str = axis(
        "preset",
        quiet=True,
        group="run",
        parse=lambda o, t, s: parse_architecture(o, t, s, "channel_mults"),
        help="width multiplier of each level, e.g. 1,1,2,2,4,4: one value, whose commas list "
        "the levels (default: the preset's)",
    )
    res_blocks: str = axis(
        "preset",
        quiet=True,
        group="run",
        parse=lambda o, t, s: parse_architecture(o, t, s, "res_blocks"),
        help="residual blocks per level; one value (default: the preset's)",
    )
    heads: str = axis(
        "preset",
        quiet=True,
        group="run",
        parse=lambda o, t, s: parse_architecture(o, t, s, "heads"),
        help="attention heads, dividing the channels of every level with attention and of the "
        "middle block; one value (default: the preset's)",
    )
    dropout: str = axis(
        "preset",
        quiet=True,
        group="run",
        parse=lambda o, t, s: parse_architecture(o, t, s, "dropout"),
        help="dropout rate of the residual blocks, in [0, 1); one value (default: the preset's)",
    )
    image_size: int = axis(
        32,
        group="run",
        type=int,
        text=None,
        parse=lambda o, t, s: [parse_image_size(t, s.preset, s)],
        help="image side in pixels (default: the preset's)",
    )
    batch: int = axis(
        2,
        parse=int_list(),  # the micro-batch of one rank
        help="micro-batch sizes, e.g. 1,2,4 (default %(default)s)",
    )
    accum: int = axis(
        1,
        parse=int_list(),
        help="gradient-accumulation steps per optimizer step (default %(default)s)",
    )
    precision: str = axis(
        "fp32", parse=choice_list(PRECISIONS), help=f"{', '.join(PRECISIONS)} (default %(default)s)"
    )
    # "none", or resolutions joined by "+", e.g. "16+8"
    attention: str = axis(
        "16",
        text="preset",
        parse=lambda o, t, s: parse_attention(t, s.preset, s.image_size, s),
        help="none, preset (the preset's own), or resolutions like 16 or 16+8 "
        "(default %(default)s)",
    )
    compile: str = axis(
        "off",
        parse=choice_list(COMPILE_MODES),
        help=f"torch.compile mode: {', '.join(COMPILE_MODES)} (default %(default)s)",
    )
    checkpointing: str = axis(
        "off",
        parse=choice_list(ON_OFF),
        help="gradient checkpointing of UNet blocks: off, on (default %(default)s)",
    )
    # resolved: "cpu" or "cuda:N" (never "auto" or index-less "cuda")
    device: str = axis(
        "cpu",
        group="run",
        text="auto",
        parse=lambda o, t, s: [parse_device(t)],
        help="auto, cpu, cuda, cuda:N (default auto)",
    )
    # data-parallel ranks (processes; one card each on CUDA)
    ranks: int = axis(
        1,
        quiet=True,
        group="ranks",
        parse=int_list(),
        help="data-parallel ranks, one process (and card) each; --batch is one "
        "rank's micro-batch (default %(default)s)",
    )
    # how ranks share the model: none, ddp or fsdp
    parallel: str = axis(
        "none",
        quiet=True,
        group="ranks",
        parse=choice_list(PARALLEL),
        help=f"how ranks share the model: {', '.join(PARALLEL)} (fsdp = FSDP2, "
        "each ResBlock and attention block sharded) (default %(default)s)",
    )
    # sync gradients on the "last" micro-batch or "every"
    grad_sync: str = axis(
        "last",
        quiet=True,
        group="ranks",
        parse=choice_list(GRAD_SYNCS),
        help="exchange gradients after the last micro-batch or after every "
        "one: last, every (default %(default)s)",
    )
    # bench.models.impl: "ddpm" (ours), "diffusers", "lucidrains", "guided-diffusion" or
    # "package.module:callable"
    impl: str = axis(
        "ddpm",
        quiet=True,
        parse=lambda o, t, s: parse_impls(t),
        help="ddpm (ours), diffusers (UNet2DModel, at the same architecture or from "
        "--model-config), lucidrains (denoising-diffusion-pytorch's Unet, trained by its "
        "GaussianDiffusion), guided-diffusion (openai's UNet from its flags, trained as its "
        "TrainLoop trains it), or package.module:callable (your factory of a model called as "
        "model(x_t, t)); optional dependencies (default %(default)s)",
    )
    # bench.model_config: the model's keyword arguments, from a JSON or TOML file
    # "none": no file (a word, as every string axis's default)
    model_config: str = axis(
        "none",
        quiet=True,
        group="run",
        text=None,
        parse=lambda o, t, s: [parse_model_config(t)],
        help="a JSON or TOML file of the model's keyword arguments: UNetConfig fields for "
        "--impl ddpm, the library's (or your factory's) for the others; for guided-diffusion "
        "also its README's flag text, or a named config (adm-imagenet-256, ...: bench/configs) "
        "(default: none)",
    )
    # the card the prediction is for (bench.cards); "": the generic 8 GB sm86 card
    card: str = axis(
        "",
        quiet=True,
        const=LIST_CARDS,
        parse=lambda o, t, s: parse_cards(t),
        help="the cards the prediction is for, a comma list of bench.cards' names, e.g. "
        "rtx3070,t4: each sets the target compute capability and the budget (its capacity "
        "under torch, unless --budget is given); --card alone or --list-cards lists them "
        "(default: a generic 8 GB sm86 card, 7.79 GiB)",
    )
    # bench.loss trains on real data
    dataset: str = axis(
        "synthetic",
        quiet=True,
        group="run",
        common=False,
        text="digits",
        parse=one_of(DATASETS),
        help=f"{', '.join(DATASETS)} (default %(default)s: bundled, no network)",
    )
    # bench.sampling: "ddpm" or "ddim"
    sampler: str = axis(
        "none",
        quiet=True,
        common=False,
        text="ddpm,ddim",
        parse=choice_list(SAMPLERS),
        help="ddpm (all T timesteps, Ho et al. Algorithm 2), ddim (eta 0, "
        "--sampling-steps); a comma list (default %(default)s)",
    )
    # denoising steps of a full sampling run
    sampling_steps: int = axis(
        0,
        quiet=True,
        common=False,
        text="10,50,100",
        parse=int_list(),
        help="DDIM steps per complete run, 1..T, a comma list (default %(default)s)",
    )
    # The memory levers of training (docs/levers.md): the optimizer, where the EMA lives and its
    # dtype, the attention kernel, the memory format.
    optimizer: str = axis(
        "adamw",
        quiet=True,
        group="levers",
        parse=lambda o, t, s: parse_optimizers(t),
        help="adamw (fused, ours), adamw8bit (bitsandbytes), ao-adamw8bit, ao-adamw4bit "
        "(torchao), adafactor (torch), sgd (momentum 0.9), lion, prodigy; a comma list; the "
        "packages are optional extras (default %(default)s)",
    )
    ema: str = axis(
        "device",
        quiet=True,
        group="levers",
        parse=choice_list(EMA_PLACES),
        help="where the EMA of the weights lives: device (the card), cpu (host memory, updated "
        "there after each step), off (default %(default)s)",
    )
    ema_dtype: str = axis(
        "fp32",
        quiet=True,
        group="levers",
        parse=choice_list(EMA_DTYPES),
        help=f"the EMA copy's dtype: {', '.join(EMA_DTYPES)} (default %(default)s)",
    )
    attention_backend: str = axis(
        "auto",
        quiet=True,
        group="levers",
        parse=choice_list(ATTENTION_BACKENDS),
        help="torch's attention kernel: auto (its dispatcher's choice), flash, efficient, math "
        "(default %(default)s)",
    )
    channels_last: str = axis(
        "off",
        quiet=True,
        group="levers",
        parse=choice_list(ON_OFF),
        help="the model's weights (and so its activations) in channels-last memory format: "
        "off, on (default %(default)s)",
    )
    repeat: int = axis(1, quiet=True)  # which pass over the grid (--repeats)
    # How a spec is run, not what it is: in the spec id, not columns.
    seed: int = 0
    measure_steps: int = 1  # the steps a harness measures: timed, profiled or trained
    warmup_steps: int = 1  # steps run first and not measured (timing or profiler warm-up)
    budget: float | None = None  # --budget in MiB; None: the card's capacity (budget_mib)
    context_mib: float = DEFAULT_CONTEXT_MIB
    find_max_batch: bool = False  # search the largest batch that fits instead of using `batch`
    predict_only: bool = False  # bench.memory: the prediction alone, no measured pass

    @property
    def effective_batch(self) -> int:
        return self.ranks * self.batch * self.accum  # the global images of one optimizer step

    @property
    def config_file(self) -> str | None:
        """--model-config's file, or None."""
        return None if self.model_config == "none" else self.model_config

    @property
    def budget_mib(self) -> float:
        """What the fits verdict answers for: --budget when given, else the card's capacity
        (the generic card's 7.79 GiB without --card): the one route from a card to a budget."""
        if self.budget is not None:
            return self.budget
        return CARDS[self.card].capacity_mib if self.card else DEFAULT_BUDGET_MIB

    @property
    def target(self) -> tuple[int, int]:
        """The compute capability the prediction is for: the card's, else the generic sm86."""
        return CARDS[self.card].capability if self.card else DEFAULT_TARGET

    @property
    def preset_architecture(self) -> bool:
        """The model is the preset's UNet (ours, or diffusers' built to it), which the
        architecture, image-size and attention axes describe; any other model's shape is its
        own (the library's, a factory's, a --model-config's)."""
        return self.impl == "ddpm" or (self.impl == "diffusers" and not self.config_file)

    @property
    def attention_resolutions(self) -> tuple[int, ...]:
        return () if self.attention == "none" else tuple(int(r) for r in self.attention.split("+"))

    def architecture(self) -> dict:
        """The UNetConfig fields the architecture axes change from the preset's (none at
        "preset"). A preset whose time embedding is the paper's (width ch -> 4 ch, as the
        released diffusion_tf/models/unet.py ties it) keeps that tie at a new width."""
        preset = PRESETS[self.preset]
        changes = {
            field: convert(getattr(self, name))
            for name, (field, convert, _) in ARCHITECTURE.items()
            if getattr(self, name) != "preset"
        }
        ch = changes.get("base_channels")
        tied = (preset.time_embed_dim, preset.time_hidden_dim) == (
            preset.base_channels,
            4 * preset.base_channels,
        )
        if ch is not None and tied:
            changes.update(time_embed_dim=ch, time_hidden_dim=4 * ch)
        return changes

    def unet_config(self) -> UNetConfig:
        """The preset, then --model-config's fields (--impl ddpm), then the architecture axes,
        then image size, attention and checkpointing: one replace, so no half-changed config
        is ever validated, and the command line wins over the file. The other implementations
        read their image size and channels from it."""
        after = dict(
            self.architecture(),
            image_size=self.image_size,
            attention_resolutions=self.attention_resolutions,
            gradient_checkpointing=self.checkpointing == "on",
        )
        if self.config_file and self.impl == "ddpm":
            return model_config.unet_config(self.config_file, PRESETS[self.preset], **after)
        if not self.preset_architecture:
            # Another model takes from here only its input (the preset's channels at
            # image_size; guided-diffusion's UNet takes RGB whatever the preset) and whether
            # to checkpoint: no level of the preset's binds it.
            base = UNetConfig() if self.impl == "guided-diffusion" else PRESETS[self.preset]
            return base.replace(
                image_size=self.image_size,
                channel_mults=(1,),
                attention_resolutions=(),
                gradient_checkpointing=after["gradient_checkpointing"],
            )
        return PRESETS[self.preset].replace(**after)

    def train_config(self, **settings) -> TrainConfig:
        """The TrainConfig this spec trains with: the one route from a spec to a trainer
        (bench.models.workload.build_trainer). The spec's names map onto TrainConfig's public
        ones: batch -> batch_size (one rank's micro-batch), accum -> accum_steps, and precision,
        seed and grad_sync by the same name. `settings`: the TrainConfig fields no axis sets
        (lr, lr_warmup_steps, grad_clip, ema_decay, ...), e.g. bench.loss's learning rate; a
        field an axis sets is refused, so a trainer never says other than its spec's row:
        change the spec instead (spec.replace(accum=2))."""
        from_spec = {
            "batch_size": self.batch,
            "accum_steps": self.accum,
            "precision": self.precision,
            "seed": self.seed,
            "grad_sync": self.grad_sync,
            "ema": self.ema,
            "ema_dtype": self.ema_dtype,
            "attention_backend": self.attention_backend,
        }
        clash = sorted(set(settings) & set(from_spec))
        if clash:
            raise TypeError(
                f"train_config({', '.join(clash)}=...): the spec sets "
                f"{', '.join(clash)}; change the spec (spec.replace) instead."
            )
        return TrainConfig(**from_spec, **settings)

    @property
    def name(self) -> str:
        """Readable and stable: names trace folders and identifies a spec for --resume."""
        name = "".join(spell(self) for _, spell in _NAME_PARTS)
        # Any other axis, one added later too, is named whenever it is off its default.
        for f in dataclasses.fields(self):
            if f.metadata.get("axis") and f.name not in _NAMED_ABOVE:
                value = getattr(self, f.name)
                if value != f.default:  # a comma list (channel mults) as 1.1.2.2.4.4
                    name += f"-{f.name.replace('_', '-')}{str(value).replace(',', '.')}"
        return name

    @property
    def spec_id(self) -> str:
        return (
            f"{self.name}-seed{self.seed}-steps{self.measure_steps}-warmup{self.warmup_steps}"
            f"-budget{self.budget_mib:g}-context{self.context_mib:g}"
            + ("-maxbatch" if self.find_max_batch else "")
            + ("-predicted" if self.predict_only else "")
            + (f"-repeat{self.repeat}" if self.repeat > 1 else "")
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> BenchSpec:
        return dataclasses.replace(self, **changes)


def architecture_words(row: dict) -> str:
    """The architecture axes off the preset's, for a verdict: " with channels 192, heads 4"."""
    said = [
        f"{name.replace('_', ' ')} {row[name]}"
        for name in ARCHITECTURE
        if row.get(name, "preset") != "preset"
    ]
    return " with " + ", ".join(said) if said else ""


# How the verdicts say a lever off its default (docs/levers.md).
_LEVER_WORDS: dict[str, Callable[[str], str]] = {
    "optimizer": lambda v: f"optimizer {v}",
    "ema": lambda v: "no EMA" if v == "off" else f"EMA on the {v}",
    "ema_dtype": lambda v: f"EMA in {v}",
    "attention_backend": lambda v: f"{v} attention",
    "channels_last": lambda v: "channels-last",
}


def lever_words(row: dict) -> str:
    """The memory levers off their defaults, for a verdict: ", optimizer adamw8bit, EMA on the
    cpu"; nothing when all are at theirs (or the row predates them)."""
    defaults = {f.name: f.default for f in dataclasses.fields(BenchSpec)}
    said = [
        words(row[name])
        for name, words in _LEVER_WORDS.items()
        if row.get(name) not in (None, "", defaults[name])
    ]
    return "".join(f", {w}" for w in said)


def option_axes(cls: type | None = None) -> list[dataclasses.Field]:
    """The axes that are command-line options, in declaration order (of `cls`, a BenchSpec
    with more axes, such as a test's)."""
    return [f for f in dataclasses.fields(cls or BenchSpec) if "option" in f.metadata]


def common_axes(cls: type | None = None) -> tuple[str, ...]:
    """The options of every harness that takes the common axes (bench.sweep.cli.build_parser's
    default): all but the ones some harnesses name (dataset, sampler, sampling_steps)."""
    return tuple(f.name for f in option_axes(cls) if f.metadata["option"].common)


def group_axes(group: str, cls: type | None = None) -> tuple[str, ...]:
    """The options of one --help group (AxisOption.group), e.g. "ranks": the axes of a spec
    across ranks, which a harness that trains nothing leaves out."""
    return tuple(f.name for f in option_axes(cls) if f.metadata["option"].group == group)


def expand_grid(base: BenchSpec, **axes: list) -> list[BenchSpec]:
    """The product of the given axes (each a list of values) over a base spec, in the order the
    axes are given, the last axis varying fastest."""
    names = list(axes)
    return [base.replace(**dict(zip(names, combo))) for combo in itertools.product(*axes.values())]
