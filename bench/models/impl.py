"""The implementations a spec can run (the `--impl` axis, bench.parsers.IMPLS), the registry: ours
(`ddpm`), diffusers' UNet2DModel (bench.models.diffusers_unet), lucidrains'
denoising-diffusion-pytorch Unet (bench.models.lucidrains_unet), openai's guided-diffusion UNet
(bench.models.guided_unet, trained by bench.models.guided_trainer), or a user's factory
`package.module:callable` (bench.models.factory). Each is built here, trained with its own
recipe, and checked before anything runs (`problem`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException

from bench import model_config
from bench.models import diffusers_unet, factory, guided_flags, lucidrains_unet
from bench.models.fake import fake_mode
from bench.parsers import SpecError
from bench.spec import BenchSpec
from ddpm.config import TrainConfig
from ddpm.errors import first_line
from ddpm.precision import autocast
from ddpm.schedule import NoiseSchedule
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
        return factory.FactoryModel(spec.impl, path, config)
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


def problem(spec: BenchSpec, run: bool = True) -> str | None:
    """Why this spec's model cannot run, in one line, or None: the library is missing, the
    config is rejected, the factory is unusable, or the model fails as the spec calls it.
    `run`: build and call any model but ours and diffusers' built to it (the user's code:
    bench.sweep.check runs that in a process of its own); without, only what reads no code."""
    if spec.config_file and model_config.is_named(spec.config_file):
        if spec.impl != guided_flags.NAME:
            return (
                f"--model-config {spec.config_file} is a named {guided_flags.NAME} config: "
                f"give --impl {guided_flags.NAME} with it."
            )
    if spec.impl == guided_flags.NAME:
        return guided_problem(spec, run)
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
    return output_problem(spec) if run else None


def guided_problem(spec: BenchSpec, run: bool = True) -> str | None:
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
    return output_problem(spec) if run else None


def output_problem(spec: BenchSpec) -> str | None:
    """The model as the spec runs it, on fake tensors (no memory, no init cost): built, then
    called at the spec's batch and precision, in training mode (eval mode for a sampling spec).
    Its output must be a floating-point tensor of exactly the input's shape (a loss would
    broadcast another), and a training spec needs parameters that train and a loss whose
    gradient reaches them. What fails is one line. A model whose call reads tensor values
    (x.max().item(), a shape from a mask), which fake tensors do not have, is checked on real
    ones instead: it runs for real (its predictions, traced on fake tensors, cannot)."""
    schedule = NoiseSchedule.linear()  # built outside fake mode: its validation reads values
    with fake_mode():
        model = _built(spec)
        if isinstance(model, str):
            return model
        try:
            return _call_problem(spec, model, schedule)
        except DATA_DEPENDENT:
            pass
    torch.manual_seed(spec.seed)
    model = _built(spec)
    return model if isinstance(model, str) else _call_problem(spec, model, schedule)


# What fake tensors raise where a call reads a value they do not have.
DATA_DEPENDENT = (DataDependentOutputException, DynamicOutputShapeException)


def _source(spec: BenchSpec) -> str:
    return f" from --model-config {spec.config_file}" if spec.config_file else ""


def _built(spec: BenchSpec) -> nn.Module | str:
    """The spec's model, or why it cannot be built (one line)."""
    try:
        return build_unet(spec)
    except (factory.FactoryError, model_config.ModelConfigError) as exc:
        return str(exc)
    except Exception as exc:  # the library's own refusal of its arguments
        return (
            f"--impl {spec.impl} rejects its arguments{_source(spec)}: "
            f"{type(exc).__name__}: {first_line(exc)}"
        )


def _call_problem(spec: BenchSpec, model: nn.Module, schedule: NoiseSchedule) -> str | None:
    """The model called as the spec calls it (DATA_DEPENDENT passes through: the caller runs it
    again on real tensors)."""
    config = spec.unet_config()
    shape = (spec.batch, config.in_channels, config.image_size, config.image_size)
    source = _source(spec)
    training = spec.sampler == "none"  # a sampling spec only calls the model
    trainable = [p for p in model.parameters() if p.requires_grad]
    if training and not trainable:
        count = sum(1 for _ in model.parameters())
        held = f"all {count} of its parameter tensors are frozen" if count else "none"
        return (
            f"--impl {spec.impl}{source}: the model has no parameters that train ({held}): "
            "training it would optimize nothing."
        )
    model.train(training)
    x, t = torch.zeros(shape), torch.zeros(spec.batch, dtype=torch.long)
    objective = recipe(spec, model, spec.train_config()).get("objective") if training else None
    if objective is not None:  # the implementation's own loss, which calls the model itself
        return _gradient_problem(
            spec, trainable, lambda: objective(model, schedule, x, t, x, spec.precision)
        )
    mode = "training" if training else "sampling"
    run = f"a {spec.precision} {mode} forward of a {shape} batch"
    try:
        with torch.set_grad_enabled(training), autocast(spec.precision, "cpu"):
            out = model(x, t)
    except DATA_DEPENDENT:
        raise
    except Exception as exc:  # whatever the model raises on an input of this shape
        return f"--impl {spec.impl}{source}: {run} fails ({type(exc).__name__}: {first_line(exc)})."
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return (
            f"--impl {spec.impl}{source}: model(x_t, t) must return the noise prediction, "
            f"shape {shape} like x_t; {run} returned {got}."
        )
    if not out.is_floating_point():
        return (
            f"--impl {spec.impl}{source}: model(x_t, t) must return the noise prediction "
            f"in floating point; {run} returned {out.dtype}."
        )
    if training:  # L_simple on that output, as ddpm.objective.l_simple takes it
        return _gradient_problem(spec, trainable, lambda: F.mse_loss(out.float(), x))
    return None


def _gradient_problem(spec: BenchSpec, trainable: list, loss) -> str | None:
    """The training loss's backward, and a gradient on some parameter that trains."""
    source = _source(spec)
    try:
        loss().backward()
    except DATA_DEPENDENT:
        raise
    except Exception as exc:
        return (
            f"--impl {spec.impl}{source}: the training loss or its backward fails "
            f"({type(exc).__name__}: {first_line(exc)})."
        )
    if all(p.grad is None for p in trainable):
        return (
            f"--impl {spec.impl}{source}: the loss's gradient reaches none of the model's "
            "parameters: training it would optimize nothing."
        )
    return None
