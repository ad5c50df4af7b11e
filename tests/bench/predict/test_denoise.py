"""bench.predict.denoise: a sampling pass's predicted memory on a card, alone against a real CPU run
tracked tensor by tensor, inside ddpm.cli.train against the training state a separate trace keeps
plus a hand count of what ddpm.cli.train adds, and the largest sampling batch against traces at
the answer and one past it. The tiny preset at 16 px throughout: a trace takes about a second."""

from __future__ import annotations

import contextlib

import pytest

from bench.cards import CARDS
from bench.measure.tracked import MemoryPeak, TensorTracker, storages
from bench.models import guided_flags
from bench.models.fake import fake_mode
from bench.models.workload import build_model
from bench.parsers import IMPLS
from bench.predict import denoise
from bench.predict.allocator import cublas_workspace_bytes
from bench.predict.fit import Fit
from bench.predict.stream import AllocationStream
from bench.predict.trace import step_memory
from bench.spec import BenchSpec
from ddpm.cli.train import VAL_IMAGES
from ddpm.sample import DDIMSampler, DDPMSampler, sample_progressive
from ddpm.schedule import NoiseSchedule
from tests.helpers.guided import guided_spec, tiny_file

CARD = CARDS["rtx3070"]
BLOCK = 512


def tiny(**axes) -> BenchSpec:
    fields = {"preset": "tiny", "image_size": 16, "attention": "8", "batch": 3, "sampler": "ddim"}
    fields["sampling_steps"] = 10
    return BenchSpec(**{**fields, **axes})


