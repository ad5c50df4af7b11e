"""`--impl guided-diffusion`'s flags: what --model-config holds for openai's guided-diffusion,
read and typed as its own scripts read them, and the spec's axes mapped onto them.

A config is `model_and_diffusion_defaults()`'s keys (the upsamplers: `sr_model_and_diffusion_
defaults()`'s, with `large_size` and `small_size`), as JSON/TOML values or as the flag text its
README gives (`--attention_resolutions 32,16,8 --class_cond True ...`), plus the training flags
of its scripts/image_train.py that change the step (lr, weight_decay, lr_anneal_steps, ema_rate,
fp16_scale_growth, schedule_sampler) and image_sample.py's clip_denoised. Text is typed as its
argparse types it (the default's type; booleans by its str2bool). A flag its scripts take only
to name files or to log is read and left unused; one that a bench option sets is refused with
that option's name; any other name is one line naming it (and the nearest known flag).

The axes are the command line's and win where they map onto a flag: --image-size onto
image_size (an upsampler's large_size), --channels, --channel-mults, --res-blocks, --heads and
--dropout onto num_channels, channel_mult, num_res_blocks, num_heads and dropout, --attention
onto attention_resolutions; where one cannot apply it is one line. --precision is use_fp16
(fp16: its scheme; fp32: off) and --checkpointing is use_checkpoint: a file that sets either to
the other value contradicts the command line, and that is one line too."""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
from pathlib import Path

from bench import model_config
from bench.model_config import ModelConfigError
from bench.parsers import SpecError
from bench.spec import BenchSpec

NAME = "guided-diffusion"
INSTALL_HINT = "pip install 'ddpm-bench[guided-diffusion]' (or pip install guided-diffusion-sdk)"
# The training flags of its scripts/image_train.py (create_argparser's defaults) that change
# what a step does, and image_sample.py's one that changes a sampling step.
TRAINING = {
    "schedule_sampler": "uniform",
    "lr": 1e-4,
    "weight_decay": 0.0,
    "lr_anneal_steps": 0,
    "ema_rate": "0.9999",
    "fp16_scale_growth": 1e-3,
}
SAMPLING = {"clip_denoised": True}
# Flags of its scripts that only name files, count samples or set logging: nothing to measure.
UNUSED = {
    "data_dir": "",
    "log_interval": 10,
    "save_interval": 10000,
    "resume_checkpoint": "",
    "model_path": "",
    "num_samples": 10000,
}
# Flags of its scripts that a bench option sets, and that option.
OPTIONS = {
    "batch_size": "--batch and --accum (its batch per process is --batch x --accum)",
    "microbatch": "--batch (its microbatch; --accum micro-batches make a step)",
    "use_ddim": "bench.sampling's --sampler ddim",
}
# The axes that map onto a flag, and the flag (its upsamplers take no channel_mult).
ARCHITECTURE = {
    "channels": "num_channels",
    "channel_mults": "channel_mult",
    "res_blocks": "num_res_blocks",
    "heads": "num_heads",
    "dropout": "dropout",
}
# Flags that hold comma lists: a JSON/TOML list of numbers is taken for them too.
LISTS = ("attention_resolutions", "channel_mult", "ema_rate", "timestep_respacing")


def installed() -> bool:
    return importlib.util.find_spec("guided_diffusion") is not None


def missing() -> str:
    return f"--impl {NAME} needs the guided-diffusion-sdk package: {INSTALL_HINT}."


def script_util():
    import warnings

    with warnings.catch_warnings():  # its nn.py decorates with torch.cuda.amp's old spelling
        warnings.simplefilter("ignore", FutureWarning)
        from guided_diffusion import script_util
    return script_util


def model_defaults(super_res: bool) -> dict:
    """Its own defaults of the model and diffusion flags."""
    su = script_util()
    return su.sr_model_and_diffusion_defaults() if super_res else su.model_and_diffusion_defaults()


