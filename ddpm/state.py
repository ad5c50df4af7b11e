"""A saved table of tensors checked against the model it loads into: what does not fit is said
in one line (which names are missing or unexpected, which shapes or dtypes differ) before a
single tensor is copied, where torch says it on many lines, after warnings of its own (a complex
value cast to real)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

SHOWN = 3  # mismatches named in full; the rest are counted


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def mismatch(given: object, expected: Mapping[str, torch.Tensor]) -> str | None:
    """What keeps `given` from loading into tensors named and shaped as `expected`, or None."""
    if not isinstance(given, Mapping):
        return f"a {type(given).__name__}, not a table of tensors by name"
    missing = [name for name in expected if name not in given]
    unexpected = [str(name) for name in given if name not in expected]
    problems = [f"missing {_some(missing)}"] if missing else []
    if unexpected:
        problems.append(f"unexpected {_some(unexpected)}")
    for name, ref in expected.items():
        value = given.get(name)
        if name not in given:
            continue
        if not isinstance(value, torch.Tensor):
            problems.append(f"{name} is a {type(value).__name__}, not a tensor")
        elif tuple(value.shape) != tuple(ref.shape):
            problems.append(f"{name} has shape {tuple(value.shape)}, not {tuple(ref.shape)}")
        elif value.is_complex() or value.dtype.is_floating_point != ref.dtype.is_floating_point:
            problems.append(f"{name} holds {value.dtype}, not {ref.dtype}")
    if not problems:
        return None
    more = len(problems) - SHOWN
    return "; ".join(problems[:SHOWN]) + (f"; {more} more" if more > 0 else "")


def load_model_state(model: torch.nn.Module, state: object) -> None:
    """model.load_state_dict(state), refused first (ValueError, one line) when it does not fit."""
    problem = mismatch(state, model.state_dict())
    if problem:
        raise ValueError(f"the weights do not fit the {type(model).__name__}: {problem}.")
    model.load_state_dict(state)
