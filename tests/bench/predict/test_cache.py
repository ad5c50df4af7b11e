"""The trace cache (bench.predict.cache): a question asked again is answered without a trace;
every input that changes a trace changes the key; a damaged entry is never trusted."""

from __future__ import annotations

import dataclasses
import gzip
import json

import pytest
import torch

from bench.measure.tracked import CATEGORIES, MemoryPeak
from bench.model_config import resolve
from bench.predict import batches, cache
from bench.predict.batches import StepModel
from bench.predict.stream import AllocationStream
from bench.predict.trace import DEFAULT_TARGET
from bench.spec import BenchSpec


@pytest.fixture
def cache_in(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    return tmp_path


def tiny(**changes) -> BenchSpec:
    return BenchSpec(**{**dict(preset="tiny", image_size=16, accum=1, device="cpu"), **changes})


def stream(batch: int = 2) -> AllocationStream:
    """A small step: 1 MiB of weights, 3 KiB an image of activations, one freed."""
    peak = MemoryPeak(1 << 20, {**dict.fromkeys(CATEGORIES, 0), "parameters": 1 << 20})
    events = (
        ("alloc", 0, 1 << 20, "held"),
        ("reset",),
        ("alloc", 1, 3072 * batch, "aten.convolution.default"),
        ("alloc", 2, 3072 * batch, "aten.silu.default"),
        ("free", 1),
    )
    return AllocationStream(batch, events, peak)


def test_a_stream_is_kept_and_read_back_whole(cache_in):
    key = cache.key(tiny(), DEFAULT_TARGET)
    cache.save(key, stream(3))
    assert cache.load(key, 3) == stream(3)
    assert cache.load(key, 2) is None  # another batch: not kept
    assert [p.name for p in cache_in.iterdir()] == [f"{key}-b3.json.gz"]


def test_a_repeated_question_is_answered_without_tracing(cache_in, monkeypatch):
    """A second process (a new model, nothing in memory) answers from the entries the first
    one kept: the same prediction, and no trace."""
    spec = tiny(attention="8")
    first = StepModel(spec, DEFAULT_TARGET, many=True).prediction(40)

    def no_trace(*_):
        raise AssertionError("traced again")

    monkeypatch.setattr(batches, "allocation_stream", no_trace)
    assert StepModel(spec, DEFAULT_TARGET).prediction(40) == first


def other_value(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    return f"{value}x"


KEYED = [f.name for f in dataclasses.fields(BenchSpec) if f.name not in cache.UNKEYED]


@pytest.mark.parametrize("field", KEYED)
def test_every_spec_field_that_changes_a_trace_changes_the_key(field):
    spec = tiny()
    changed = spec.replace(**{field: other_value(getattr(spec, field))})
    assert cache.key(changed, DEFAULT_TARGET) != cache.key(spec, DEFAULT_TARGET)


def test_how_a_spec_is_run_or_judged_keeps_the_key():
    spec = tiny()
    same = spec.replace(
        batch=64, budget=4096.0, context_mib=300.0, card="rtx3070", device="cuda:0",
        measure_steps=5, warmup_steps=3, repeat=2, find_max_batch=True, predict_only=True,
    )  # fmt: skip
    assert cache.key(same, DEFAULT_TARGET) == cache.key(spec, DEFAULT_TARGET)


@pytest.mark.parametrize(
    "change",
    ["target", "cudnn", "torch", "python", "library", "source"],
)
def test_every_other_input_of_a_trace_changes_the_key(change, monkeypatch):
    spec, target = tiny(), DEFAULT_TARGET
    before = cache.key(spec, target)
    if change == "target":
        target = (8, 9)
    elif change == "cudnn":
        monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91700)
    elif change == "torch":
        monkeypatch.setattr(torch, "__version__", "2.99.0")
    elif change == "python":
        monkeypatch.setattr(cache.platform, "python_version", lambda: "3.99.0")
    elif change == "library":
        monkeypatch.setattr(cache, "_version", lambda name: "0.0.1")
    else:
        monkeypatch.setattr(cache, "source_digest", lambda: "0" * 64)
    assert cache.key(spec, target) != before


def test_the_model_config_is_keyed_by_its_bytes_not_its_name(tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text('{"base_channels": 32}')
    second.write_text('{"base_channels": 32}')
    key = cache.key(tiny(model_config=str(first)), DEFAULT_TARGET)
    assert cache.key(tiny(model_config=str(second)), DEFAULT_TARGET) == key
    second.write_text('{"base_channels": 48}')
    assert cache.key(tiny(model_config=str(second)), DEFAULT_TARGET) != key
    assert cache.key(tiny(model_config=str(tmp_path / "gone.json")), DEFAULT_TARGET) is None


def test_a_users_factory_is_never_cached(cache_in):
    spec = tiny(impl="my_package.models:build")
    assert cache.key(spec, DEFAULT_TARGET) is None
    cache.save(None, stream())
    assert list(cache_in.iterdir()) == []


def test_the_source_digest_follows_every_python_file(tmp_path):
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "a.py").write_text("A = 1\n")
    (root / "notes.txt").write_text("not code")
    digests = [cache.tree_digest({"pkg": root})]
    (root / "notes.txt").write_text("other notes")
    assert cache.tree_digest({"pkg": root}) == digests[0]  # not Python: not the trace's
    (root / "a.py").write_text("A = 2\n")
    digests.append(cache.tree_digest({"pkg": root}))
    (root / "sub" / "b.py").write_text("")
    digests.append(cache.tree_digest({"pkg": root}))
    (root / "sub" / "b.py").rename(root / "c.py")
    digests.append(cache.tree_digest({"pkg": root}))
    assert len(set(digests)) == 4


def test_a_changed_input_misses(cache_in):
    spec = tiny()
    cache.save(cache.key(spec, DEFAULT_TARGET), stream())
    assert cache.load(cache.key(spec.replace(precision="bf16"), DEFAULT_TARGET), 2) is None
    assert cache.load(cache.key(spec, (7, 5)), 2) is None
    assert cache.load(cache.key(spec, DEFAULT_TARGET), 2) == stream()


def rewrite(path, change):
    """The entry at `path` with `change` applied to its JSON data; its checksum kept."""
    data = json.loads(gzip.decompress(path.read_bytes()))
    change(data)
    path.write_bytes(gzip.compress(json.dumps(data).encode()))


def resealed(change):
    """A change of the body with the checksum made anew: a well-formed lie."""

    def apply(data):
        change(data["body"])
        data["sha256"] = cache._digest(data["body"])

    return apply


DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:40]),
    "not gzip": lambda p: p.write_bytes(b"\x00garbage"),
    "gzip of no JSON": lambda p: p.write_bytes(gzip.compress(b"{not json")),
    "a size changed": lambda p: rewrite(p, lambda d: d["body"]["events"][2].__setitem__(0, 4096)),
    "another key's": lambda p: rewrite(p, lambda d: d.__setitem__("key", "0" * 64)),
    "another batch's": lambda p: rewrite(p, resealed(lambda b: b.__setitem__("batch", 5))),
    "a free of nothing": lambda p: rewrite(p, resealed(lambda b: b["events"].append(7))),
    "a size in words": lambda p: rewrite(
        p, resealed(lambda b: b["events"][2].__setitem__(0, "6144"))
    ),
    "a peak short of a category": lambda p: rewrite(p, resealed(lambda b: b["peak"].pop("ema"))),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_entry_is_ignored_and_traced_again(cache_in, monkeypatch, damage):
    spec = tiny()
    key = cache.key(spec, DEFAULT_TARGET)
    cache.save(key, stream(2))
    (path,) = cache_in.iterdir()
    DAMAGE[damage](path)
    assert cache.load(key, 2) is None
    traced = []
    monkeypatch.setattr(
        batches, "allocation_stream", lambda s, target: traced.append(s.batch) or stream(s.batch)
    )
    assert StepModel(spec, DEFAULT_TARGET).stream(2) == stream(2)
    assert traced == [2]
    assert cache.load(key, 2) == stream(2)  # rebuilt


def test_an_unwritable_cache_is_skipped(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the folder would be")
    monkeypatch.setenv(cache.CACHE_ENV, str(blocked / "traces"))
    key = cache.key(tiny(), DEFAULT_TARGET)
    cache.save(key, stream())
    assert cache.load(key, 2) is None


def test_the_cache_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, "off")
    assert cache.folder() is None
    monkeypatch.delenv(cache.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.folder() == tmp_path / "ddpm-bench" / "traces"


def test_a_named_config_is_keyed_by_its_file_s_bytes(tmp_path):
    """A config named (bench/configs) rather than a path is cached like a file of the same
    bytes: guided-diffusion's released models were never cached before."""
    named = "adm-imagenet-256-uncond"
    copy = tmp_path / "copy.flags"
    copy.write_bytes(resolve(named).read_bytes())
    spec = BenchSpec(impl="guided-diffusion", model_config=named, image_size=256)
    key = cache.key(spec, DEFAULT_TARGET)
    assert key is not None
    assert cache.key(spec.replace(model_config=str(copy)), DEFAULT_TARGET) == key
    assert cache.key(spec.replace(model_config="adm-imagenet-256"), DEFAULT_TARGET) != key