@dataclasses.dataclass(frozen=True)
class Flags:
    """A config's flags, typed: `model` for create_model_and_diffusion (or its sr_ twin),
    `training` and `sampling` for the step, `given` the names the file set."""

    model: dict
    training: dict
    sampling: dict
    given: frozenset
    source: str

    @property
    def super_res(self) -> bool:
        return "large_size" in self.model

    @property
    def class_cond(self) -> bool:
        return bool(self.model["class_cond"])

    @property
    def image_size(self) -> int:
        return self.model["large_size" if self.super_res else "image_size"]

    @property
    def ema_rates(self) -> list[float]:
        return [float(r) for r in self.training["ema_rate"].split(",")]

    def levels(self) -> int:
        """The UNet's levels: its channel_mult's length, as its create_model picks it."""
        mult = self.model.get("channel_mult", "")
        if mult:
            return len(mult.split(","))
        return {512: 7, 256: 6, 128: 5, 64: 4}.get(self.image_size, 0)


def read(path: str) -> Flags:
    """The file's flags over its defaults, each typed and checked; one line for a flag that is
    unknown, set by an option, or of the wrong type."""
    given = model_config.load(path)
    super_res = "large_size" in given or "small_size" in given
    defaults = model_defaults(super_res)
    known = {**defaults, **TRAINING, **SAMPLING, **UNUSED}
    for name in given:
        if name in OPTIONS:
            raise ModelConfigError(
                f"--model-config {path}: --{name} is set by bench's {OPTIONS[name]}; leave it "
                "out of the file."
            )
        if name not in known:
            other = model_defaults(not super_res)
            hint = (
                " (an upsampler's flag: give --large_size and --small_size instead of --image_size)"
                if name in other
                else _nearest(name, known)
            )
            raise ModelConfigError(
                f"--model-config {path}: unknown flag --{name} for {NAME}{hint}."
            )
    typed = {name: _typed(path, name, value, known[name]) for name, value in given.items()}
    for name, value in typed.items():
        _check(path, name, value)
    merged = {**known, **typed}
    return Flags(
        model={n: merged[n] for n in defaults},
        training={n: merged[n] for n in TRAINING},
        sampling={n: merged[n] for n in SAMPLING},
        given=frozenset(given),
        source=path,
    )


def _nearest(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean --{close[0]}?)" if close else ""


def _typed(path: str, name: str, value, default):
    """`value` as the type of the flag's default, as its add_dict_to_argparser types text."""
    wrong = f"--model-config {path}: --{name} {value!r} is not "
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        words = {"yes": True, "true": True, "t": True, "y": True, "1": True}
        words.update({"no": False, "false": False, "f": False, "n": False, "0": False})
        if isinstance(value, str) and value.lower() in words:
            return words[value.lower()]
        raise ModelConfigError(wrong + "a boolean: give True or False.")
    if isinstance(default, int):
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ModelConfigError(wrong + "an integer.")
    if isinstance(default, float):
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            if math.isfinite(number):
                return float(number)
        raise ModelConfigError(wrong + "a finite number.")
    if isinstance(value, str):
        return value
    if name in LISTS and isinstance(value, (int, float, list)) and not isinstance(value, bool):
        items = value if isinstance(value, list) else [value]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
            return ",".join(str(v) for v in items)
    raise ModelConfigError(wrong + f"text (its default is {default!r}).")


def _ints(text: str) -> list[int] | None:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        return None


