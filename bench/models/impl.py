"""The implementations a spec can run (the `--impl` axis, bench.parsers.IMPLS), the registry: ours
(`ddpm`), diffusers' UNet2DModel (bench.models.diffusers_unet), lucidrains'
denoising-diffusion-pytorch Unet (bench.models.lucidrains_unet), openai's guided-diffusion UNet
(bench.models.guided_unet, trained by bench.models.guided_trainer), or a user's factory
`package.module:callable` (bench.models.factory). Each is built here, trained with its own
recipe, and checked before anything runs (`problem`)."""

from __future__ import annotations

import torch
from torch import nn

from bench import model_config
from bench.models import diffusers_unet, factory, guided_flags, lucidrains_unet
from bench.parsers import SpecError
from bench.spec import BenchSpec
from ddpm.config import TrainConfig
from ddpm.errors import first_line
from ddpm.unet import UNet


def is_factory(impl: str) -> bool:
    return ":" in impl


def build_unet(spec: BenchSpec) -> nn.Module:
    """The spec's model, called as model(x_t, t) -> eps (in the current device context)."""
    config, path = spec.unet_config(), spec.config_file
    if spec.impl == "diffusers":
        return diffusers_unet.DiffusersUNet(config, path)
    if spec.impl == "lucidrains":
        return lucidrains_unet.LucidrainsUNet(config, path)
    if spec.impl == guided_flags.NAME:
        from bench.models.guided_unet import GuidedUNet

        return GuidedUNet(spec)
    if is_factory(spec.impl):
        return factory.FactoryModel(spec.impl, path)
    return UNet(config)


def recipe(spec: BenchSpec, model: nn.Module, config: TrainConfig) -> dict:
    """The Trainer's keyword arguments that train this implementation its own way: diffusers'
    example's optimizer and EMA, GaussianDiffusion's loss; ours (and a factory's) none."""
    if spec.impl == "diffusers":
        return diffusers_unet.diffusers_recipe(model, config)
    if spec.impl == "lucidrains":
        return {"objective": lucidrains_unet.lucidrains_loss}
    return {}


def settle(spec: BenchSpec, image_size_given: bool, attention_given: bool) -> BenchSpec:
    """The spec as its implementation builds it: guided-diffusion's image size and attention
    come from its flags unless the command line gave them (SpecError: one line); every other
    implementation's spec is as parsed."""
    if spec.impl != guided_flags.NAME:
        return spec
    try:
        return guided_flags.settle(spec, image_size_given, attention_given)
    except model_config.ModelConfigError as exc:
        raise SpecError(str(exc)) from None


def problem(spec: BenchSpec) -> str | None:
    """Why this spec's model cannot run, in one line, or None: the library is missing, the
    config is rejected, the factory is unusable, or the output is not the input's shape."""
    if spec.config_file and model_config.is_named(spec.config_file):
        if spec.impl != guided_flags.NAME:
            return (
                f"--model-config {spec.config_file} is a named {guided_flags.NAME} config: "
                f"give --impl {guided_flags.NAME} with it."
            )
    if spec.impl == guided_flags.NAME:
        return guided_problem(spec)
    if spec.impl == "ddpm":
        try:
            spec.unet_config()  # --model-config's UNetConfig fields, checked as it reads them
        except model_config.ModelConfigError as exc:
            return str(exc)
        return None
    if spec.impl == "diffusers" and not diffusers_unet.diffusers_installed():
        return f"--impl diffusers needs the diffusers package: {diffusers_unet.INSTALL_HINT}."
    if spec.impl == "lucidrains" and not lucidrains_unet.installed():
        return (
            "--impl lucidrains needs the denoising-diffusion-pytorch package: "
            f"{lucidrains_unet.INSTALL_HINT}."
        )
    if spec.impl == "diffusers" and not spec.config_file:
        reason = diffusers_unet.diffusers_unsupported(spec.unet_config())
        return f"--impl diffusers cannot build this model: {reason}." if reason else None
    if spec.checkpointing == "on" and spec.impl != "diffusers":
        return f"--impl {spec.impl} has no gradient checkpointing here: give --checkpointing off."
    return output_problem(spec)


def guided_problem(spec: BenchSpec) -> str | None:
    """What guided-diffusion's training code cannot run here: more than one rank (its DDP is
    not modelled) and torch.compile (its loop runs eager); then its flags, and the forward."""
    name = guided_flags.NAME
    if not guided_flags.installed():
        return guided_flags.missing()
    if spec.parallel != "none" or spec.ranks > 1:
        return f"--impl {name} runs one rank here (its DDP is not modelled): give --ranks 1."
    if spec.compile != "off":
        return f"--impl {name} trains eager, as its TrainLoop does: give --compile off."
    try:
        guided_flags.flags_of(spec)
    except model_config.ModelConfigError as exc:
        return str(exc)
    return output_problem(spec)


def output_problem(spec: BenchSpec) -> str | None:
    """Build the model on fake tensors (no memory, no init cost) and run one batch-1 forward:
    a rejected config or an output that is not eps's shape is one line."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    config = spec.unet_config()
    shape = (1, config.in_channels, config.image_size, config.image_size)
    source = f" from --model-config {spec.config_file}" if spec.config_file else ""
    with FakeTensorMode(allow_non_fake_inputs=True):
        try:
            model = build_unet(spec)
        except (factory.FactoryError, model_config.ModelConfigError) as exc:
            return str(exc)
        except Exception as exc:  # the library's own refusal of its arguments
            return (
                f"--impl {spec.impl} rejects its arguments{source}: "
                f"{type(exc).__name__}: {first_line(exc)}"
            )
        try:
            out = model(torch.zeros(shape), torch.zeros(1, dtype=torch.long))
        except Exception as exc:  # whatever the model raises on an input of this shape
            return (
                f"--impl {spec.impl}{source}: a forward of a {tuple(shape)} batch fails "
                f"({type(exc).__name__}: {first_line(exc)})."
            )
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return (
            f"--impl {spec.impl}{source}: model(x_t, t) must return the noise prediction, "
            f"shape {shape} like x_t; it returned {got}."
        )
    return None
