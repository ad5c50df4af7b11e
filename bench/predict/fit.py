"""Does a spec fit a card, and with what headroom: the predicted step (bench.predict.trace) plus
the workspaces and the CUDA context, against the budget; and the largest batch that fits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.cards import sm
from bench.predict.trace import DEFAULT_TARGET, Prediction, predict
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
    spec: BenchSpec, target: tuple[int, int] = DEFAULT_TARGET, context_mib: float | None = None
) -> Fit:
    """Does `spec` fit a card of compute capability `target`, within spec.budget_mib: its step
    predicted (bench.predict.trace), with `context_mib` for the CUDA context (default: the
    spec's allowance)."""
    context_mib = spec.context_mib if context_mib is None else context_mib
    return Fit(predict(spec, target), context_mib, spec.budget_mib)


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