def _check(path: str, name: str, value) -> None:  # noqa: C901 (one rule per flag, flat)
    """The values its code would refuse or misread, refused here in one line."""
    bad = f"--model-config {path}: --{name} {value}"
    positive = (
        "image_size",
        "large_size",
        "small_size",
        "num_channels",
        "num_res_blocks",
        "num_heads",
        "diffusion_steps",
    )
    if name in positive and value < 1:
        raise ModelConfigError(f"{bad} is not allowed: it must be >= 1.")
    if name in ("num_head_channels", "num_heads_upsample") and value != -1 and value < 1:
        raise ModelConfigError(f"{bad} is not allowed: -1 (unused) or >= 1.")
    if name == "dropout" and not 0 <= value < 1:
        raise ModelConfigError(f"{bad} is not allowed: it must be in [0, 1).")
    if name in ("lr",) and value <= 0:
        raise ModelConfigError(f"{bad} is not allowed: it must be > 0.")
    if name in ("weight_decay", "fp16_scale_growth", "lr_anneal_steps") and value < 0:
        raise ModelConfigError(f"{bad} is not allowed: it must be >= 0.")
    if name == "attention_resolutions":
        resolutions = _ints(value)
        if not resolutions or min(resolutions) < 1:
            raise ModelConfigError(
                f"{bad!s} is not allowed: give resolutions joined by commas, e.g. 32,16,8 (its "
                "create_model needs at least one)."
            )
    if name == "channel_mult" and value and not (_ints(value) and min(_ints(value)) >= 1):
        raise ModelConfigError(
            f"{bad} is not allowed: give integers joined by commas, e.g. 1,2,3,4."
        )
    if name == "noise_schedule" and value not in ("linear", "cosine"):
        raise ModelConfigError(f"{bad} is not allowed: its schedules are linear and cosine.")
    if name == "schedule_sampler" and value != "uniform":
        raise ModelConfigError(
            f"{bad} is not modelled here: its UniformSampler (--schedule_sampler uniform) is."
        )
    if name == "ema_rate":
        try:
            rates = [float(r) for r in value.split(",")]
        except ValueError:
            rates = [-1.0]
        if not all(0 <= r < 1 for r in rates):
            raise ModelConfigError(
                f"{bad} is not allowed: give rates in [0, 1) joined by commas, e.g. 0.9999."
            )


# ----- the spec's axes on the flags -------------------------------------------------------------


def flags_of(spec: BenchSpec) -> Flags:
    """The flags a spec's model and step take: the file's (its defaults without one), then the
    spec's axes where they map onto a flag (bench.models.guided_flags's docstring)."""
    flags = read(spec.config_file) if spec.config_file else _defaults_only()
    model = dict(flags.model)
    model[size_flag(flags)] = spec.image_size
    model["attention_resolutions"] = spec.attention.replace("+", ",")
    model["use_checkpoint"] = spec.checkpointing == "on"
    model["use_fp16"] = spec.precision == "fp16"
    for axis, flag in ARCHITECTURE.items():
        value = getattr(spec, axis)
        if value != "preset":
            model[flag] = _axis_value(flag, value)
    return dataclasses.replace(flags, model=model)


def _defaults_only() -> Flags:
    defaults = model_defaults(False)
    return Flags(defaults, dict(TRAINING), dict(SAMPLING), frozenset(), "its defaults")


def _axis_value(flag: str, text: str):
    if flag == "dropout":
        return float(text)
    if flag == "channel_mult":
        return text
    return int(text)


def settle(spec: BenchSpec, image_size_given: bool, attention_given: bool) -> BenchSpec:
    """The spec as the guided-diffusion model it trains: its image size and attention the
    file's unless the command line gave them, and every axis checked against the flags
    (SpecError or ModelConfigError, one line)."""
    if not installed():
        raise SpecError(missing())
    flags = read(spec.config_file) if spec.config_file else _defaults_only()
    where = f"--model-config {spec.config_file}" if spec.config_file else f"{NAME}'s defaults"
    if spec.precision not in ("fp32", "fp16"):
        raise SpecError(
            f"--precision {spec.precision}: {NAME} trains in fp32 or in its own fp16 scheme "
            "(use_fp16: fp16 weights, fp32 master weights, loss scaling); give fp32 or fp16."
        )
    for flag, option, value, words in (
        ("use_fp16", "--precision", spec.precision == "fp16", ("fp32", "fp16")),
        ("use_checkpoint", "--checkpointing", spec.checkpointing == "on", ("off", "on")),
    ):
        if flag in flags.given and flags.model[flag] != value:
            raise SpecError(
                f"{where} sets --{flag} {flags.model[flag]}, which contradicts {option} "
                f"{words[value]}: give {option} {words[flags.model[flag]]}, or leave --{flag} "
                "out of the file."
            )
    size = spec.image_size if image_size_given else flags.image_size
    attention = (
        spec.attention
        if attention_given
        else "+".join(flags.model["attention_resolutions"].split(","))
    )
    if attention == "none":
        raise SpecError(
            f"--attention none: {NAME}'s UNet always has attention in its middle block and its "
            "create_model needs at least one resolution; give resolutions, e.g. 32+16+8."
        )
    settled = spec.replace(image_size=size, attention=attention)
    sized = "--image-size" if image_size_given else f"{where}: --{size_flag(flags)}"
    _check_axes(settled, flags, where, sized)
    return settled


