"""Memory of a denoising step on a CUDA card, alone or in a sampling pass run from inside training,
and the largest sampling batch that fits: the training prediction's rules applied to sampling.

A step is traced on fake tensors under CUDA's rules for the card (bench.predict.cuda_rules) with
a TensorTracker, and its allocations replayed through the caching-allocator model
(bench.predict.stream, bench.predict.allocator) against the card's capacity and the CUDA context,
as bench.memory's verdict weighs a training step (bench.predict.fit.Fit).

Alone (train_batch None): the model's weights, then two steps of the sampler's own loop (x_T, the
timesteps, the model's output, the noise, the update's temporaries), the first step's yield held
while the second runs, as sample_loop's `for step in run` holds it: the second step is the steady
one. guided-diffusion's steps are its own loop's (bench.models.guided_sampling). Sampling has no
backward, so one cuBLAS workspace is replayed (the forward thread's), not a training step's two.

Inside training (train_batch N, --impl ddpm): the pass ddpm.cli.train runs after its last step,
modelled as it runs it. Its held-out batches (VAL_IMAGES images, their timesteps and noise, copied
to the card once, in micro-batches of the training batch) are made first; then a warm-up and a
steady training step at batch N, after which the weights, the gradients (the Trainer zeroes them
with set_to_none at the start of its next step, so after its last one they stay), AdamW's state,
the EMA and the last step's statistics stay; then ddim_sample with the EMA weights: swap_into
clones the weights and buffers to put them back afterwards, and the loop runs DDIM at the spec's
steps with clip_x0 and in fp32 (ddim_sample takes no precision: the training precision does not
reach it). The allocator replays the training steps too, so the segments they cached are held,
and the peaks are the sampling pass's (reset after the training step, as
reset_peak_memory_stats resets them: the reserved figure starts at what training cached). The
held-out loss and checkpoint save between the last step and the pass are not traced: what they
make is freed before it."""

from __future__ import annotations

import contextlib
import hashlib

import torch

from bench.cards import Card
from bench.measure.tracked import MemoryPeak, TensorTracker, storages
from bench.models import guided_sampling
from bench.models.fake import fake_mode
from bench.models.guided_flags import NAME as GUIDED
from bench.models.workload import (
    build_model,
    build_trainer,
    sampler_of,
    synthetic_images,
    traced_precision,
)
from bench.predict import cache
from bench.predict.batches import PAIR_BATCHES, StepModel
from bench.predict.cuda_rules import CudaRules
from bench.predict.fit import SEARCH_LIMITS, Fit, SpecFit, largest
from bench.predict.stream import AllocationStream, Prediction
from bench.predict.trace import CUDA_BLOCK_BYTES, held_inputs, on_the_host
from bench.spec import BenchSpec
from ddpm.cli.train import VAL_IMAGES
from ddpm.sample import DDIMSampler, Sampler, sample_progressive
from ddpm.schedule import NoiseSchedule

# The cuBLAS workspaces a sampling pass holds: its forward thread's alone when it runs by itself;
# inside training, the backward thread's too, taken by the training steps and kept.
ALONE_THREADS = ("forward",)
TRAINING_THREADS = ("forward", "backward")
# Why the sampling pass inside training is not modelled for the other implementations:
# ddpm.cli.train, whose pass is, trains ours.
WHY_NOT_INSIDE = {
    "lucidrains": "its Trainer samples with its own EMA model copy every save_and_sample_every "
    "steps, a loop that is not ddpm.cli.train's",
    "diffusers": "its train_unconditional example samples through its pipeline with EMAModel's "
    "store/copy_to/restore, a loop that is not ddpm.cli.train's",
    GUIDED: "its TrainLoop draws no samples while training; image_sample.py samples from a saved "
    "checkpoint, which the figures alone are",
}


def why_not_inside(impl: str) -> str | None:
    """Why a sampling pass inside training is not predicted for `impl`; None where it is."""
    if impl == "ddpm":
        return None
    return WHY_NOT_INSIDE.get(impl, "a user's factory trains in no loop this suite knows")


def _steady_steps(steps) -> tuple:
    """Two steps of a sampling run, the first one's yield held while the second runs (as
    sample_loop's loop variable holds it); a one-step run's only step. Returns what is held."""
    with contextlib.closing(steps):
        first = next(steps)
        try:
            second = next(steps)
        except StopIteration:
            return (first,)
        return first, second


