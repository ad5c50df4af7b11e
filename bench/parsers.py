"""The parsers of the axes' values: each returns a value or raises SpecError with the one line the
user reads, before anything runs (bench.sweep.cli calls them through BenchSpec's declarations).
A parser that checks a value against other axes takes `spec`, the BenchSpec holding the axes
declared above it (untyped here: bench.spec imports this module)."""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Callable

import torch

from bench import model_config
from bench.cards import CARDS
from ddpm.config import MAX_SIDE, PRESETS
from ddpm.device import indexed_device

# bench.models.impl: ours, diffusers' UNet2DModel, lucidrains' denoising-diffusion-pytorch Unet,
# openai's guided-diffusion UNet; or a user's factory, "package.module:callable"
IMPLS = ("ddpm", "diffusers", "lucidrains", "guided-diffusion")
FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
# --optimizer: each optimizer's package (the import name, the pip name and the extra naming it),
# None for torch's own (bench.models.optimizers builds them).
OPTIMIZERS: dict[str, tuple[str, str, str] | None] = {
    "adamw": None,
    "adamw8bit": ("bitsandbytes", "bitsandbytes", "bnb"),
    "ao-adamw8bit": ("torchao", "torchao", "torchao"),
    "ao-adamw4bit": ("torchao", "torchao", "torchao"),
    "adafactor": None,
    "sgd": None,
    "lion": ("lion_pytorch", "lion-pytorch", "lion"),
    "prodigy": ("prodigyopt", "prodigyopt", "prodigy"),
}
# --budget's units, in MiB (2^20 bytes)
_UNITS = {"mib": 1.0, "gib": 1024.0, "mb": 1e6 / 2**20, "gb": 1e9 / 2**20}


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


def parse_attention(text: str, preset: str, image_size: int, spec=None) -> list[str]:
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


def parse_optimizers(text: str) -> list[str]:
    """A comma list of optimizers, each one's package installed (one line naming the extra
    that brings it when not)."""
    values = parse_choices("--optimizer", text, tuple(OPTIMIZERS))
    for value in values:
        package = OPTIMIZERS[value]
        if package and importlib.util.find_spec(package[0]) is None:
            raise SpecError(
                f"--optimizer {value} needs the {package[1]} package: pip install "
                f"'ddpm-bench[{package[2]}]' (or pip install {package[1]})."
            )
        if value == "adafactor" and not hasattr(torch.optim, "Adafactor"):
            raise SpecError(
                "--optimizer adafactor needs torch 2.5 or newer (torch.optim.Adafactor)."
            )
    return values


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


def parse_architecture(option: str, text: str, spec, name: str) -> list[str]:
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


def parse_image_size(value: int | None, preset: str, spec=None) -> int:
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
