"""BenchSpec: one point of a benchmark grid, and the grid expansion from comma lists.

Every harness shares these axes; validation happens here, before anything runs, so a bad value
costs one line and exit status 2 instead of a half-finished sweep."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from bench import model_config
from bench.cards import CARDS, DEFAULT_TARGET
from ddpm.config import GRAD_SYNCS, MAX_SIDE, PRECISIONS, PRESETS, TrainConfig, UNetConfig
from ddpm.device import indexed_device
from ddpm.parallel import PARALLEL

MIB = 2**20  # bytes per MiB: every *_mib figure of every table
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
ON_OFF = ("off", "on")
# bench.models.impl: ours, diffusers' UNet2DModel, lucidrains' denoising-diffusion-pytorch Unet;
# or a user's factory, "package.module:callable"
IMPLS = ("ddpm", "diffusers", "lucidrains")
FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
DATASETS = ("digits", "mnist", "cifar10", "folder")  # bench.loss's real data (ddpm.data)
SAMPLERS = ("ddpm", "ddim")  # bench.sampling's samplers (ddpm.sample)
_UNITS = {"mib": 1.0, "gib": 1024.0, "mb": 1e6 / MIB, "gb": 1e9 / MIB}
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


# The axes the name above spells out; repeat is in the spec id.
_NAMED_ABOVE = (
    "preset",
    "image_size",
    "batch",
    "accum",
    "precision",
    "attention",
    "compile",
    "checkpointing",
    "device",
    "dataset",
    "sampler",
    "sampling_steps",
    "impl",
    "model_config",
    "repeat",
)


class SpecError(ValueError):
    """A bad axis value; the message is the one line the user sees."""


# The architecture axes: each one's UNetConfig field, how its text becomes that field's value,
# and what to give instead of text that does not.
ARCHITECTURE: dict[str, tuple[str, Callable, str]] = {
    "channels": ("base_channels", int, "an integer, e.g. 192"),
    "channel_mults": (
        "channel_mults",
        lambda text: tuple(int(m) for m in text.split(",")),
        "integers joined by commas, e.g. 1,1,2,2,4,4",
    ),
    "res_blocks": ("num_res_blocks", int, "an integer, e.g. 2"),
    "heads": ("num_heads", int, "an integer, e.g. 4"),
    "dropout": ("dropout", float, "a number, e.g. 0.1"),
}


# An axis's parser: (option, option text, spec) -> the axis's values, or SpecError with the line
# the user reads. `spec` holds the single-valued axes declared above it (attention reads preset
# and image_size); bench.sweep.cli expands the lists into the grid.
AxisParser = Callable[[str, object, "BenchSpec"], list]


@dataclass(frozen=True)
class AxisOption:
    """How an axis is given on the command line (bench.sweep.cli adds and parses it)."""

    help: str  # argparse's: %(default)s is the default option text
    parse: AxisParser
    text: object  # the default option text (a harness may give its own)
    option: str | None = None  # default: "--" and the field name with "-" for "_"
    group: str = "axes"  # "axes" (comma lists), "ranks" or "run" (bench.sweep.cli.GROUPS)
    common: bool = True  # an option of every harness that takes the common axes
    type: Callable | None = None  # argparse's type, for a single number (--image-size)
    const: str | None = None  # the value of the option given alone (argparse's nargs="?")

    def flag(self, name: str) -> str:
        return self.option or "--" + name.replace("_", "-")


_FIELD_DEFAULT = object()  # axis(text=...) not given: the option's default is str(default)


def axis(
    default,
    quiet: bool = False,
    *,
    help: str | None = None,
    parse: AxisParser | None = None,
    text: object = _FIELD_DEFAULT,
    **option,
) -> dataclasses.Field:
    """A spec field that is a column of every results table, so tables can vary along it; a
    quiet axis belongs to some harnesses and goes unsaid while at its default. Given `help` and
    `parse`, it is also a command-line option of every harness that takes it, a comma list that
    the sweep expands (AxisOption: `text` is the default option text, str(default) unless
    given (None: none, as --image-size's "the preset's"), and `option` may set option, group,
    common, type)."""
    metadata = {"axis": "quiet" if quiet else "said"}
    if parse is not None:
        metadata["option"] = AxisOption(
            help=help or "",
            parse=parse,
            text=str(default) if text is _FIELD_DEFAULT else text,
            **option,
        )
    return field(default=default, metadata=metadata)


def int_list(minimum: int = 1) -> AxisParser:
    """A comma list of integers >= minimum."""
    return lambda option, text, spec: parse_int_list(option, text, minimum)


def choice_list(allowed: tuple[str, ...]) -> AxisParser:
    """A comma list of allowed words."""
    return lambda option, text, spec: parse_choices(option, text, allowed)


def one_of(allowed: tuple[str, ...]) -> AxisParser:
    """One allowed word (an axis that takes a single value)."""

    def parse(option: str, text: str, spec) -> list[str]:
        if text not in allowed:
            raise SpecError(f"{option} {text!r} is not allowed: choose from {', '.join(allowed)}.")
        return [text]

    return parse


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
    # bench.models.impl: "ddpm" (ours), "diffusers", "lucidrains" or "package.module:callable"
    impl: str = axis(
        "ddpm",
        quiet=True,
        parse=lambda o, t, s: parse_impls(t),
        help="ddpm (ours), diffusers (UNet2DModel, at the same architecture or from "
        "--model-config), lucidrains (denoising-diffusion-pytorch's Unet, trained by its "
        "GaussianDiffusion), or package.module:callable (your factory of a model called as "
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
        "--impl ddpm, the library's (or your factory's) for the others (default: none)",
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
            # image_size) and whether to checkpoint: no level of the preset's binds it.
            return PRESETS[self.preset].replace(
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
        name = (
            f"{self.preset}-{self.image_size}px-b{self.batch}x{self.accum}-{self.precision}"
            f"-attn{self.attention}-compile-{self.compile}-ckpt-{self.checkpointing}"
            f"-{self.device.replace(':', '')}"
        )
        if self.dataset != "synthetic":
            name += f"-{self.dataset}"
        if self.sampler != "none" or self.sampling_steps:
            name += f"-{self.sampler}{self.sampling_steps}"
        if self.impl != "ddpm":
            name += f"-{self.impl.replace(':', '.')}"
        if self.config_file:
            name += f"-config{model_config.tag(self.config_file)}"
        # An axis added later is named whenever it is off its default.
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


# ----- parsing: each returns a value or raises SpecError with the line the user will read ------


def parse_int_list(option: str, text: str, minimum: int = 1) -> list[int]:
    values = []
    for item in _items(option, text):
        try:
            value = int(item)
        except ValueError:
            raise SpecError(
                f"{option} {item!r} is not an integer; give a comma list such as 1,2,4."
            ) from None
        if value < minimum:
            raise SpecError(f"{option} {value} is not allowed: it must be >= {minimum}.")
        values.append(value)
    return _once_each(option, text, values)


def parse_choices(option: str, text: str, allowed: tuple[str, ...]) -> list[str]:
    values = _items(option, text)
    for value in values:
        if value not in allowed:
            raise SpecError(f"{option} {value!r} is not allowed: choose from {', '.join(allowed)}.")
    return _once_each(option, text, values)


def parse_attention(
    text: str, preset: str, image_size: int, spec: BenchSpec | None = None
) -> list[str]:
    """'none', 'preset' (the preset's own placement) or resolutions like 16 or 16+8, visited by
    the preset's levels or those of `spec`'s architecture axes, with heads that divide them."""
    checked = spec is None or spec.preset_architecture  # another model places its own
    changes = spec.architecture() if spec else {}
    config = (
        PRESETS[preset].replace(**changes, image_size=image_size, attention_resolutions=())
        if checked
        else None
    )
    model = preset + (
        f" with --channel-mults {spec.channel_mults}" if "channel_mults" in changes else ""
    )
    values = []
    for item in _items("--attention", text):
        if item == "preset":
            item = "+".join(map(str, PRESETS[preset].attention_resolutions)) or "none"
        if item != "none":
            parts = item.split("+")
            if not all(p.isdigit() for p in parts):
                raise SpecError(
                    f"--attention {item!r} is not allowed: use none, preset, or "
                    "resolutions joined by '+', e.g. 16 or 16+8."
                )
            resolutions = sorted(map(int, parts), reverse=True)
            for res in resolutions if config is not None else ():
                if res not in config.resolutions:
                    raise SpecError(
                        f"--attention {res} is never visited by {model} at "
                        f"{image_size}px: choose from none, "
                        f"{', '.join(map(str, config.resolutions))}."
                    )
            _once_each("--attention", item, resolutions)
            if config is not None:
                try:
                    config.replace(attention_resolutions=tuple(resolutions))
                except ValueError as exc:  # the levels are visited: what is left is the heads
                    raise SpecError(f"--heads {config.num_heads}: {exc}") from None
            item = "+".join(map(str, resolutions))
        values.append(item)
    return _once_each("--attention", text, values)


def parse_budget(text: str) -> float:
    """'8GiB' -> 8192.0 (MiB). MiB/GiB are powers of two, MB/GB powers of ten."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*", text)
    if match and match.group(2).endswith("b") and match.group(2).lower() in _UNITS:
        raise SpecError(
            f"--budget {text!r} is in bits (lowercase b): give bytes, e.g. 8GiB, "
            "8192MiB, 8GB or 500MB."
        )
    mib = float(match.group(1)) * _UNITS.get(match.group(2).lower(), 0) if match else 0
    if not 0 < mib < math.inf:  # a 400-digit number is inf as a float
        raise SpecError(
            f"--budget {text!r} is not allowed: give a positive, finite size with a "
            "unit, e.g. 8GiB, 8192MiB, 8GB or 500MB."
        )
    return mib


def parse_impls(text: str) -> list[str]:
    """A comma list of implementations: the named ones, or factories "package.module:callable"
    (bench.models.factory imports them, in the parent, before anything runs)."""
    values = _items("--impl", text)
    for value in values:
        if value not in IMPLS and not FACTORY.fullmatch(value):
            raise SpecError(
                f"--impl {value!r} is not allowed: choose from {', '.join(IMPLS)}, or give "
                "your factory as package.module:callable."
            )
    return _once_each("--impl", text, values)


def parse_model_config(path: str | None) -> str:
    """The file, read now: one that is missing or not a table is one line before anything
    runs (what its fields mean is the implementation's, checked by bench.sweep.cli)."""
    if not path or path == "none":
        return "none"
    try:
        model_config.load(path)
    except model_config.ModelConfigError as exc:
        raise SpecError(str(exc)) from None
    return path


def parse_cards(text: str) -> list[str]:
    """A comma list of bench.cards' names; "" (the default) is the generic 8 GB sm86 card."""
    if text == "":
        return [""]
    return parse_choices("--card", text, tuple(CARDS))


def parse_preset(text: str) -> str:
    if text not in PRESETS:
        raise SpecError(f"--preset {text!r} is not allowed: choose from {', '.join(PRESETS)}.")
    return text


def parse_architecture(option: str, text: str, spec: BenchSpec, name: str) -> list[str]:
    """One value of an architecture axis as its column holds it: "preset" (the preset's own
    value too, so one model is one spec), a number, or the mults joined by commas. Checked,
    with the axes declared above it, by UNetConfig's own rules at the smallest side the levels
    can halve and without attention: image_size's and attention's parsers check the rest."""
    text = str(text).strip()
    if text == "preset":
        return [text]
    if not spec.preset_architecture:
        raise SpecError(
            f"{option} {text}: the architecture axes shape the preset's UNet (--impl ddpm, or "
            f"diffusers without --model-config); --impl {spec.impl} builds its own model "
            f"(its shape: --model-config): leave {option} out."
        )
    field, convert, example = ARCHITECTURE[name]
    if name == "channel_mults":
        text = ",".join(_items(option, text))  # no empty level; spaces dropped
    elif "," in text:
        raise SpecError(
            f"{option} {text!r} is not allowed: it takes one value (one command per value)."
        )
    try:
        value = convert(text)
    except ValueError:
        raise SpecError(f"{option} {text!r} is not allowed: give {example}.") from None
    preset = PRESETS[spec.preset]
    if value == getattr(preset, field):
        return ["preset"]
    stored = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
    changes = spec.replace(**{name: stored}).architecture()
    levels = len(changes.get("channel_mults", preset.channel_mults))
    try:
        preset.replace(**changes, image_size=2 ** (levels - 1), attention_resolutions=())
    except ValueError as exc:
        raise SpecError(f"{option} {text}: {exc}") from None
    return [stored]


def architecture_words(row: dict) -> str:
    """The architecture axes off the preset's, for a verdict: " with channels 192, heads 4"."""
    said = [
        f"{name.replace('_', ' ')} {row[name]}"
        for name in ARCHITECTURE
        if row.get(name, "preset") != "preset"
    ]
    return " with " + ", ".join(said) if said else ""


def parse_image_size(value: int | None, preset: str, spec: BenchSpec | None = None) -> int:
    """The side in pixels (None: the preset's), one the levels can halve: the preset's, or those
    of `spec`'s architecture axes."""
    size = PRESETS[preset].image_size if value is None else value
    if spec is not None and not spec.preset_architecture:  # the model's own levels, checked
        if not 1 <= size <= MAX_SIDE:  # by its forward on fake tensors (bench.models.impl)
            raise SpecError(
                f"--image-size {size} is not allowed: give a side from 1 to {MAX_SIDE:,} pixels."
            )
        return size
    try:
        # Attention is its own axis, checked by parse_attention against this size.
        PRESETS[preset].replace(
            **(spec.architecture() if spec else {}), image_size=size, attention_resolutions=()
        )
    except ValueError as exc:
        if value is None:  # the preset's own side, refused only by new levels
            raise SpecError(
                f"--channel-mults {spec.channel_mults}: {exc} Give an --image-size they can halve."
            ) from None
        raise SpecError(f"--image-size {size}: {exc}") from None
    return size


def parse_device(text: str) -> str:
    """auto | cpu | cuda | cuda:N, checked against the GPUs this machine has; a GPU comes back
    indexed ("cuda:N"), as torch.cuda.set_device requires."""
    import torch

    if text == "auto":
        return indexed_device("cuda") if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return text
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if not match:
        raise SpecError(f"--device {text!r} is not allowed: choose auto, cpu, cuda or cuda:N.")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise SpecError(
            f"--device {text} asked for a GPU, but torch sees no CUDA device here; "
            "use --device cpu or auto."
        )
    if match.group(1) is not None and int(match.group(1)) >= count:
        raise SpecError(
            f"--device {text} is not allowed: this machine has {count} CUDA "
            f"device(s), cuda:0..cuda:{count - 1}."
        )
    return indexed_device(text)


def _items(option: str, text: str) -> list[str]:
    items = [s.strip() for s in str(text).split(",")]
    if not items or any(not s for s in items):
        raise SpecError(f"{option} {text!r} has an empty item; give a comma list such as 1,2,4.")
    return items


def _once_each(option: str, text: str, values: list) -> list:
    """A value named twice (8+8, or 2,02) would be the same spec twice, measured twice."""
    twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
    if twice is not None:
        raise SpecError(
            f"{option} {text!r} names {twice} twice: give each value once (--repeats "
            "measures a spec again)."
        )
    return values


def option_axes(cls: type | None = None) -> list[dataclasses.Field]:
    """The axes that are command-line options, in declaration order (of `cls`, a BenchSpec
    with more axes, such as a test's)."""
    return [f for f in dataclasses.fields(cls or BenchSpec) if "option" in f.metadata]


def common_axes(cls: type | None = None) -> tuple[str, ...]:
    """The options of every harness that takes the common axes (bench.sweep.cli.build_parser's
    default): all but the ones some harnesses name (dataset, sampler, sampling_steps)."""
    return tuple(f.name for f in option_axes(cls) if f.metadata["option"].common)


def expand_grid(base: BenchSpec, **axes: list) -> list[BenchSpec]:
    """The product of the given axes (each a list of values) over a base spec, in the order the
    axes are given, the last axis varying fastest."""
    names = list(axes)
    return [base.replace(**dict(zip(names, combo))) for combo in itertools.product(*axes.values())]
