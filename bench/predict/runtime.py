"""How long a step takes on a CUDA card that is not here: a roofline over the traced aten ops.

One optimizer step (or one denoising step) runs on fake tensors under CUDA's rules, as the
memory prediction traces it (bench.predict.trace, bench.predict.cuda_rules), while a dispatch
mode records every aten op that launches work: its FLOPs (torch.utils.flop_counter's registry,
the counter bench.measure.flops uses) and the bytes of its tensors read and written. Each op
then costs

    max(flops / (peak for its dtype and path x COMPUTE_EFFICIENCY),
        bytes / (DRAM bandwidth x MEMORY_EFFICIENCY)) + LAUNCH_S per kernel

and the step is the sum (one stream, nothing overlaps). The peaks and bandwidth are the card's
datasheet figures (bench.cards); the three constants are below, each with where it comes from.
Nothing here is measured: every figure is a prediction, and the docs (docs/throughput.md) hold
it to public measurements."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from bench.cards import Card
from bench.measure.flops import CPU_ATTENTION
from bench.models import guided_sampling
from bench.models.guided_flags import NAME as GUIDED
from bench.models.workload import build_model, build_trainer, synthetic_images, traced_precision
from bench.predict.cuda_rules import CudaRules
from bench.spec import BenchSpec
from ddpm.sample import DDIMSampler, DDPMSampler, sample_progressive
from ddpm.schedule import NoiseSchedule

aten = torch.ops.aten

# Calibrated on ONE public measurement: torchcfm's 35.7M-parameter CIFAR-10 UNet trains at
# 1.84 it/s in fp32 at batch 128 on a V100 32 GB (atong01/conditional-flow-matching issue
# 105). Our ddpm-cifar10 step at that batch, predicted for that card with this efficiency,
# takes 1 / 1.84 s. It applies to convolutions, matmuls and attention on every path.
COMPUTE_EFFICIENCY = 0.59
# The share of datasheet DRAM bandwidth a streaming kernel reaches: 750 of 900 GB/s on a V100
# (Jia et al. 2018, "Dissecting the NVIDIA Volta GPU Architecture via Microbenchmarking",
# arXiv:1804.06826).
MEMORY_EFFICIENCY = 750 / 900
# Per kernel launched back to back from one stream: NVIDIA's "Getting Started with CUDA
# Graphs" (developer.nvidia.com/blog/cuda-graphs, 2019) times 3.8 us per launch of a kernel
# whose work takes 2.9 us, so about 1 us each. Host-side work (Python, eager dispatch) is not
# modelled: where it is slower than the card (small batches), the prediction is too fast.
LAUNCH_S = 1e-6
# The paper's schedule: 800k optimizer steps at batch 128 (Ho et al. 2020, Appendix B).
PAPER_TRAIN_STEPS = 800_000

FLOPS = {**flop_registry, **CPU_ATTENTION}
CONVOLUTION = {aten.convolution, aten.convolution_backward}
MATMUL = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm}
FUSED_ADAM = {aten._fused_adam_, aten._fused_adamw_}
# Ops that allocate or alias but launch nothing.
NO_KERNEL = {
    aten.empty,
    aten.empty_like,
    aten.empty_strided,
    aten.new_empty,
    aten.new_empty_strided,
    aten._unsafe_view,
}


@dataclass(frozen=True)
class Kernel:
    """One recorded aten op: what the roofline needs of it."""

    op: str
    kind: str  # "conv", "matmul" (attention included) or "memory" (everything else)
    flops: int
    bytes: int  # read + written
    dtype: torch.dtype  # the dtype its math runs in (its first floating input's)
    launches: int = 1


def _bytes(t: torch.Tensor) -> int:
    """Bytes a kernel touches in a tensor: broadcast (stride-0) dimensions read once, as torch's
    own estimator counts them (torch.utils._runtime_estimation.get_num_bytes)."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n * t.element_size()


def _kind(packet) -> str:
    if packet in CONVOLUTION:
        return "conv"
    if packet in MATMUL or "scaled_dot_product" in packet.__name__:
        return "matmul"
    return "memory"