def blocks(nbytes: int) -> int:
    """nbytes in the caching allocator's 512 B blocks."""
    return -(-nbytes // BLOCK) * BLOCK


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_live_tensors_alone_match_a_real_cpu_run(sampler):
    """The predicted peak of two steps on fake tensors under CUDA's rules is the peak a tracker
    counts over the same two steps run for real on the CPU, each category; its weights are the
    model's parameters and buffers and the schedule's tables, summed by hand."""
    spec = tiny(sampler=sampler, sampling_steps=10 if sampler == "ddim" else 1000)
    predicted = denoise.trace_alone(spec, CARD.capability).peak

    model = build_model(spec, compiled=False)
    schedule = NoiseSchedule.linear()
    steps = DDIMSampler(schedule, 10) if sampler == "ddim" else DDPMSampler(schedule)
    with TensorTracker(model, round_to=BLOCK) as tracker:
        tracker.hold(storages(schedule.tables()), "parameters")
        run = sample_progressive(model, steps, (3, 1, 16, 16))
        with contextlib.closing(run):
            first = next(run)
            second = next(run)  # the loop's variable holds the first step's yield meanwhile
        del first, second
    assert predicted.by_category == tracker.peak.by_category
    assert predicted.total == tracker.peak.total

    weights = [*model.parameters(), *model.buffers(), *schedule.tables()]
    assert predicted.by_category["parameters"] == sum(
        blocks(t.untyped_storage().nbytes()) for t in weights
    )
    # x_t, the model's output and the update's result, at least, on top of the weights.
    image = blocks(3 * 16 * 16 * 4)
    assert predicted.by_category["activations"] >= 3 * image


def test_inside_training_adds_exactly_the_training_state_that_stays():
    """The pass ddpm.cli.train runs after its last step peaks above the same DDIM pass alone
    (clip_x0, fp32) by what training keeps, traced apart by bench.predict.trace (gradients:
    zeroed with set_to_none at the start of the next step, so kept; AdamW's state; the EMA),
    plus by hand: HeldOutLoss's batches, swap_into's clones of the weights and buffers, and
    three scalars (the step's loss and gradient norm, the window's loss)."""
    spec = tiny()
    train_batch = 4
    with fake_mode():
        schedule = NoiseSchedule.linear()
    alone = denoise.trace_alone(spec, CARD.capability, DDIMSampler(schedule, 10, clip_x0=True))
    inside = denoise.trace_inside_training(spec, train_batch, CARD.capability).peak
    kept = step_memory(spec.replace(batch=train_batch), fake=True, target=CARD.capability).kept

    model = build_model(spec, compiled=False)
    clones = sum(blocks(t.nbytes) for t in [*model.parameters(), *model.buffers()])
    image = 1 * 16 * 16 * 4
    held_out = 0
    for start in range(0, VAL_IMAGES, train_batch):
        n = min(train_batch, VAL_IMAGES - start)
        held_out += 2 * blocks(n * image) + blocks(n * 8)
    scalars = 3 * BLOCK
    training_state = kept.total - kept.by_category["parameters"]
    assert inside.total - alone.peak.total == training_state + held_out + clones + scalars

    gradients = sum(blocks(p.nbytes) for p in model.parameters() if p.requires_grad)
    assert inside.by_category["gradients"] == gradients > 0
    assert inside.by_category["ema"] == clones  # the EMA shadows every parameter and buffer
    assert inside.by_category["optimizer_state"] >= 2 * gradients  # AdamW's two moments


def direct_fit(spec: BenchSpec, batch: int, train_batch: int | None) -> Fit:
    """The pass at `batch` traced at that very batch, no lines, replayed with its workspaces."""
    at = spec.replace(batch=batch)
    if train_batch is None:
        tracker, threads = denoise.trace_alone(at, CARD.capability), ("forward",)
    else:
        tracker = denoise.trace_inside_training(at, train_batch, CARD.capability)
        threads = ("forward", "backward")
    prediction = AllocationStream.of(tracker, batch).predict(CARD.capability, "", threads)
    return Fit(prediction, spec.context_mib, spec.budget_mib)


# Inside training, each trace runs two training steps too: ten seconds of traces on a loaded CPU.
@pytest.mark.parametrize("train_batch", [None, pytest.param(2, marks=pytest.mark.heavy)])
def test_largest_sampling_batch_is_the_edge_of_direct_traces(monkeypatch, train_batch):
    """The search's answer, read off two traces' lines, fits when traced at itself and one more
    does not: the largest batch a search over direct traces would find; so too its upper bound,
    counting the allocated peak instead of the reserved one."""
    monkeypatch.setenv("DDPM_BENCH_TRACE_CACHE", "off")
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    spec = tiny(card="rtx3070", budget=80.0, context_mib=0.0)
    best, figures = denoise.largest_sampling_batch(spec, CARD, train_batch)
    assert best > 3  # off the traced pair: the lines answered
    assert direct_fit(spec, best, train_batch).fits
    assert not direct_fit(spec, best + 1, train_batch).fits
    assert figures["fits"] and figures["predicted_cuda_mib"] <= 80.0
    # The upper bound: the largest batch whose allocated peak, traced at it, fits.
    upper = figures["max_batch_released"]
    assert upper >= best
    for batch, fits in ((upper, True), (upper + 1, False)):
        fit = direct_fit(spec, batch, train_batch)
        allocated = fit.prediction.mib("alloc") + fit.cudnn_workspace_mib + fit.context_mib
        assert (allocated <= fit.budget_mib) == fits, batch


def test_alone_holds_one_cublas_workspace_and_inside_training_two():
    """A pass alone has no backward thread: one workspace; inside training the backward
    thread's stays too. An empty pass reserves the workspaces alone."""
    workspace = cublas_workspace_bytes(CARD.capability)
    nothing = AllocationStream(1, (), MemoryPeak())
    for train_batch, count in ((None, 1), (2, 2)):
        model = denoise.DenoiseStepModel(tiny(), CARD.capability, train_batch)
        predicted = nothing.predict(CARD.capability, "", model.threads)
        assert predicted.cublas_workspace_bytes == count * workspace
        assert predicted.alloc_bytes == count * blocks(workspace)


def test_every_implementation_is_predicted_inside_training_or_says_why_not():
    for impl in IMPLS:
        why = denoise.why_not_inside(impl)
        assert (why is None) == (impl == "ddpm"), impl
    with pytest.raises(ValueError, match="--impl lucidrains: its Trainer"):
        denoise.trace_inside_training(tiny(impl="lucidrains"), 2, CARD.capability)


@pytest.mark.parametrize(
    "impl, preset", [("lucidrains", "tiny"), ("diffusers", "ddpm-cifar10-32ch"), ("guided", None)]
)
def test_every_implementation_alone_is_predicted(tmp_path, impl, preset):
    """Each implementation's pass alone is traced through its own model (guided-diffusion's
    through its own loop): its weights are the model's, and its steps hold more."""
    if impl == "guided":
        if not guided_flags.installed():
            pytest.skip("guided-diffusion missing")
        spec = guided_spec(tiny_file(tmp_path), batch=2, sampler="ddim", sampling_steps=10)
    else:
        channels = "32" if preset.endswith("-32ch") else "preset"  # diffusers: 4x time width
        spec = tiny(impl=impl, preset=preset.removesuffix("-32ch"), channels=channels, batch=2)
    peak = denoise.trace_alone(spec, CARD.capability).peak
    with fake_mode():
        model = build_model(spec, compiled=False)
    weights = sum(blocks(t.nbytes) for t in [*model.parameters(), *model.buffers()])
    # Our schedule's tables on the card too, but for guided-diffusion's own loop (its tables
    # are NumPy arrays on the host).
    if impl != "guided":
        weights += sum(blocks(t.nbytes) for t in NoiseSchedule.linear().tables())
    assert peak.by_category["parameters"] == weights
    c = spec.unet_config()
    image = blocks(2 * c.in_channels * c.image_size**2 * 4)
    assert peak.by_category["activations"] >= 2 * image  # x_t and the model's output at least
