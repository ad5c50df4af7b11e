"""Does a spec fit a card, and with what headroom: the predicted step (bench.predict.trace) plus
the workspaces and the CUDA context, against the budget; and the largest batch that fits."""

from __future__ import annotations

from collections.abc import Callable

from bench.predict.trace import DEFAULT_TARGET, predict
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


def prediction(
    spec: BenchSpec, target: tuple[int, int] = DEFAULT_TARGET, context_mib: float | None = None
) -> dict:
    """The predicted figures of a row, and the verdict they give against the budget."""
    predicted = predict(spec, target)
    context_mib = spec.context_mib if context_mib is None else context_mib
    total = predicted.mib("reserved") + CUDNN_ALLOWANCE_MIB + context_mib
    return {
        "target_sm": target[0] * 10 + target[1],
        "predicted_alloc_mib": predicted.mib("alloc"),
        "predicted_reserved_mib": predicted.mib("reserved"),
        "cublas_workspace_mib": predicted.mib("cublas_workspace"),
        "cudnn_workspace_mib": CUDNN_ALLOWANCE_MIB,
        "context_mib": context_mib,
        "predicted_cuda_mib": total,
        "budget_mib": spec.budget_mib,
        "fits": total <= spec.budget_mib,
        "headroom_mib": spec.budget_mib - total,
    }


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
