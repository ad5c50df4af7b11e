"""Checkpoint files: written atomically, read with errors that name the file and the problem,
and decoded into what training and sampling rebuild from them (schedule, configurations,
weights)."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from ddpm.config import TrainConfig, UNetConfig
from ddpm.ema import EMA
from ddpm.errors import first_line
from ddpm.schedule import NoiseSchedule
from ddpm.state import load_model_state

FORMAT = "ddpm-bench-checkpoint-v1"
REQUIRED_KEYS = (
    "format",
    "unet_config",
    "train_config",
    "schedule",
    "step",
    "model",
    "ema",
    "optimizer",
    "scaler",
    "rng",
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, truncated or from another model."""


def _temporary_affixes(path: Path) -> tuple[str, str]:
    """The prefix and suffix of the temporary file a save of `path` writes first."""
    return f".{path.name}.", ".tmp"


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write to a temporary file beside `path`, then rename: a crash never leaves half a file
    (a process killed outright leaves the temporary file, which remove_stale_temporaries
    removes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = _temporary_affixes(path)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    try:
        # mkstemp makes the file 0600; a checkpoint gets the permissions any new file gets.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """The temporary files saves of `path` began and never renamed: .<name>.<mkstemp's random
    letters, digits and underscores>.tmp beside it, and nothing else."""
    path = Path(path)
    prefix, suffix = _temporary_affixes(path)
    pattern = re.compile(re.escape(prefix) + r"[a-z0-9_]+" + re.escape(suffix))
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name) and p.is_file())


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove what stale_temporaries finds; call it before a process saves `path` again, when no
    other save of it can be under way. Returns the files removed."""
    removed = []
    for tmp in stale_temporaries(path):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        # A FIFO, a device or a folder is there but is no file to read (a FIFO would block).
        there = path.exists()
        raise CheckpointError(
            f"checkpoint {path} " + ("is not a regular file." if there else "does not exist.")
        )
    try:
        # weights_only: a checkpoint is data; never run code from a file on load.
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        text = str(exc).strip()
        reason = first_line(exc)
        if text.startswith("Weights only load failed"):
            # Torch's text advises loading with weights_only=False, which runs the file's code:
            # never passed on.
            found = re.search(r"GLOBAL (\S+)", text)
            if found:
                message = (
                    f"checkpoint {path} is not a plain checkpoint: it holds "
                    f"{found.group(1)}, an object that loading would have to run code to "
                    "build; it was refused."
                )
                raise CheckpointError(message) from None
            detail = re.search(r"WeightsUnpickler error:\s*(\S.*)", text)
            reason = detail.group(1) if detail else "not tensors and plain data"
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({reason[:200]})."
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {path} is not a ddpm-bench checkpoint (expected format {FORMAT!r})."
        )
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}.")
    return data


# -- decoding: a loaded checkpoint's parts as objects -----------------------------------------


def schedule_from(data: dict) -> NoiseSchedule:
    return NoiseSchedule.from_state_dict(data["schedule"])


def unet_config_from(data: dict) -> UNetConfig:
    return UNetConfig(**data["unet_config"])


# TrainConfig fields by their names in older checkpoints.
RENAMED_FIELDS = {"warmup_steps": "lr_warmup_steps"}


def train_config_from(data: dict) -> TrainConfig:
    fields = {RENAMED_FIELDS.get(k, k): v for k, v in data["train_config"].items()}
    return TrainConfig(**fields)


def ema_from(data: dict, model: torch.nn.Module) -> EMA:
    """The checkpoint's EMA of `model`'s weights (its shadow copy, decay and update count)."""
    ema = EMA(model, decay=data["ema"]["decay"])
    ema.load_state_dict(data["ema"])
    return ema


def load_weights(model: torch.nn.Module, data: dict) -> None:
    """The checkpoint's EMA weights into `model`: the weights ddpm.cli.sample draws with by default.
    The raw weights are loaded first, so a checkpoint of another model fails on them by name."""
    load_model_state(model, data["model"])
    ema_from(data, model).copy_to(model)
