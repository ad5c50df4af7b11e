"""The levers a plan may pull: the settings that change a step's memory or speed but not what
it trains. Each is one declaration in LEVERS: the spec field it sets, the values a card can run
(simplest first: a tie in predicted time keeps the earlier one), those that change the loss, and,
where the predictions do not see the lever, the value they are taken at.

The split of the effective batch into micro-batch x accumulation is the one lever every plan
pulls (splits): it is not a spec field of its own but two, tied by their product."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.cards import TRITON_MIN_CAPABILITY, Card


@dataclass(frozen=True)
class Lever:
    field: str  # the BenchSpec field it sets
    values: Callable[[Card], tuple[str, ...]]  # what the card runs, simplest first
    changes_loss: frozenset[str] = frozenset()  # values that train to another loss
    # Where neither prediction (memory, time) models the lever: the value both are taken at,
    # so its options are predicted as that one and, tying with it, never preferred to it.
    predicted_as: str | None = None
    why: str = ""  # what the plan says of it (--help, docs/plan.md)


def _precisions(card: Card) -> tuple[str, ...]:
    """fp32 everywhere; TF32 math, BF16 and FP16 only where the card has the tensor cores that
    make them fast (elsewhere torch emulates bf16, and fp16 runs at the FP32 rate:
    bench.cards.caveats)."""
    found = ["fp32"]
    if card.tf32_tflops:
        found.append("tf32")
    if card.bf16:
        found.append("bf16")
    if card.tensor_cores:
        found.append("fp16")
    return tuple(found)


LEVERS = (
    Lever(
        "precision",
        _precisions,
        # 16-bit autocast rounds activations and gradients (fp16 also scales the loss and skips
        # the steps that overflow): the run's loss is not fp32's. TF32 rounds only the inputs of
        # matmuls and convolutions, as torch's default already does for convolutions.
        changes_loss=frozenset({"bf16", "fp16"}),
        why="fp32, tf32, bf16, fp16 where the card has the tensor cores for them",
    ),
    Lever(
        "checkpointing",
        lambda card: ("off", "on"),
        why="gradient checkpointing of the UNet's blocks: less memory, a forward again",
    ),
    Lever(
        "compile",
        lambda card: ("off", "default") if card.capability >= TRITON_MIN_CAPABILITY else ("off",),
        # Both predictions trace the eager step (bench.predict.trace, bench.predict.runtime).
        predicted_as="off",
        why="torch.compile where Triton runs (sm70 on); predicted as eager",
    ),
)
BY_NAME = {lever.field: lever for lever in LEVERS}
SPLIT = "split"  # the micro-batch x accumulation lever's name in --levers


def splits(effective_batch: int, max_accum: int) -> list[tuple[int, int]]:
    """(micro-batch, accumulation) pairs whose product is the effective batch, accumulation at
    most max_accum, the largest micro-batch first."""
    return [
        (effective_batch // accum, accum)
        for accum in range(1, min(effective_batch, max_accum) + 1)
        if effective_batch % accum == 0
    ]