def size_flag(flags: Flags) -> str:
    return "large_size" if flags.super_res else "image_size"


def _check_axes(spec: BenchSpec, flags: Flags, where: str, sized: str) -> None:
    """What the flags' UNet cannot do with the axes: one line each (`sized`: where the image
    size came from)."""
    if flags.super_res and spec.channel_mults != "preset":
        raise SpecError(
            f"--channel-mults does not apply to {where}: its upsampler's sr_create_model fixes "
            "channel_mult by --large_size."
        )
    head_channels = flags.model["num_head_channels"]
    if spec.heads != "preset" and head_channels != -1:
        raise SpecError(
            f"--heads {spec.heads} would set --num_heads, which its UNet ignores while {where} "
            f"sets --num_head_channels {head_channels}: give num_head_channels -1 in a file."
        )
    final = flags_of(spec)
    model = final.model
    mult = model.get("channel_mult", "")
    if not flags.super_res and not mult and spec.image_size not in (64, 128, 256, 512):
        raise SpecError(
            f"{sized} {spec.image_size}: {NAME}'s create_model picks channel_mult only for "
            "64, 128, 256 and 512 px; give --channel-mults (or --channel_mult in the file)."
        )
    if flags.super_res and spec.image_size not in (64, 256, 512):
        raise SpecError(
            f"{sized} {spec.image_size}: its upsampler's sr_create_model takes a large_size "
            "of 64, 256 or 512."
        )
    levels = final.levels()
    if spec.image_size % 2 ** (levels - 1):
        raise SpecError(
            f"{sized} {spec.image_size}: {NAME}'s UNet with {levels} levels halves it "
            f"{levels - 1} times, so it must be a multiple of {2 ** (levels - 1)}."
        )
    visited = [spec.image_size // 2**i for i in range(levels)]
    for res in map(int, model["attention_resolutions"].split(",")):
        if res not in visited:
            raise SpecError(
                f"attention resolution {res} is never visited by {where}'s UNet at "
                f"{spec.image_size} px (its levels: {', '.join(map(str, visited))}): its "
                "create_model would place no attention there."
            )
    _check_respacing(model, where)


def _check_respacing(model: dict, where: str) -> None:
    respacing = model["timestep_respacing"]
    if not respacing:
        return
    from guided_diffusion.respace import space_timesteps

    try:
        space_timesteps(model["diffusion_steps"], respacing)
    except ValueError as exc:
        raise SpecError(f"{where}: --timestep_respacing {respacing}: {exc}") from None


def sampling_respacing(spec: BenchSpec) -> str:
    """bench.sampling's sampler and steps as its timestep_respacing: "ddimN" for DDIM's N
    steps, "N" for ancestral sampling over N respaced steps (its README samples with 250)."""
    return f"ddim{spec.sampling_steps}" if spec.sampler == "ddim" else str(spec.sampling_steps)


def source_words(spec: BenchSpec) -> str:
    path = spec.config_file
    if not path:
        return f"{NAME}'s default flags"
    return Path(path).name if not model_config.is_named(path) else path