class KernelRecorder(TorchDispatchMode):
    """Records each aten op that launches work while `on` is set. Ops on CUDA stand-ins are
    CudaRules tracing a call (it replays the traced graph on the step's own fake CPU tensors,
    which are recorded), so they are skipped."""

    def __init__(self):
        super().__init__()
        self.kernels: list[Kernel] = []
        self.on = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.on:
            self.record(func, args, kwargs, out)
        return out

    def record(self, func, args, kwargs, out) -> None:
        packet = func._overloadpacket
        if func.namespace != "aten" or func.is_view or packet in NO_KERNEL:
            return
        inputs = [x for x in tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor)]
        outputs = [x for x in tree_flatten(out)[0] if isinstance(x, torch.Tensor)]
        if any(t.device.type == "cuda" for t in inputs + outputs):
            return
        if not outputs:  # in place with no return (fused AdamW, foreach): it writes its args
            written = [
                a.name for a in func._schema.arguments if a.alias_info and a.alias_info.is_write
            ]
            if packet in FUSED_ADAM and kwargs.get("grad_scale") is None:
                written.remove("grads")  # its schema may write them; it does only to unscale
            outputs = [
                x
                for n in written
                for x in tree_flatten(kwargs.get(n))[0]
                if isinstance(x, torch.Tensor)
            ]
            outputs += [
                x
                for a, v in zip(func._schema.arguments, args)
                if a.name in written
                for x in tree_flatten(v)[0]
                if isinstance(x, torch.Tensor)
            ]
        flops = FLOPS[packet](*args, **kwargs, out_val=out) if packet in FLOPS else 0
        floating = [t.dtype for t in inputs if t.is_floating_point()]
        launches = 1
        if packet is aten.convolution_backward:  # data and weight gradients (and bias)
            mask = kwargs.get("output_mask", args[10] if len(args) > 10 else (True,))
            launches = max(1, sum(bool(m) for m in mask))
        self.kernels.append(
            Kernel(
                op=str(packet).removeprefix("aten."),
                kind=_kind(packet),
                flops=int(flops),
                bytes=sum(_bytes(t) for t in inputs + outputs),
                dtype=floating[0] if floating else torch.float32,
                launches=launches,
            )
        )


def train_step_kernels(spec: BenchSpec, card: Card) -> list[Kernel]:
    """The kernels of one steady-state optimizer step of `spec` (one rank: the exchange of
    gradients across ranks is not in it), traced under CUDA's rules for `card`."""
    precision = traced_precision(spec)  # as the memory trace
    schedule = NoiseSchedule.linear()  # built outside fake mode: its validation reads values
    recorder = KernelRecorder()
    with FakeTensorMode(allow_non_fake_inputs=True), CudaRules(card.capability), recorder:
        trainer = build_trainer(
            spec.replace(precision=precision, parallel="none", ranks=1),
            device="cpu",
            compiled=False,
            schedule=schedule,
        )
        images = synthetic_images(spec, spec.batch * spec.accum)
        trainer.step(images)  # creates the optimizer state
        recorder.on = True
        trainer.step(images)
        recorder.on = False
    if spec.precision == "fp16":  # traced as bf16: the same ops, at fp16's peak
        return [_as_fp16(k) for k in recorder.kernels]
    return recorder.kernels


def _as_fp16(k: Kernel) -> Kernel:
    if k.dtype != torch.bfloat16:
        return k
    return Kernel(k.op, k.kind, k.flops, k.bytes, torch.float16, k.launches)


def denoising_step_kernels(spec: BenchSpec, card: Card) -> list[Kernel]:
    """The kernels of one denoising step (one UNet call on the batch and the sampler's update,
    in inference mode), as ddpm.sample.sample_progressive takes it."""
    schedule = NoiseSchedule.linear()
    if spec.sampler == "ddpm":
        sampler = DDPMSampler(schedule)
    else:
        sampler = DDIMSampler(schedule, spec.sampling_steps)
    c = spec.unet_config()
    shape = (spec.batch, c.in_channels, c.image_size, c.image_size)
    recorder = KernelRecorder()
    with FakeTensorMode(allow_non_fake_inputs=True), CudaRules(card.capability), recorder:
        model = build_model(spec, compiled=False)
        if spec.impl == GUIDED:  # its own loop (classes do not change the work)
            steps = guided_sampling.progressive(model, spec, torch.Generator(), "cpu", "random")
        else:
            steps = sample_progressive(
                model, sampler, shape, device="cpu", precision=spec.precision
            )
        with contextlib.closing(steps):
            next(steps)  # the first step: kernels warm, nothing recorded
            recorder.on = True
            next(steps)
            recorder.on = False
    return recorder.kernels


