"""FLOPs of one optimizer step, counted once on an eager model over fake tensors (no memory, no
arithmetic): torch.compile's output is never instrumented, and the timed pass never pays."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from bench.models.fake import fake_mode
from bench.models.impl import build_unet
from bench.spec import BenchSpec
from ddpm.unet import Upsample

aten = torch.ops.aten


def _cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# torch's FLOP table knows the CUDA attention kernels; the CPU one has the same arithmetic.
CPU_ATTENTION = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
}


def training_step_flops(spec: BenchSpec) -> int:
    """Matmul, convolution and attention FLOPs (multiply-add = 2) of one optimizer step: forward
    and backward for batch x accum images. Elementwise work (norms, activations, AdamW, EMA) is
    left out, as in the usual MFU convention (Chowdhery et al. 2022)."""
    config = spec.unet_config().replace(gradient_checkpointing=False)
    with fake_mode(allow_non_fake_inputs=False):
        model = build_unet(spec.replace(checkpointing="off"))
        for module in model.modules():
            # MFU counts the architecture's FLOPs, not the cheaper algorithm ours runs for the
            # upsampling convolutions, so implementations of one architecture compare fairly.
            if isinstance(module, Upsample):
                module.phased = False
        x = torch.randn(spec.batch, config.in_channels, config.image_size, config.image_size)
        t = torch.zeros(spec.batch, dtype=torch.long)
        counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)
        with counter:
            model(x, t).float().square().mean().backward()
    # Every micro-batch repeats the same work. Gradient checkpointing recomputes the forward
    # pass, which is extra work, not useful FLOPs: it lowers MFU, as it should.
    return counter.get_total_flops() * spec.accum
