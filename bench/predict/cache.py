"""Traced steps kept on disk, so that a question asked again is answered without tracing.

An entry is one AllocationStream (bench.predict.stream): a spec's step at one batch, traced for
one card. Its key is everything that changes a trace: the spec's fields but those that only
say how a spec is run or judged (batch, which is the entry's own, budget, context, card name,
device, steps, repeat); the --model-config file's bytes; the target card's compute capability;
the cuDNN version (it picks the attention kernel); Python's and torch's versions and those of
the model libraries; and a SHA-256 of every Python source of the bench and ddpm packages, so any
edit of the code makes every entry a miss. A user's factory (--impl package.module:callable) is
code outside those packages: it is never cached.

Entries live in $DDPM_BENCH_TRACE_CACHE, else $XDG_CACHE_HOME/ddpm-bench/traces, else
~/.cache/ddpm-bench/traces; DDPM_BENCH_TRACE_CACHE=off turns the cache off. Deleting the folder
clears it. An entry is gzip'd JSON holding its key and a SHA-256 of its body: one that cannot be
read, is damaged or is not the stream it claims to be is ignored (and rebuilt by the caller),
never trusted. Entries are written to a temporary file and renamed, so two processes that trace
the same step at once leave one whole entry.

Beside the traces, small answers worked out from them (a plan's predicted memory and step time
at one batch, a model's parameter count) are kept by kind and by a name that starts with an
entry's key (save_answer, load_answer), so a question asked again reads them and works out
nothing; they go wherever the traces go (any edit of the code misses them too)."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import json
import logging
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path

import torch

from bench.model_config import resolve
from bench.predict.stream import AllocationStream
from bench.spec import BenchSpec

CACHE_ENV = "DDPM_BENCH_TRACE_CACHE"
FORMAT = 1  # the entry layout; a change of it is a change of every key
# BenchSpec fields that do not change a trace: how a spec is run or judged, or (batch) what an
# entry is at. Every other field is in the key, a field added later too.
UNKEYED = frozenset(
    {
        "batch",
        "budget",
        "context_mib",
        "card",
        "device",
        "measure_steps",
        "warmup_steps",
        "repeat",
        "find_max_batch",
        "predict_only",
        "model_config",  # its bytes are keyed instead of its path
    }
)
# The libraries whose models a spec may train (bench.models): their versions are in the key.
LIBRARIES = ("diffusers", "denoising-diffusion-pytorch", "guided-diffusion-sdk")
log = logging.getLogger(__name__)


def folder() -> Path | None:
    """Where entries are kept; None when the cache is off."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen == "off":
        return None
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ddpm-bench" / "traces"


def tree_digest(roots: dict[str, Path]) -> str:
    """SHA-256 of every Python file under each root, by its name and relative path."""
    digest = hashlib.sha256()
    for name, root in sorted(roots.items()):
        for path in sorted(root.rglob("*.py")):
            digest.update(f"{name}/{path.relative_to(root).as_posix()}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@functools.cache
def source_digest() -> str:
    """tree_digest of the bench and ddpm packages, once a process."""
    import bench
    import ddpm

    return tree_digest({p.__name__: Path(p.__file__).parent for p in (bench, ddpm)})


@functools.cache  # a metadata look-up scans the installed packages: milliseconds, once each
def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def key_fields(spec: BenchSpec, target: tuple[int, int]) -> dict | None:
    """Everything that changes the spec's trace for `target`, but its batch; None where it
    cannot be known (a user's factory, or a --model-config file that cannot be read)."""
    if ":" in spec.impl:
        return None
    config = None
    if spec.config_file:
        try:
            # A named config (bench/configs) is keyed by its file's bytes as any other.
            config = hashlib.sha256(resolve(spec.config_file).read_bytes()).hexdigest()
        except OSError:
            return None
    fields = {
        f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name not in UNKEYED
    }
    return {
        "format": FORMAT,
        "spec": fields,
        "model_config": config,
        "target": list(target),
        "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "libraries": {name: _version(name) for name in LIBRARIES},
        "source": source_digest(),
    }


def key(spec: BenchSpec, target: tuple[int, int]) -> str | None:
    """The hex SHA-256 of key_fields, or None (nothing to cache)."""
    fields = key_fields(spec, target)
    if fields is None:
        return None
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _digest(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _path(where: Path, entry_key: str, batch: int) -> Path:
    return where / f"{entry_key}-b{batch}.json.gz"


def load(entry_key: str | None, batch: int) -> AllocationStream | None:
    """The stream kept for `entry_key` at `batch`; None when there is none, the cache is off,
    or the entry is damaged (then it is said in a debug line, and the caller traces again)."""
    where = folder()
    if entry_key is None or where is None:
        return None
    path = _path(where, entry_key, batch)
    try:
        data = json.loads(gzip.decompress(path.read_bytes()))
    except FileNotFoundError:
        return None
    except (OSError, EOFError, ValueError) as exc:
        log.debug("trace cache: %s is unreadable (%s); tracing again", path, exc)
        return None
    try:
        body = data["body"]
        if data["key"] != entry_key or data["sha256"] != _digest(body):
            raise ValueError("its key or checksum does not match")
        stream = AllocationStream.from_json(body)
        if stream.batch != batch:
            raise ValueError(f"it holds batch {stream.batch}")
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        log.debug("trace cache: %s is damaged (%s); tracing again", path, exc)
        return None
    return stream


def save(entry_key: str | None, stream: AllocationStream) -> None:
    """Keep `stream` under `entry_key`; a cache that cannot be written is skipped (the answer
    does not need it), with a debug line."""
    where = folder()
    if entry_key is None or where is None:
        return
    body = stream.to_json()
    data = {"key": entry_key, "sha256": _digest(body), "body": body}
    tmp = None
    try:
        where.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=where, suffix=".tmp", delete=False) as tmp:
            tmp.write(gzip.compress(json.dumps(data).encode(), compresslevel=1))
        os.replace(tmp.name, _path(where, entry_key, stream.batch))
    except OSError as exc:
        log.debug("trace cache: cannot write to %s (%s)", where, exc)
        if tmp is not None:
            Path(tmp.name).unlink(missing_ok=True)


def _answer_path(where: Path, kind: str, name: list) -> Path:
    return where / f"{kind}-{hashlib.sha256(json.dumps(name).encode()).hexdigest()}.json"


def load_answer(kind: str, name: list):
    """A small answer kept beside the traces: what was worked out from them (a plan's predicted
    memory or step time at one batch), by its kind and its name (JSON data, an entry's key
    first). None where there is none, the cache is off, or it cannot be read (then it is worked
    out again)."""
    where = folder()
    if where is None:
        return None
    path = _answer_path(where, kind, name)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.debug("trace cache: %s is unreadable (%s)", path, exc)
        return None


def save_answer(kind: str, name: list, value) -> None:
    """Keep `value` (JSON data) as load_answer reads it; skipped where it cannot be written."""
    where = folder()
    if where is None:
        return
    tmp = None
    try:
        where.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=where, suffix=".tmp", delete=False) as tmp:
            tmp.write(json.dumps(value))
        os.replace(tmp.name, _answer_path(where, kind, name))
    except OSError as exc:
        log.debug("trace cache: cannot write to %s (%s)", where, exc)
        if tmp is not None:
            Path(tmp.name).unlink(missing_ok=True)
