"""What `python -m ddpm.train` and `python -m ddpm.sample` share: one-line argument errors, value
parsers that say what is allowed, device resolution, output-folder checks and image grids.

Bad input gets one line on stderr, `error: ...`, naming the bad value and
what is allowed, and exit status 2: no usage block, no traceback, nothing half-written.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

EXIT_USAGE = 2  # argparse's own status for bad arguments; every bad-input path uses it


class UsageError(Exception):
    """Bad input found after parsing (a dataset, a checkpoint, a folder): main() turns it into
    the one-line error and exit status 2."""


def fail(message: str) -> NoReturn:
    # Collapse newlines: a message quoting a library error must still be exactly one line.
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's first line of text, at most `limit` characters (its type name when it has
    no text): library errors run to many lines, and a message here is one."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


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
            f"{text} is not allowed: it must be a positive integer (1, 2, ...)")
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
            f"{text} is not allowed: it must be an integer in [0, {MAX_SEED}]")
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

    if not DEVICE_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a device: choose auto, cpu, cuda or cuda:N")
    if text == "auto":
        return indexed_device("cuda") if torch.cuda.is_available() else "cpu"
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"{text} is not available: no CUDA GPU found (torch {torch.__version__}, "
                f"CUDA {torch.version.cuda or 'not built in'}); use cpu or auto")
        index = int(text.partition(":")[2] or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise argparse.ArgumentTypeError(
                f"{text} does not exist: this machine has {count} CUDA device(s), "
                f"cuda:0..cuda:{count - 1}")
    return indexed_device(text)


def indexed_device(device) -> str:
    """'cuda' as 'cuda:<current device>', any other device unchanged: torch.cuda.set_device and
    the per-process memory fraction refuse a CUDA device without an index."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


# -- output locations -----------------------------------------------------------------------------


def prepare_output_dir(path: Path, flag: str = "--out") -> None:
    """Create `path` (and missing parents) and prove a file can be written in it.

    Done after every other check and before any work, so a long run cannot fail at its first
    checkpoint, and a failed check leaves no folder behind: folders made here are removed again.
    """
    path = Path(path)
    created: list[Path] = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        created.append(probe)
        probe = probe.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                pass
        # "File exists" / "Not a directory" are mkdir's words; say which path is the file.
        blocker = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file" if blocker else exc.strerror or type(exc).__name__
        raise UsageError(f"{flag} {path} is not a writable folder ({reason}): "
                         "choose a folder you can write to") from None


def check_image_path(path: Path, flag: str = "--out") -> None:
    """The file name must end in an image format PIL can write (it picks the format by suffix)."""
    from PIL import Image

    Image.init()
    known = Image.registered_extensions()
    if path.suffix.lower() not in known or known[path.suffix.lower()] not in Image.SAVE:
        raise UsageError(f"{flag} {path} has no image suffix PIL can write: "
                         "use .png (or .jpg, .webp, .bmp)")


def save_grid(images, path: Path, nrow: int) -> None:
    """Write images in [-1, 1] as one grid image, atomically (temporary file, then rename)."""
    from torchvision.utils import save_image  # slow to import; only needed at the very end

    path = Path(path)
    # The temporary name keeps the suffix (save_image chooses the format from it); a plain open
    # rather than mkstemp, so the file gets the usual umask permissions, not 0600.
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        # Ho et al. section 3.3 scale data to [-1, 1]; an image file wants [0, 1].
        save_image((images.float().clamp(-1, 1) + 1) / 2, tmp, nrow=nrow)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def grid_columns(n: int) -> int:
    """Columns for a near-square grid of n images."""
    return max(1, math.ceil(math.sqrt(n)))


def make_progress(label: str, *extra_columns):
    """A rich progress bar on stderr (stdout keeps the one-line summary): label, bar, done/total,
    any extra columns, elapsed and remaining time."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                    *extra_columns, TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True))


# -- interruption ---------------------------------------------------------------------------------


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised as Ctrl-C raises KeyboardInterrupt: `finally` blocks run (no temporary
    file is left behind) and one `except KeyboardInterrupt` handles both."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signal.Signals(signum)


def stopping_signal(exc: KeyboardInterrupt) -> signal.Signals:
    """The signal behind an interrupt; the exit status a shell expects is 128 + its number."""
    return getattr(exc, "signum", signal.SIGINT)


def _raise_interrupted(signum, frame) -> NoReturn:
    raise Interrupted(signum)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Inside the block SIGTERM raises Interrupted; the previous handler is restored after."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def exit_on_interrupt(message: Callable[[str], str]):
    """Ctrl-C or SIGTERM inside the block: cleanup runs, then message(signal name) as one line on
    stderr and exit status 130 or 143, as a shell reports a process those signals killed."""
    try:
        with sigterm_as_interrupt():
            yield
    except KeyboardInterrupt as exc:
        sig = stopping_signal(exc)
        print(" ".join(message(sig.name).split()), file=sys.stderr)
        sys.exit(128 + sig)
