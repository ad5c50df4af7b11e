"""`--impl guided-diffusion`: openai's UNetModel (or, for an upsampler, SuperResModel) and its
diffusion, built by its own script_util.create_model_and_diffusion (sr_create_model_and_diffusion)
from the spec's flags (bench.models.guided_flags).

The network is called two ways. Training and sampling call `model.unet` through its diffusion
(training_losses, p_sample_loop, ddim_sample_loop) with its conditioning as model_kwargs: class
labels `y` for a class-conditional model, the low-resolution image `low_res` for an upsampler.
model(x_t, t) is our calling convention, eps (with learn_sigma its output's first half: the
other half is the variance interpolation), which FLOP counting and the fake forward that checks
a spec take; there a class-conditional model gets class 0 and an upsampler x_t's own
downsampling, since neither changes the work.

Under use_fp16 the model is built as create_model builds it, fp32 weights with an fp16 forward,
because MixedPrecisionTrainer takes its fp32 master weights from those before it converts the
torso (convert_to_fp16). Whatever runs the model without that trainer converts it first, as its
image_sample.py does: `run_as_built()`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.models.guided_flags import Flags, flags_of, script_util
from bench.spec import BenchSpec


class GuidedUNet(nn.Module):
    def __init__(self, spec: BenchSpec):
        super().__init__()
        self.flags: Flags = flags_of(spec)
        su = script_util()
        create = (
            su.sr_create_model_and_diffusion
            if self.flags.super_res
            else (su.create_model_and_diffusion)
        )
        self.unet, self.diffusion = create(**self.flags.model)  # the diffusion is no module
        self.config = spec.unet_config()  # the images' shape: 3 channels at its image size

    def run_as_built(self) -> GuidedUNet:
        """The model as its scripts run it outside training: under use_fp16, its torso in fp16
        (convert_to_fp16; converting twice changes nothing)."""
        if self.flags.model["use_fp16"]:
            self.unet.convert_to_fp16()
        return self

    def conditioning(self, x0: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        """Its model_kwargs for images x0: the labels (class-conditional), and the low-resolution
        input its super_res_train.py makes of each image (F.interpolate, mode "area", to
        small_size)."""
        kwargs = {}
        if self.flags.class_cond:
            if labels is None:
                raise ValueError("a class-conditional model needs class labels (y).")
            kwargs["y"] = labels
        if self.flags.super_res:
            small = self.flags.model["small_size"]
            kwargs["low_res"] = F.interpolate(x0, (small, small), mode="area")
        return kwargs

    def forward(self, x: torch.Tensor, t: torch.Tensor, **model_kwargs) -> torch.Tensor:
        self.run_as_built()
        if self.flags.class_cond and "y" not in model_kwargs:
            model_kwargs["y"] = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        if self.flags.super_res and "low_res" not in model_kwargs:
            model_kwargs = {**model_kwargs, **self.conditioning(x, model_kwargs.get("y"))}
        out = self.unet(x, self.diffusion._scale_timesteps(t), **model_kwargs)
        return out[:, : x.shape[1]]


def held_out_labels(count: int) -> torch.Tensor:
    """Classes for held-out images, the same for every call: 0, 1, 2, ... in order (the
    datasets bench trains on have no ImageNet labels)."""
    return torch.arange(count) % script_util().NUM_CLASSES


def guided_loss(
    model: nn.Module,
    schedule,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    precision: str = "fp32",
) -> torch.Tensor:
    """Its training loss on given draws (ddpm.objective.Objective's signature, for bench.loss's
    held-out loss): its own GaussianDiffusion.training_losses, mean over the images (its
    UniformSampler weighs every image 1), in the model's own precision (its fp16 scheme has no
    autocast: the weights are fp16)."""
    net = getattr(model, "net", model)  # the trainer's container holds the GuidedUNet
    if net.diffusion.num_timesteps != schedule.timesteps:
        raise ValueError(
            f"the draws span {schedule.timesteps} steps; this diffusion has "
            f"{net.diffusion.num_timesteps}."
        )
    kwargs = net.conditioning(x0, held_out_labels(x0.shape[0]).to(x0.device))
    losses = net.diffusion.training_losses(net.unet, x0, t, model_kwargs=kwargs, noise=noise)
    return losses["loss"].mean().float()
