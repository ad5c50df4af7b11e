"""Does a spec fit a card, and with what headroom: the predicted step (bench.predict.batches) plus
the workspaces and the CUDA context, against the budget; and the largest batch that fits.

SpecFit answers for every batch of a spec at once, from two traces (milliseconds a batch after
them): the largest-batch search and any caller that weighs many batches (a planner) ask it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.cards import sm
from bench.predict.batches import PAIR_BATCHES, StepModel, step_model
from bench.predict.stream import Prediction
from bench.predict.trace import DEFAULT_TARGET
from bench.spec import BenchSpec

# Transient convolution workspaces are not traced. torch's cuDNN path tries the next algorithm
# when a workspace allocation fails, so workspaces take what is free rather than cause an OOM;
# this allowance is room for the chosen algorithms' workspaces.
CUDNN_ALLOWANCE_MIB = 32.0

# Where --find-max-batch stops searching, by where its answer comes from. A measured probe runs
# two real steps of that batch, so its search stops at 65,536; a predicted probe traces fake
# tensors, whose cost does not grow with the batch, so its search goes on to 16,777,216. A batch
# at the limit is a lower bound, and the verdict says so.
SEARCH_LIMITS = {"measured": 1 << 16, "predicted": 1 << 24}


@dataclass(frozen=True)
class Fit:
    """A spec's step on a CUDA card against the budget: what the card holds for it (the caching
    allocator's reserved memory, the cuDNN allowance, the CUDA context) and the room left."""

    prediction: Prediction
    context_mib: float  # the CUDA context: measured on CUDA, an allowance elsewhere
    budget_mib: float
    cudnn_workspace_mib: float = CUDNN_ALLOWANCE_MIB

    @property
    def cuda_mib(self) -> float:
        """Everything the card holds for the step (predicted_cuda_mib)."""
        return self.prediction.mib("reserved") + self.cudnn_workspace_mib + self.context_mib

    @property
    def fits(self) -> bool:
        return self.cuda_mib <= self.budget_mib

    @property
    def headroom_mib(self) -> float:
        return self.budget_mib - self.cuda_mib

    def figures(self) -> dict:
        """The memory table's predicted columns."""
        predicted = self.prediction
        return {
            "target_sm": sm(predicted.target),
            "predicted_alloc_mib": predicted.mib("alloc"),
            "predicted_reserved_mib": predicted.mib("reserved"),
            "cublas_workspace_mib": predicted.mib("cublas_workspace"),
            "cudnn_workspace_mib": self.cudnn_workspace_mib,
            "context_mib": self.context_mib,
            "predicted_cuda_mib": self.cuda_mib,
            "budget_mib": self.budget_mib,
            "fits": self.fits,
            "headroom_mib": self.headroom_mib,
        }


def predict_fit(
    spec: BenchSpec,
    target: tuple[int, int] = DEFAULT_TARGET,
    context_mib: float | None = None,
    many: bool = False,
) -> Fit:
    """Does `spec` fit a card of compute capability `target`, within spec.budget_mib: its step
    predicted (bench.predict.batches), with `context_mib` for the CUDA context (default: the
    spec's allowance). `many`: the caller asks about many batches of this spec (a planner), so
    the lines of two traces serve them all (StepModel)."""
    context_mib = spec.context_mib if context_mib is None else context_mib
    prediction = step_model(spec, target, many).prediction(spec.batch, accum=spec.accum)
    return Fit(prediction, context_mib, spec.budget_mib)


class SpecFit:
    """Does `spec`, at any batch, fit a card of compute capability `target` within
    spec.budget_mib, with `context_mib` for the CUDA context (default: the spec's allowance).

    fitter = SpecFit(spec, target); fitter.at(64).fits, fitter.at(64).headroom_mib, ...: the
    step is traced at two batches on first use (or read from the trace cache), and each batch is
    then a replay of the caching allocator, milliseconds (bench.predict.batches)."""

    def __init__(
        self,
        spec: BenchSpec,
        target: tuple[int, int] = DEFAULT_TARGET,
        context_mib: float | None = None,
    ):
        self.model: StepModel = step_model(spec, target, many=True)
        self.accum = spec.accum
        self.context_mib = spec.context_mib if context_mib is None else context_mib
        self.budget_mib = spec.budget_mib

    def at(self, batch: int, alloc_conf: str | None = None) -> Fit:
        """The fit at `batch` (the allocator configured by `alloc_conf`, default this
        process's PYTORCH_CUDA_ALLOC_CONF)."""
        prediction = self.model.prediction(batch, alloc_conf, self.accum)
        return Fit(prediction, self.context_mib, self.budget_mib)

    def largest_batch(self) -> int:
        """The largest batch that fits, searched as largest() searches up to the predicted
        limit. The answer is traced and checked against the lines it was read off; where they
        differ, the search runs again with every batch traced (StepModel.verify)."""

        def fits(n: int) -> bool:
            # Batch 1 is off the lines (PAIR_BATCHES): as the search assumes memory grows with
            # the batch, it fits where the next batch fits, and is traced only where that does not.
            if n < PAIR_BATCHES[0] and self.at(PAIR_BATCHES[0]).fits:
                return True
            return self.at(n).fits

        limit = SEARCH_LIMITS["predicted"]
        best = largest(fits, limit)
        if best and not self.model.verify(best):
            best = largest(fits, limit)
        return best


def largest(fits: Callable[[int], bool], limit: int) -> int:
    """The largest n in 1..limit with fits(n), assuming fits is monotone: double until it fails,
    then bisect between the last success and the first failure. 0 when even 1 does not fit."""
    if not fits(1):
        return 0
    good = 1
    while good < limit and fits(min(good * 2, limit)):
        good = min(good * 2, limit)
    bad = min(good * 2, limit + 1)
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


def largest_batch(spec: BenchSpec, fits: Callable[[BenchSpec], bool], source: str) -> int:
    """The largest batch at which `spec`, every other axis kept, `fits` (largest()), searched up
    to the limit of where the answer comes from (SEARCH_LIMITS: "measured" or "predicted")."""
    return largest(lambda n: fits(spec.replace(batch=n)), SEARCH_LIMITS[source])