def trace_alone(
    spec: BenchSpec, target: tuple[int, int], sampler: Sampler | None = None
) -> TensorTracker:
    """The tracker of the model's weights and two steps of the spec's sampler (or `sampler`) at
    spec.batch, under CUDA's rules for `target`, each storage rounded to 512 B."""
    c = spec.unet_config()
    shape = (spec.batch, c.in_channels, c.image_size, c.image_size)
    with fake_mode(), CudaRules(target):
        schedule = NoiseSchedule.linear()
        sampler = sampler or sampler_of(spec, schedule)
        model = build_model(spec, compiled=False)
        with TensorTracker(model, round_to=CUDA_BLOCK_BYTES) as tracker:
            if spec.impl == GUIDED:  # its own loop; the classes do not change the memory
                steps = guided_sampling.progressive(
                    model, spec, torch.Generator(), "cpu", guided_sampling.RANDOM
                )
            else:
                # The schedule, on the card for the whole pass (sample_progressive moves it).
                tracker.hold(storages(sampler.schedule.tables()), "parameters")
                steps = sample_progressive(
                    model, sampler, shape, device="cpu", precision=spec.precision
                )
            held = _steady_steps(steps)
            del held
    return tracker


def trace_inside_training(spec: BenchSpec, train_batch: int, target: tuple[int, int]):
    """The tracker of ddpm.cli.train's run up to and through its sampling pass (the module's
    docstring): its held-out batches, two training steps at `train_batch`, a peak reset, then
    ddim_sample's EMA swap and two of its steps at spec.batch."""
    if why_not_inside(spec.impl):
        raise ValueError(f"--impl {spec.impl}: {why_not_inside(spec.impl)}")
    training = spec.replace(batch=train_batch, accum=1)
    c = spec.unet_config()
    shape = (spec.batch, c.in_channels, c.image_size, c.image_size)
    with fake_mode(), CudaRules(target):
        schedule = NoiseSchedule.linear()  # the trainer's, on the card, which ddim_sample takes
        sampler = DDIMSampler(schedule, spec.sampling_steps, clip_x0=True)  # ddim_sample's, eta 0
        trainer = build_trainer(
            training.replace(precision=traced_precision(training)),
            device="cpu",
            compiled=False,
            schedule=schedule,
        )
        host = synthetic_images(training, train_batch)
        ema = trainer.ema.params if spec.ema != "cpu" else ()
        with TensorTracker(trainer.model, trainer.optimizer, ema, CUDA_BLOCK_BYTES) as tracker:
            tracker.hold(storages(schedule.tables()), "parameters")
            if spec.ema == "cpu":
                tracker.ignore(trainer.ema.params + trainer.ema.buffers)
            on_the_host(trainer, tracker, host)
            held_out = _held_out_batches(training, train_batch)
            window_loss = torch.zeros(())
            trainer.step(host)  # creates the optimizer state
            inputs = held_inputs(trainer, training, train_batch, "cpu", tracker)
            stats = trainer.step(host)
            del inputs
            tracker.reset_peak()
            steps = sample_progressive(trainer.model, sampler, shape, device="cpu", ema=trainer.ema)
            held = _steady_steps(steps)
            del held, held_out, window_loss, stats
    return tracker


def _held_out_batches(spec: BenchSpec, batch: int) -> list[torch.Tensor]:
    """Stand-ins of HeldOutLoss's device copies: VAL_IMAGES images, their noise and timesteps,
    split in micro-batches of the training batch (a validation set of at least VAL_IMAGES)."""
    c = spec.unet_config()
    held = []
    for start in range(0, VAL_IMAGES, batch):
        n = min(batch, VAL_IMAGES - start)
        image = (n, c.in_channels, c.image_size, c.image_size)
        held += [torch.empty(image), torch.empty(n, dtype=torch.int64), torch.empty(image)]
    return held


def step_tensors(
    spec: BenchSpec, target: tuple[int, int], train_batch: int | None = None
) -> MemoryPeak:
    """Live tensors at the sampling pass's peak, by category, 512 B blocks."""
    if train_batch is None:
        return trace_alone(spec, target).peak
    return trace_inside_training(spec, train_batch, target).peak


