"""A spy that stands in for a function wherever a loaded ddpm or bench module binds it, so a test
can tell that code runs through that one function and not through a copy of it."""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field


@dataclass
class Call:
    args: tuple
    kwargs: dict
    yielded: list = field(default_factory=list)  # what a generator function's run yielded


def spy_on(monkeypatch, function) -> list[Call]:
    """Replace every module-level name bound to `function` in the loaded ddpm and bench modules
    with a wrapper that records each call (and, for a generator, each item it yields) and then
    runs the function. Returns the record, filled as calls happen."""
    calls: list[Call] = []

    def record(call: Call, generator):
        try:
            for item in generator:
                call.yielded.append(item)
                yield item
        finally:
            generator.close()  # closing the spy closes the run, as closing the run itself would

    def spy(*args, **kwargs):
        call = Call(args, kwargs)
        calls.append(call)
        result = function(*args, **kwargs)
        return record(call, result) if inspect.isgenerator(result) else result

    bound = 0
    for name, module in list(sys.modules.items()):
        if name.partition(".")[0] not in ("ddpm", "bench"):
            continue
        for attr, value in list(vars(module).items()):
            if value is function:
                monkeypatch.setattr(module, attr, spy)
                bound += 1
    assert bound, f"no loaded ddpm or bench module binds {function.__qualname__}"
    return calls
