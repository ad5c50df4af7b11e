"""How long a step takes on a CUDA card that is not here, with the range the public runs give it.

One optimizer step (or one denoising step) runs on fake tensors under CUDA's rules for the card,
as the memory prediction traces it (bench.predict.trace, bench.predict.cuda_rules), while
bench.predict.kernels records what it launches: each kernel's FLOPs, GEMM shape and bytes, the
host's dispatch of every op, `.item()` synchronisations, and across ranks the collectives (a
fake process group of spec.ranks: DDP's buckets as it rebuilds them, FSDP2's own gathers).
fp16 runs as fp16, GradScaler's scaling, unscaling and inf checks included, and an optimizer
left to torch's defaults takes the foreach kernels it takes on CUDA. Every optimizer's update is
in it (bench.predict.optimizer_update says which are traced and which modelled), and --ema
cpu's shadow lives in host memory (bench.predict.kernels.HOST): each step's copies of the
parameters over PCIe and the host's update are in it too. bench.predict.step_time then
plays the kernels out on the card's datasheet figures and the constants that
`python -m bench.predict.calibrate` fits to the public runs (docs/throughput.md).

Every predicted time comes with its likely range: the lowest and highest measured / predicted
ratio of the public training runs, each predicted by constants fitted without it. Nothing here
is measured: every figure is a prediction."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import torch
import torch.distributed as dist

from bench.cards import Card
from bench.models import guided_sampling
from bench.models.fake import fake_mode
from bench.models.guided_flags import NAME as GUIDED
from bench.models.workload import build_model, build_trainer, sampler_of, synthetic_images
from bench.predict import optimizer_update
from bench.predict.cuda_rules import CudaRules
from bench.predict.kernels import HOST, Kernel, KernelRecorder, cuda_optimizer_defaults
from bench.predict.ranks import fake_tensor_ddp, is_fake_group, rank_zero
from bench.predict.step_time import (
    Constants,
    load_constants,
    step_time,
    torch_roofline_seconds,
)
from bench.spec import BenchSpec
from ddpm.sample import sample_progressive
from ddpm.schedule import NoiseSchedule
from ddpm.train import Trainer

# The paper's schedule: 800k optimizer steps at batch 128 (Ho et al. 2020, Appendix B).
PAPER_TRAIN_STEPS = 800_000


def train_step_kernels(
    spec: BenchSpec, card: Card, recipe: Callable[[Trainer], None] | None = None
) -> list[Kernel]:
    """The kernels of one steady-state optimizer step of `spec` on one rank of spec.ranks,
    traced under CUDA's rules for `card`. `recipe(trainer)` swaps in another training loop's
    optimizer or EMA before the first step (bench.predict.public_runs)."""
    schedule = NoiseSchedule.linear()  # built outside fake mode: its validation reads values
    recorder = KernelRecorder(card.capability)
    with rank_zero(spec, fake_tensors=True) as mesh, contextlib.ExitStack() as stack:
        stack.enter_context(fake_mode())
        stack.enter_context(CudaRules(card.capability))
        stack.enter_context(cuda_optimizer_defaults())
        if spec.parallel == "ddp":
            stack.enter_context(fake_tensor_ddp())
        stack.enter_context(recorder)
        trainer = build_trainer(spec, device="cpu", compiled=False, schedule=schedule, mesh=mesh)
        if recipe is not None:
            recipe(trainer)
        optimizer_update.attach(trainer, spec.optimizer, recorder)
        if spec.ema == "cpu":  # the shadow in host memory: its update copies over PCIe
            trainer.ema.to(HOST)
        exchange = BucketExchange.attach(trainer.model, recorder)
        images = synthetic_images(spec, trainer.world * spec.batch * spec.accum)
        trainer.step(images)  # creates the optimizer state
        if exchange is not None:
            exchange.rebuild()
        recorder.on = True
        trainer.step(images)
        recorder.on = False
    return recorder.kernels


class BucketExchange:
    """DDP's gradient exchange in its steady state, recorded where a real rank issues it.

    DDP puts every gradient in one bucket for its first step and then rebuilds its buckets in
    the order the gradients arrived (a first bucket of 1 MiB, then bucket_cap_mb each), agreeing
    on that order across ranks by value, which fake tensors do not have (bench.predict.ranks
    skips the rebuild). So the rebuilt buckets are made here the same way, with torch's own
    bucket assignment over the order this rank's warm-up step produced its gradients, and each
    bucket's all-reduce is recorded when its last gradient is accumulated, in bucket order, as
    the reducer launches them. DDP's own exchange answers with its bucket unchanged, as NCCL's
    in-place all-reduce leaves it (bench.predict.ranks)."""

    def __init__(self, model: torch.nn.Module, recorder: KernelRecorder):
        self.recorder = recorder
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.arrived: list[int] = []  # parameter indices, in the order their gradients came
        self.buckets: list[list[int]] = []
        self.ready: set[int] = set()
        self.launched = 0
        for i, p in enumerate(self.params):
            p.register_post_accumulate_grad_hook(functools.partial(self.accumulated, i))
        model.register_comm_hook(None, _unchanged_bucket)
        self.first_cap = dist._DEFAULT_FIRST_BUCKET_BYTES
        self.cap = model.bucket_bytes_cap

    @classmethod
    def attach(cls, model: torch.nn.Module, recorder: KernelRecorder) -> BucketExchange | None:
        from torch.nn.parallel import DistributedDataParallel

        if isinstance(model, DistributedDataParallel) and is_fake_group():
            return cls(model, recorder)
        return None

    def rebuild(self) -> None:
        """After the warm-up step: the buckets, from the order its gradients arrived."""
        order = list(dict.fromkeys(self.arrived))
        self.buckets, _ = dist._compute_bucket_assignment_by_size(
            [self.params[i] for i in order], [self.first_cap, self.cap], tensor_indices=order
        )
        self.ready, self.launched = set(), 0

    def accumulated(self, i: int, _param: torch.Tensor | None = None) -> None:
        if not self.buckets:
            self.arrived.append(i)
            return
        self.ready.add(i)
        while self.launched < len(self.buckets) and self.ready.issuperset(
            self.buckets[self.launched]
        ):
            size = sum(
                self.params[j].numel() * self.params[j].element_size()
                for j in self.buckets[self.launched]
            )
            self.recorder.collective("all_reduce", size, waits=False)
            self.launched += 1


def _unchanged_bucket(_state, bucket):  # DDP refuses any return annotation but its own
    future = torch.futures.Future()
    future.set_result(bucket.buffer())
    return future


def denoising_step_kernels(spec: BenchSpec, card: Card) -> list[Kernel]:
    """The kernels of one denoising step (one UNet call on the batch and the sampler's update,
    in inference mode), as ddpm.sample.sample_progressive (or guided-diffusion's own loop) takes
    it: the second step, or the only one of a one-step sampler."""
    sampler = sampler_of(spec, NoiseSchedule.linear())
    c = spec.unet_config()
    shape = (spec.batch, c.in_channels, c.image_size, c.image_size)
    recorder = KernelRecorder(card.capability)
    with fake_mode(), CudaRules(card.capability), recorder:
        model = build_model(spec, compiled=False)
        if spec.impl == GUIDED:  # its own loop (classes do not change the work)
            steps = guided_sampling.progressive(model, spec, torch.Generator(), "cpu", "random")
        else:
            steps = sample_progressive(
                model, sampler, shape, device="cpu", precision=spec.precision
            )
        with contextlib.closing(steps):
            recorder.on = True
            next(steps)  # the first step: x_T drawn, kernels warm
            first = len(recorder.kernels)
            try:
                next(steps)
            except StopIteration:  # a one-step sampler: its only step is the step
                first = 0
            recorder.on = False
    return recorder.kernels[first:]


def band(seconds: float, constants: Constants) -> tuple[float, float]:
    """The likely range of a predicted time: the public runs' lowest and highest measured /
    predicted ratios (each predicted without its own run in the fit)."""
    return seconds * constants.band_low, seconds * constants.band_high


def training_figures(
    spec: BenchSpec,
    card: Card,
    train_steps: int = PAPER_TRAIN_STEPS,
    kernels: list[Kernel] | None = None,
) -> dict:
    """The predicted columns of a throughput row on `card` (one rank of spec.ranks), from the
    step's kernels (default: traced here, train_step_kernels)."""
    c = load_constants()
    if kernels is None:
        kernels = train_step_kernels(spec, card)
    t = step_time(kernels, card, spec.precision, ranks=spec.ranks, constants=c)
    low, high = band(t.step_s, c)
    hours = train_steps / 3600
    return {
        "predicted_step_s": t.step_s,
        "predicted_step_s_low": low,
        "predicted_step_s_high": high,
        "predicted_img_per_s": spec.batch * spec.accum / t.step_s,
        "predicted_train_h": t.step_s * hours,
        "predicted_train_h_low": low * hours,
        "predicted_train_h_high": high * hours,
        "predicted_train_steps": train_steps,
        "predicted_kernels": sum(k.launches for k in kernels if k.kind != "collective"),
        "predicted_exposed_comm_s": t.exposed_comm_s,
        "predicted_torch_roofline_s": torch_roofline_seconds(kernels, card),
    }


def sampling_figures(spec: BenchSpec, card: Card) -> dict:
    """The predicted columns of a sampling row on `card`: one denoising step, and a complete
    run of spec.sampling_steps of them."""
    c = load_constants()
    kernels = denoising_step_kernels(spec, card)
    t = step_time(kernels, card, spec.precision, inference=True, constants=c)
    full = t.step_s * spec.sampling_steps
    low, high = band(full, c)
    return {
        "predicted_step_s": t.step_s,
        "predicted_full_run_s": full,
        "predicted_full_run_s_low": low,
        "predicted_full_run_s_high": high,
        "predicted_img_per_s": spec.batch / full,
    }
