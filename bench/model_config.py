"""--model-config FILE: the model a user trains, as a JSON or TOML file of keyword arguments.

For `--impl ddpm` the file holds UNetConfig fields that replace the preset's; for the other
implementations, that library's own keyword arguments (bench.models.impl reads them). A spec
names the file by its stem and a hash of its bytes (`tag`), so `--resume` never takes the rows
of one file for another's of the same name."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from ddpm.config import UNetConfig

# UNetConfig fields that are axes of their own: the file would contradict the spec's column.
AXIS_FIELDS = {
    "image_size": "--image-size",
    "attention_resolutions": "--attention",
    "gradient_checkpointing": "--checkpointing",
}


class ModelConfigError(ValueError):
    """A file that cannot be read, or a field the model rejects; the message is one line."""


def load(path: str) -> dict:
    """The file's top-level table: TOML for a .toml name, JSON otherwise."""
    file = Path(path)
    try:
        text = file.read_bytes()
    except OSError as exc:
        raise ModelConfigError(f"--model-config {path}: cannot read it ({exc.strerror}).") from None
    try:
        if file.suffix.lower() == ".toml":
            data = _toml().loads(text.decode())
        else:
            data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        kind = "TOML" if file.suffix.lower() == ".toml" else "JSON"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelConfigError(f"--model-config {path} is not valid {kind}: {first}.") from None
    if not isinstance(data, dict):
        raise ModelConfigError(
            f"--model-config {path} must hold a table of keyword arguments, not a "
            f"{type(data).__name__}."
        )
    return data


def _toml():
    try:
        import tomllib  # the standard library's from Python 3.11
    except ModuleNotFoundError:
        raise ModelConfigError("--model-config: TOML needs Python 3.11; give JSON.") from None
    return tomllib


def tag(path: str) -> str:
    """The file's stem and the first 8 hex digits of its bytes' SHA-256 ("missing" when it is
    gone: a table read back after the file was deleted still names its specs)."""
    try:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:8]
    except OSError:
        digest = "missing"
    return f"{Path(path).stem}{digest}"


def unet_config(path: str, base: UNetConfig, **after) -> UNetConfig:
    """`base` (the preset) with the file's UNetConfig fields, then `after` (the spec's axes,
    which win); an unknown field, an axis's field or a value UNetConfig rejects is one line
    naming the file and it."""
    fields = {f.name for f in dataclasses.fields(UNetConfig)}
    changes = load(path)
    for name in changes:
        if name in AXIS_FIELDS:
            raise ModelConfigError(
                f"--model-config {path}: field {name!r} is an axis of its own; give "
                f"{AXIS_FIELDS[name]} instead."
            )
        if name not in fields:
            allowed = ", ".join(sorted(fields - set(AXIS_FIELDS)))
            raise ModelConfigError(
                f"--model-config {path}: unknown UNetConfig field {name!r}; choose from {allowed}."
            )
    try:
        return base.replace(**{**changes, **after})
    except (ValueError, TypeError) as exc:
        raise ModelConfigError(f"--model-config {path}: {exc}") from None
