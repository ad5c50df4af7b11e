"""--model-config FILE: the model a user trains, as a JSON or TOML file of keyword arguments, or
as flag text (`--name value` pairs, as guided-diffusion's README gives its MODEL_FLAGS).

For `--impl ddpm` the file holds UNetConfig fields that replace the preset's; for the other
implementations, that library's own keyword arguments (bench.models.impl reads them). A name
without a file of that name is one of the named configs shipped in bench/configs/ (the released
guided-diffusion and improved-diffusion models, `NAME.flags`). A spec names the file by its stem
and a hash of its bytes (`tag`), so `--resume` never takes the rows of one file for another's of
the same name."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shlex
import stat
from pathlib import Path

from ddpm.config import UNetConfig

# UNetConfig fields that are axes of their own: the file would contradict the spec's column.
AXIS_FIELDS = {
    "image_size": "--image-size",
    "attention_resolutions": "--attention",
    "gradient_checkpointing": "--checkpointing",
}


# The named configs: bench/configs/NAME.flags, each the flag text of a released model with its
# source in a comment.
NAMED_FOLDER = Path(__file__).parent / "configs"
NAMED_SUFFIX = ".flags"
# A shell assignment in flag text, MODEL_FLAGS="--image_size 64 ...": its value holds flags.
_ASSIGNMENT = re.compile(r"[A-Za-z_]\w*=(.*)", re.DOTALL)
# A model's keyword arguments take a few hundred bytes (diffusers' largest config.json, 2 KiB):
# a file past this is not one, and reading on (/dev/zero) would end only when memory does.
MAX_BYTES = 2**20


class ModelConfigError(ValueError):
    """A file that cannot be read, or a field the model rejects; the message is one line."""


def named() -> dict[str, Path]:
    """The named configs by name."""
    return {p.stem: p for p in sorted(NAMED_FOLDER.glob(f"*{NAMED_SUFFIX}"))}


def resolve(path: str) -> Path:
    """The file `path` names: that file when it exists, else the named config of that name (a
    name that is neither stays the path, and reading it says so)."""
    file = Path(path)
    if not file.exists() and path in named():
        return named()[path]
    return file


def is_named(path: str) -> bool:
    return resolve(path) != Path(path)


def read(path: str) -> bytes:
    """The file's bytes: a regular file of at most MAX_BYTES (a FIFO would block the read for
    ever, a device or /proc file never end), else ModelConfigError."""
    try:
        # No blocking open: a FIFO without a writer would hang here before stat could tell.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise ModelConfigError(f"--model-config {path}: cannot read it ({exc.strerror}).") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ModelConfigError(
                f"--model-config {path} is not a regular file: give a JSON, TOML or flag-text file."
            )
        chunks: list[bytes] = []
        while sum(map(len, chunks)) <= MAX_BYTES:
            chunk = os.read(fd, MAX_BYTES + 1 - sum(map(len, chunks)))
            if not chunk:
                break
            chunks.append(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        raise ModelConfigError(f"--model-config {path}: cannot read it ({exc.strerror}).") from None
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise ModelConfigError(
            f"--model-config {path} is larger than {MAX_BYTES // 2**20} MiB: a model's keyword "
            "arguments take a few hundred bytes."
        )
    return data


def load(path: str) -> dict:
    """The file's top-level table: TOML for a .toml name, JSON for a .json name or text that
    opens with "{", flag text otherwise (a named config is flag text)."""
    file = resolve(path)
    try:
        text = read(str(file))
    except ModelConfigError as exc:
        if file == Path(path) and not Path(path).suffix and "/" not in path:
            known = f"; the named configs are {', '.join(named())}."
            raise ModelConfigError(str(exc).removesuffix(".") + known) from None
        raise
    kind = _kind(file, text)
    try:
        if kind == "TOML":
            data = _toml().loads(text.decode())
        elif kind == "JSON":
            data = json.loads(text)
        else:
            data = flag_text(text.decode(), path)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        if isinstance(exc, ModelConfigError):
            raise
        first = (
            "nested too deeply"
            if isinstance(exc, RecursionError)
            else (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        )
        raise ModelConfigError(f"--model-config {path} is not valid {kind}: {first}.") from None
    if not isinstance(data, dict):
        raise ModelConfigError(
            f"--model-config {path} must hold a table of keyword arguments, not a "
            f"{type(data).__name__}."
        )
    return data


def _kind(file: Path, text: bytes) -> str:
    suffix = file.suffix.lower()
    if suffix == ".toml":
        return "TOML"
    if suffix == ".json" or text.lstrip().startswith(b"{"):
        return "JSON"
    return "flag text"


def flag_text(text: str, path: str) -> dict[str, str]:
    """`--name value` (or `--name=value`) pairs in shell syntax: quotes, `#` comments and
    backslash line ends as a shell reads them, and `NAME="--a 1 --b 2"` assignments (a README's
    MODEL_FLAGS line copied whole), whose value holds more pairs. Values stay text, as argparse
    receives them; a flag given twice keeps its last value, as argparse does."""
    tokens = shlex.split(text.replace("\\\n", " "), comments=True)
    flags: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        assignment = _ASSIGNMENT.fullmatch(token)
        if assignment:
            tokens[i : i + 1] = shlex.split(assignment.group(1))
            continue
        if not token.startswith("--") or len(token) == 2:
            raise ModelConfigError(
                f"--model-config {path}: {token!r} is not a flag; flag text is --name value "
                "pairs, as a README's MODEL_FLAGS."
            )
        name, equals, value = token[2:].partition("=")
        if not equals:
            if i + 1 == len(tokens) or tokens[i + 1].startswith("--"):
                raise ModelConfigError(f"--model-config {path}: --{name} has no value.")
            i += 1
            value = tokens[i]
        flags[name] = value
        i += 1
    return flags


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
        digest = hashlib.sha256(read(str(resolve(path)))).hexdigest()[:8]
    except ModelConfigError:
        digest = "missing"
    # The stem names spec ids and trace folders: what is not a word character, "." or "-" (a
    # space, a slash's neighbour, a control character) becomes "_".
    stem = re.sub(r"[^\w.-]", "_", Path(path).stem)
    return f"{stem}{digest}"


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
