"""The harnesses: each module here defines HARNESS (bench.core.Harness), the one place that says
what it measures, its columns and how its rows read. Listing this package finds them all."""

from __future__ import annotations

import importlib
import pkgutil

from bench.core import Harness


def names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__))


def named(name: str) -> Harness:
    """The harness of that name; KeyError if there is none."""
    if name not in names():
        raise KeyError(name)
    return importlib.import_module(f"{__name__}.{name}").HARNESS