class DenoiseStepModel(StepModel):
    """bench.predict.batches' StepModel over a sampling pass's trace: the batch is the sampling
    batch, the training batch (inside training) stays, and its own trace-cache entries."""

    def __init__(
        self,
        spec: BenchSpec,
        target: tuple[int, int],
        train_batch: int | None = None,
        many: bool = False,
    ):
        super().__init__(spec, target, many)
        self.train_batch = train_batch
        self.threads = ALONE_THREADS if train_batch is None else TRAINING_THREADS
        if self.key is not None:
            what = f"{self.key}-denoise-train{train_batch}"
            self.key = hashlib.sha256(what.encode()).hexdigest()

    def prediction(
        self, batch: int, alloc_conf: str | None = None, accum: int | None = None
    ) -> Prediction:
        """The pass at sampling batch `batch`; a sampling pass has no accumulation (`accum` is
        StepModel's signature and must be None or 1)."""
        if accum not in (None, 1):
            raise ValueError(f"a sampling pass has no accumulation, not {accum}")
        return self.stream(batch).predict(self.target, alloc_conf, self.threads)

    def _trace(self, batch: int) -> AllocationStream:
        if not self._cached(batch):
            spec = self.spec.replace(batch=batch)
            if self.train_batch is None:
                tracker = trace_alone(spec, self.target)
            else:
                tracker = trace_inside_training(spec, self.train_batch, self.target)
            stream = AllocationStream.of(tracker, batch)
            cache.save(self.key, stream)
            self.traced[batch] = stream
        return self.traced[batch]


class SamplingFit(SpecFit):
    """SpecFit over a sampling pass: every sampling batch from two traces, and the largest.

    The fit counts what the allocator reserves, as bench.memory's does, and the model never
    gives a segment back. CUDA's allocator, when cudaMalloc fails, frees the cached segments no
    block uses and tries again, so a pass whose reserved memory runs far above its allocated
    memory may still run where it does not fit: in a sampling step the decoder's concatenated
    tensors are larger than any segment the encoder's freed, and reserved comes to about twice
    allocated. So the largest batch is a lower bound, and `largest_released` is its upper bound:
    the largest batch whose allocated peak fits, as if every cached segment were given back."""

    def __init__(self, spec: BenchSpec, card: Card, train_batch: int | None = None):
        self.model = DenoiseStepModel(spec, card.capability, train_batch, many=True)
        self.accum = 1
        self.context_mib = spec.context_mib
        self.budget_mib = spec.budget_mib

    def fits_released(self, batch: int) -> bool:
        """Does the allocated peak at `batch` fit with the allowances (no cached segment kept)?"""
        fit = self.at(batch)
        allocated = fit.prediction.mib("alloc") + fit.cudnn_workspace_mib + fit.context_mib
        return allocated <= fit.budget_mib

    def largest_released(self) -> int:
        """The largest batch whose allocated peak fits, searched and verified as largest_batch
        searches (0: not even 1)."""

        def fits(n: int) -> bool:
            if n < PAIR_BATCHES[0] and self.fits_released(PAIR_BATCHES[0]):
                return True
            return self.fits_released(n)

        limit = SEARCH_LIMITS["predicted"]
        best = largest(fits, limit)
        if best and not self.model.verify(best):
            best = largest(fits, limit)
        return best


def memory_figures(spec: BenchSpec, card: Card, train_batch: int | None = None) -> dict:
    """The predicted memory columns of a sampling row at spec.batch on `card`."""
    model = DenoiseStepModel(spec, card.capability, train_batch)
    return _figures(Fit(model.prediction(spec.batch), spec.context_mib, spec.budget_mib))


def largest_sampling_batch(
    spec: BenchSpec, card: Card, train_batch: int | None = None
) -> tuple[int, dict]:
    """The largest sampling batch that fits spec.budget_mib on `card` (0: not even 1), and the
    memory columns at it (empty at 0), with max_batch_released, its upper bound (SamplingFit)."""
    fitter = SamplingFit(spec, card, train_batch)
    best = fitter.largest_batch()
    if not best:
        return 0, {}
    return best, {**_figures(fitter.at(best)), "max_batch_released": fitter.largest_released()}


def _figures(fit: Fit) -> dict:
    tensors = fit.prediction.tensors
    return {
        **fit.figures(),
        "predicted_tensors_mib": None if tensors is None else tensors.mib(),
    }