def peak_tflops(card: Card, k: Kernel, conv_tf32: bool, matmul_tf32: bool) -> float:
    """The datasheet peak an op's math runs at: tensor cores for fp16 (where the card has them)
    and bf16 (compute capability 8.0 on; before, emulated at no more than the FP32 rate), TF32
    for fp32 convolutions or matmuls where torch allows it and the card has it, else the FP32
    CUDA cores."""
    if k.dtype == torch.float16 and card.tensor_cores:
        return card.fp16_tflops
    if k.dtype == torch.bfloat16 and card.bf16:
        return card.fp16_tflops
    tf32 = conv_tf32 if k.kind == "conv" else matmul_tf32
    if k.dtype == torch.float32 and tf32 and card.tf32_tflops:
        return card.tf32_tflops
    return card.fp32_tflops


def tf32_switches(precision: str) -> tuple[bool, bool]:
    """(convolutions, matmuls) in TF32 for a precision: torch's defaults (cuDNN allows TF32,
    matmuls stay "highest"), both on for the tf32 precision (ddpm.precision)."""
    if precision == "tf32":
        return True, True
    matmul = torch.get_float32_matmul_precision() != "highest"
    return torch.backends.cudnn.allow_tf32, matmul or torch.backends.cuda.matmul.allow_tf32


def kernel_seconds(k: Kernel, card: Card, conv_tf32: bool, matmul_tf32: bool) -> float:
    """max(compute, memory) + launches, the roofline of one op."""
    compute = 0.0
    if k.flops:
        peak = peak_tflops(card, k, conv_tf32, matmul_tf32) * 1e12 * COMPUTE_EFFICIENCY
        compute = k.flops / peak
    memory = k.bytes / (card.bandwidth_gbs * 1e9 * MEMORY_EFFICIENCY)
    return max(compute, memory) + LAUNCH_S * k.launches


def step_seconds(kernels: list[Kernel], card: Card, precision: str) -> float:
    conv_tf32, matmul_tf32 = tf32_switches(precision)
    return math.fsum(kernel_seconds(k, card, conv_tf32, matmul_tf32) for k in kernels)


def torch_roofline_seconds(kernels: list[Kernel], card: Card) -> float:
    """The same kernels under torch's RuntimeEstimator roofline
    (torch/utils/_runtime_estimation.py, used by torch/distributed/_tools/runtime_estimator.py):
    per op max(flops / 2 / (0.75 x peak), bytes / bandwidth) at datasheet bandwidth, no launch
    cost; its peak is the datasheet figure for the output dtype, TF32 only when matmul TF32 is
    on (so fp32 convolutions count at the FP32 rate) and bf16 at the tensor-core rate on any
    card that lists one."""
    total = 0.0
    for k in kernels:
        compute = 0.0
        if k.flops:
            if k.dtype == torch.float32:
                peak = card.fp32_tflops
            else:
                peak = card.fp16_tflops or card.fp32_tflops
            compute = k.flops / 2 / (0.75 * peak * 1e12)
        total += max(compute, k.bytes / (card.bandwidth_gbs * 1e9))
    return total


@dataclass(frozen=True)
class TimePrediction:
    step_s: float
    gflop: float  # every op's FLOPs (the registry's: matmuls, convolutions, attention)
    gbytes: float  # every op's bytes read and written
    kernels: int
    torch_roofline_s: float


def predict_time(kernels: list[Kernel], card: Card, precision: str) -> TimePrediction:
    return TimePrediction(
        step_s=step_seconds(kernels, card, precision),
        gflop=sum(k.flops for k in kernels) / 1e9,
        gbytes=sum(k.bytes for k in kernels) / 1e9,
        kernels=sum(k.launches for k in kernels),
        torch_roofline_s=torch_roofline_seconds(kernels, card),
    )


def training_figures(spec: BenchSpec, card: Card, train_steps: int = PAPER_TRAIN_STEPS) -> dict:
    """The predicted columns of a throughput row on `card`."""
    p = predict_time(train_step_kernels(spec, card), card, spec.precision)
    return {
        "predicted_step_s": p.step_s,
        "predicted_img_per_s": spec.batch * spec.accum / p.step_s,
        "predicted_train_h": p.step_s * train_steps / 3600,
        "predicted_train_steps": train_steps,
        "predicted_kernels": p.kernels,
        "predicted_torch_roofline_s": p.torch_roofline_s,
    }


def sampling_figures(spec: BenchSpec, card: Card) -> dict:
    """The predicted columns of a sampling row on `card`: one denoising step, and a complete
    run of spec.sampling_steps of them."""
    p = predict_time(denoising_step_kernels(spec, card), card, spec.precision)
    full = p.step_s * spec.sampling_steps
    return {
        "predicted_step_s": p.step_s,
        "predicted_full_run_s": full,
        "predicted_img_per_s": spec.batch / full,
    }
