"""How `--impl guided-diffusion` samples: its own p_sample_loop_progressive (ancestral, its
learned variance) or ddim_sample_loop_progressive (eta 0), over a diffusion respaced as its
image_sample.py respaces it (`--timestep_respacing 250`, `ddim25`): bench.sampling's --sampler
and --sampling-steps give the respacing (bench.models.guided_flags.sampling_respacing).

As its image_sample.py runs it: the model in eval mode and, under use_fp16, its torso in fp16;
the loop's own no_grad; clip_denoised from the flags (True by default); the classes of a
class-conditional model given (bench.sampling's --classes: its script draws them uniformly,
`random` here, seeded); an upsampler's low-resolution input drawn once per run from the seeded
generator at small_size, standing for its base samples (values do not change the work)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from bench.models.guided_flags import sampling_respacing, script_util
from bench.models.guided_unet import GuidedUNet
from bench.spec import BenchSpec

RANDOM = "random"  # --classes random: uniform over its 1000 classes, as image_sample.py draws


def sampling_diffusion(model: GuidedUNet, spec: BenchSpec):
    """Its diffusion for the spec's sampler: create_gaussian_diffusion of the model's flags,
    respaced."""
    m = model.flags.model
    return script_util().create_gaussian_diffusion(
        steps=m["diffusion_steps"],
        learn_sigma=m["learn_sigma"],
        noise_schedule=m["noise_schedule"],
        use_kl=m["use_kl"],
        predict_xstart=m["predict_xstart"],
        rescale_timesteps=m["rescale_timesteps"],
        rescale_learned_sigmas=m["rescale_learned_sigmas"],
        timestep_respacing=sampling_respacing(spec),
    )


def parse_classes(text: str | None) -> list[int] | str | None:
    """--classes: "random", or class indices joined by commas (cycled over the batch); ValueError
    with the line to print otherwise."""
    if text is None or text == RANDOM:
        return text
    classes = script_util().NUM_CLASSES
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = [-1]
    if not all(0 <= v < classes for v in values):
        raise ValueError(
            f"--classes {text!r} is not allowed: give random, or class indices 0..{classes - 1} "
            "joined by commas (e.g. 207,360)."
        )
    return values


def labels(classes: list[int] | str, batch: int, generator: torch.Generator) -> torch.Tensor:
    if classes == RANDOM:
        return torch.randint(0, script_util().NUM_CLASSES, (batch,), generator=generator)
    return torch.tensor([classes[i % len(classes)] for i in range(batch)])


def progressive(
    model: GuidedUNet,
    spec: BenchSpec,
    generator: torch.Generator,
    device: torch.device | str,
    classes: list[int] | str | None = None,
) -> Iterator[dict]:
    """One complete run of the spec's sampler, a step per item (its loop's dict: "sample",
    "pred_xstart"); x_T, the classes and an upsampler's input come from `generator`."""
    flags = model.flags
    if flags.class_cond and classes is None:
        raise ValueError("a class-conditional model samples given classes (--classes).")
    model.run_as_built().eval()
    diffusion = sampling_diffusion(model, spec)
    c = model.config
    shape = (spec.batch, c.in_channels, c.image_size, c.image_size)
    noise = torch.randn(shape, generator=generator).to(device)
    kwargs = {}
    if flags.class_cond:
        kwargs["y"] = labels(classes, spec.batch, generator).to(device)
    if flags.super_res:
        small = flags.model["small_size"]
        base = torch.randn(spec.batch, c.in_channels, small, small, generator=generator)
        kwargs["low_res"] = base.clamp(-1, 1).to(device)
    loop = (
        diffusion.ddim_sample_loop_progressive
        if spec.sampler == "ddim"
        else diffusion.p_sample_loop_progressive
    )
    yield from loop(
        model.unet,
        shape,
        noise=noise,
        clip_denoised=flags.sampling["clip_denoised"],
        model_kwargs=kwargs,
        device=device,
        progress=False,
    )
