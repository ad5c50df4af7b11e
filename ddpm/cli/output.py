"""Where the ddpm commands write: output folders proved writable before any work, image grids
written atomically, and the progress bar on stderr."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from ddpm.cli.args import UsageError


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
        raise UsageError(
            f"{flag} {path} is not a writable folder ({reason}): choose a folder you can write to"
        ) from None


def check_image_path(path: Path, flag: str = "--out") -> None:
    """The file name must end in an image format PIL can write (it picks the format by suffix)."""
    from PIL import Image

    Image.init()
    known = Image.registered_extensions()
    if path.suffix.lower() not in known or known[path.suffix.lower()] not in Image.SAVE:
        raise UsageError(
            f"{flag} {path} has no image suffix PIL can write: use .png (or .jpg, .webp, .bmp)"
        )


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

    return Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
