"""What `python -m ddpm.cli.train` and `python -m ddpm.cli.sample` (and bench's commands) share
on the command line: one-line argument errors, and value parsers that say what is allowed.

Bad input gets one line on stderr, `error: ...`, naming the bad value and what is allowed, and
exit status 2: no usage block, no traceback, nothing half-written.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from typing import NoReturn

from ddpm.errors import printable

EXIT_USAGE = 2  # argparse's own status for bad arguments; every bad-input path uses it


class UsageError(Exception):
    """Bad input found after parsing (a dataset, a checkpoint, a folder): main() turns it into
    the one-line error and exit status 2."""


def fail(message: str) -> NoReturn:
    # Exactly one line, and literal: a message quotes file names and other programs' errors,
    # whose newlines and escape sequences are shown as escapes (ddpm.errors.printable).
    print(f"error: {printable(str(message))}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


class ArgumentParser(argparse.ArgumentParser):
    """argparse prints the usage block and then a line; we print only the line. --help still
    shows the full usage."""

    def error(self, message: str) -> NoReturn:
        fail(message)


# -- value parsers for argparse `type=`: their ArgumentTypeError text becomes the error line -----


def positive_int(text: str) -> int:
    value = _number(text, int, "a positive integer (1, 2, ...)")
    if value <= 0:
        raise argparse.ArgumentTypeError(
            f"{text} is not allowed: it must be a positive integer (1, 2, ...)"
        )
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not allowed: it must be an integer >= 0")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float, "a number > 0")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not allowed: it must be a number > 0")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float, "a number >= 0")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} is not allowed: it must be a number >= 0")
    return value


def unit_interval(text: str) -> float:
    """A number in [0, 1] (DDIM's eta)."""
    value = _number(text, float, "a number in [0, 1]")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not allowed: it must be a number in [0, 1]")
    return value


def decay_value(text: str) -> float:
    """A number in [0, 1) (an EMA decay: 1 would never move)."""
    value = _number(text, float, "a number in [0, 1)")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not allowed: it must be a number in [0, 1)")
    return value


MAX_SEED = 2**63 - 1  # torch.manual_seed takes 64-bit integers


def seed_int(text: str) -> int:
    value = _number(text, int, f"an integer in [0, {MAX_SEED}]")
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"{text} is not allowed: it must be an integer in [0, {MAX_SEED}]"
        )
    return value


def _number(text: str, kind: type, allowed: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {allowed}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not allowed: it must be {allowed}")
    return value


# -- device ---------------------------------------------------------------------------------------

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def device_arg(text: str) -> str:
    """argparse type for --device: auto, cpu, cuda or cuda:N, checked against this machine now,
    so a missing GPU is a one-line error before any work starts. A GPU comes back indexed."""
    import torch  # here, not at module level: --help and bad numbers should not wait for torch

    from ddpm.device import indexed_device

    if not DEVICE_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a device: choose auto, cpu, cuda or cuda:N"
        )
    if text == "auto":
        return indexed_device("cuda") if torch.cuda.is_available() else "cpu"
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"{text} is not available: no CUDA GPU found (torch {torch.__version__}, "
                f"CUDA {torch.version.cuda or 'not built in'}); use cpu or auto"
            )
        index = int(text.partition(":")[2] or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise argparse.ArgumentTypeError(
                f"{text} does not exist: this machine has {count} CUDA device(s), "
                f"cuda:0..cuda:{count - 1}"
            )
    return indexed_device(text)
