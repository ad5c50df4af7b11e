"""The levers a plan may pull: the settings that change a step's memory or speed but not what
it trains. Each is one declaration in LEVERS: the spec field it sets, the values a card can run
(simplest first: a tie in predicted time keeps the earlier one), those that change the loss,
where the predictions do not see the lever the value they are taken at, and whether a plan pulls
it only when --levers names it (opt_in: each lever multiplies the options a plan predicts).

A value the card may or may not run with the rest of the option (an attention backend: it
depends on the dtype and head dim too) is offered and left to the prediction, which refuses it
as the card's dispatcher would (bench.predict.attention.NoBackend); the plan says so.

The split of the effective batch into micro-batch x accumulation is the one lever every plan
pulls (splits): it is not a spec field of its own but two, tied by their product."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bench.cards import TRITON_MIN_CAPABILITY, Card
from bench.parsers import OPTIMIZERS, SpecError, parse_optimizers
from ddpm.config import ATTENTION_BACKENDS


@dataclass(frozen=True)
class Lever:
    field: str  # the BenchSpec field it sets
    values: Callable[[Card], tuple[str, ...]]  # what the card runs, simplest first
    changes_loss: frozenset[str] = frozenset()  # values that train to another loss
    # Where neither prediction (memory, time) models the lever: the value both are taken at,
    # so its options are predicted as that one and, tying with it, never preferred to it.
    predicted_as: str | None = None
    # Values the memory prediction sees but the time prediction does not: each one's step is
    # timed as the value named (so it ties with that one and is never preferred for speed).
    timed_as: dict[str, str] = field(default_factory=dict)
    unseen: str = ""  # what the predictions leave out of it, said beside a plan's options
    opt_in: bool = False  # pulled only where --levers names it
    why: str = ""  # what the plan says of it (--help, docs/plan.md)

    def taken_as(self, value: str) -> str | None:
        """What the plan says where the predictions do not see `value`: "compile default
        predicted as off", "optimizer lion timed as adamw"; None where they see it."""
        if self.predicted_as is not None and value != self.predicted_as:
            return f"{self.field} {value} predicted as {self.predicted_as}"
        if value in self.timed_as:
            return f"{self.field} {value} timed as {self.timed_as[value]}"
        return None


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


def _optimizers(card: Card) -> tuple[str, ...]:
    """Those whose package is installed here (the prediction builds each one's step)."""
    found = []
    for name in OPTIMIZERS:
        try:
            parse_optimizers(name)
        except SpecError:
            continue
        found.append(name)
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
        unseen="both predictions trace the eager step",
        why="torch.compile where Triton runs (sm70 on); predicted as eager",
    ),
    Lever(
        "optimizer",
        _optimizers,
        # Quantized or factored states, another update rule or a learned step size: each trains
        # to another loss than AdamW's (bench.loss --optimizer says by how much).
        changes_loss=frozenset(set(OPTIMIZERS) - {"adamw"}),
        # Both predictions see every optimizer's state and update (bench.predict.optimizer_update).
        opt_in=True,
        why="those of --optimizer whose package is installed (opt-in); all but adamw change "
        "the loss",
    ),
    Lever(
        "ema",
        # Not off: the EMA's weights are what a DDPM samples from.
        lambda card: ("device", "cpu"),
        # The time model sees cpu's copies over PCIe and the host's update (bench.predict.kernels).
        opt_in=True,
        why="the EMA on the card or in host memory (opt-in); cpu copies the weights over PCIe "
        "each step",
    ),
    Lever(
        "attention_backend",
        lambda card: ATTENTION_BACKENDS,
        opt_in=True,
        why="auto, flash, efficient, math (opt-in); one the card cannot run in an option's "
        "dtype is left out and said",
    ),
    Lever(
        "channels_last",
        lambda card: ("off", "on"),
        opt_in=True,
        why="the convolutions in channels-last memory format (opt-in)",
    ),
)
BY_NAME = {lever.field: lever for lever in LEVERS}
SPLIT = "split"  # the micro-batch x accumulation lever's name in --levers


def values_on(lever: Lever, card: Card, only: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The lever's values the card runs, kept to those `only` names for it where it names any
    (--levers precision=fp32+bf16), in the lever's order."""
    runs = lever.values(card)
    if lever.field not in only:
        return runs
    return tuple(value for value in runs if value in only[lever.field])


def splits(effective_batch: int, max_accum: int) -> list[tuple[int, int]]:
    """(micro-batch, accumulation) pairs whose product is the effective batch, accumulation at
    most max_accum, the largest micro-batch first."""
    return [
        (effective_batch // accum, accum)
        for accum in range(1, min(effective_batch, max_accum) + 1)
        if effective_batch % accum == 0
    ]
