"""Fixture card_axis: BenchSpec with the card axis (--card) where bench.spec does not declare it
yet, declared as every axis is; where it does, the fixture changes nothing."""

from __future__ import annotations

import dataclasses

import pytest


@pytest.fixture
def card_axis(monkeypatch):
    from bench import spec as spec_module
    from bench.harnesses import sampling

    if any(f.name == "card" for f in dataclasses.fields(spec_module.BenchSpec)):
        return
    card = spec_module.axis("", quiet=True, group="run", parse=lambda o, t, s: [t], help="card")
    cls = dataclasses.make_dataclass(
        "BenchSpec", [("card", str, card)], bases=(spec_module.BenchSpec,), frozen=True
    )
    monkeypatch.setattr(spec_module, "BenchSpec", cls)
    monkeypatch.setattr(sampling, "AXES", (*sampling.AXES, "card"))
