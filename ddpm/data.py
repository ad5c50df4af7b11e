"""Datasets as endless batch iterators: synthetic, digits, mnist, cifar10 and an image folder.

Every dataset ends up the same way: one float32 tensor (N, C, H, W) in memory, scaled to [-1, 1]
(Ho et al. 2020, section 3.3: data scaled linearly to [-1, 1]), square, at the requested size and
channel count, split once into training and validation images by a seeded permutation.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DATASETS = ("synthetic", "digits", "mnist", "cifar10", "folder")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SYNTHETIC_IMAGES = 1024
# ITU-R BT.601 luma: the weights PIL's convert("L") uses too, kept in float here.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# Images are converted in chunks so a 50k-image set never exists as one float copy at full size.
_CHUNK = 1024


class DatasetError(ValueError):
    """A dataset that cannot be loaded: unknown name, missing or empty folder, data not present."""


class ImageDataset:
    """In-memory images in [-1, 1], split into training images and held-out validation images."""

    def __init__(
        self,
        name: str,
        images: torch.Tensor,
        seed: int = 0,
        val_fraction: float = 0.1,
        flip: bool = False,
    ):
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}.")
        n = images.shape[0]
        if n < 2:
            raise DatasetError(f"dataset {name} has {n} image(s): add images, it needs at least 2.")
        # At least one image on each side, so both validation() and batches() always have data.
        n_val = min(n - 1, max(1, round(n * val_fraction)))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        self.name = name
        self.flip = flip
        # Positions in the source's own order, so labels or file names can be matched up later.
        self.train_indices, self.val_indices = order[: n - n_val], order[n - n_val :]
        self.train_images = images[self.train_indices].contiguous()
        self.val_images = images[self.val_indices].contiguous()

    def __len__(self) -> int:
        return self.train_images.shape[0]

    def __repr__(self) -> str:
        _, c, h, w = self.train_images.shape
        return (
            f"ImageDataset({self.name!r}, train={len(self)}, val={self.val_images.shape[0]}, "
            f"shape=({c}, {h}, {w}), flip={self.flip})"
        )

    def validation(self) -> torch.Tensor:
        """The held-out images, (N_val, C, H, W)."""
        return self.val_images

    def batches(self, batch_size: int, seed: int = 0) -> Iterator[torch.Tensor]:
        """Endless training batches of exactly `batch_size` images; the same seed, the same batches.

        Each epoch is a fresh permutation; epochs are concatenated, so a batch that straddles an
        epoch boundary (or a batch larger than the whole set) is still full.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        return self._batches(batch_size, torch.Generator().manual_seed(seed))

    def _batches(self, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        n = len(self)
        queue = torch.empty(0, dtype=torch.long)
        while True:
            if queue.numel() < batch_size:
                # Every epoch the batch needs in one concatenation: growing the queue an epoch at
                # a time copies it once per epoch, quadratic in a batch many times the set.
                epochs = -(-(batch_size - queue.numel()) // n)
                queue = torch.cat(
                    [queue, *(torch.randperm(n, generator=generator) for _ in range(epochs))]
                )
            index, queue = queue[:batch_size], queue[batch_size:]
            x = self.train_images[index]
            if self.flip:
                flipped = torch.rand(batch_size, generator=generator) < 0.5
                x = torch.where(flipped[:, None, None, None], x.flip(-1), x)
            yield x


def load_dataset(
    name: str,
    image_size: int,
    channels: int,
    root: str | Path = "data",
    download: bool = False,
    seed: int = 0,
    val_fraction: float = 0.1,
    flip: bool = False,
) -> ImageDataset:
    """Load dataset `name` (one of DATASETS) as (N, channels, image_size, image_size) in [-1, 1].

    `root` is where torchvision keeps mnist/cifar10, or the image folder itself for "folder".
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}.")
    for label, value in (("image_size", image_size), ("channels", channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{label} must be a positive integer, got {value!r}.")
    if name != "synthetic" and channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3 for {name} images, got {channels}.")
    if name in ("mnist", "cifar10", "folder") and Path(root).exists() and not Path(root).is_dir():
        # Said as it is: "not found" would send the user looking for a folder that is a file.
        raise DatasetError(
            f"--data-root {root} is a file, not a folder: point it at the folder that holds "
            + ("the images." if name == "folder" else f"{name} (or where --download puts it).")
        )

    if name == "synthetic":
        # Standard normal and not clamped: it exists to measure speed and memory, not to learn.
        generator = torch.Generator().manual_seed(seed)
        shape = (SYNTHETIC_IMAGES, channels, image_size, image_size)
        images = torch.randn(shape, generator=generator)
    elif name == "digits":
        images = _load_digits(image_size, channels)
    elif name == "mnist":
        images = _load_torchvision("mnist", Path(root), download, image_size, channels)
    elif name == "cifar10":
        images = _load_torchvision("cifar10", Path(root), download, image_size, channels)
    else:
        images = _load_folder(Path(root), image_size, channels)
    return ImageDataset(name, images, seed=seed, val_fraction=val_fraction, flip=flip)


def _load_digits(image_size: int, channels: int) -> torch.Tensor:
    # Imported here: scikit-learn takes a second to import and only this dataset needs it.
    from sklearn.datasets import load_digits

    raw = torch.from_numpy(load_digits().images).float()  # (1797, 8, 8), grey levels 0..16
    return _convert(raw[:, None] / 16 * 2 - 1, image_size, channels)


def _load_torchvision(
    name: str, root: Path, download: bool, image_size: int, channels: int
) -> torch.Tensor:
    # Imported here: torchvision is slow to import and only these two datasets need it.
    import torchvision

    title = {"mnist": "MNIST", "cifar10": "CIFAR-10"}[name]
    try:
        # The training split only; validation images come from our own split of it.
        if name == "mnist":
            data = torchvision.datasets.MNIST(root, train=True, download=download).data[:, None]
        else:
            hwc = torchvision.datasets.CIFAR10(root, train=True, download=download).data
            data = torch.from_numpy(hwc).permute(0, 3, 1, 2)
    except (RuntimeError, OSError) as err:  # torchvision's "Dataset not found", or the network
        if download:
            raise DatasetError(
                f"could not download {title} into {root}/ ({err}): check the network connection "
                f"or put the files there by hand."
            ) from err
        raise DatasetError(
            f"{title} not found under {root}/: pass --download or point --data-root at a folder "
            f"that has it."
        ) from err
    return _from_uint8(data, image_size, channels)


def _load_folder(root: Path, image_size: int, channels: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise DatasetError(
            f"image folder {root} not found: point --data-root at a folder of images."
        )
    # Sorted so the same folder gives the same tensor, and so the same split, on every machine.
    paths = sorted(
        p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )
    if not paths:
        raise DatasetError(
            f"no {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} images under {root}: "
            f"point --data-root at a folder that has some."
        )
    images = []
    for path in paths:
        try:
            with Image.open(path) as img:
                # PIL only resolves the mode (palette, alpha, 1-bit); the grey/RGB conversion
                # that matters is ours, in float, in _convert.
                img = img.convert("L" if img.mode in ("1", "L", "LA") else "RGB")
                pixels = torch.from_numpy(np.array(img))
        except (UnidentifiedImageError, OSError) as err:
            raise DatasetError(f"could not read image {path} ({err}): fix or remove it.") from err
        pixels = pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1)
        images.append(_from_uint8(_center_square(pixels)[None], image_size, channels))
    return torch.cat(images)


def _center_square(x: torch.Tensor) -> torch.Tensor:
    """Crop (..., H, W) to its centred square, so resizing keeps the aspect ratio (as DDPM's
    CelebA-HQ and LSUN pipelines do) instead of stretching."""
    h, w = x.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return x[..., top : top + side, left : left + side]


def _from_uint8(data: torch.Tensor, image_size: int, channels: int) -> torch.Tensor:
    """uint8 (N, C, H, W) in 0..255 -> float32 (N, channels, image_size, image_size) in [-1, 1]."""
    n = data.shape[0]
    out = torch.empty(n, channels, image_size, image_size)
    for start in range(0, n, _CHUNK):
        chunk = data[start : start + _CHUNK].float() / 255 * 2 - 1
        out[start : start + _CHUNK] = _convert(chunk, image_size, channels)
    return out


def _convert(x: torch.Tensor, image_size: int, channels: int) -> torch.Tensor:
    """Float (N, 1 or 3, H, W) in [-1, 1] -> (N, channels, image_size, image_size).

    Luma and bilinear resizing are both averages whose weights sum to 1, so applying them to
    [-1, 1] values gives the same result as applying them to 0..255 and rescaling afterwards.
    Grey is reduced before resizing and expanded after it, so the resize touches one channel.
    """
    if x.shape[1] == 3 and channels == 1:
        weights = torch.tensor(LUMA_WEIGHTS, dtype=x.dtype).view(1, 3, 1, 1)
        x = (x * weights).sum(dim=1, keepdim=True)
    if x.shape[-2:] != (image_size, image_size):
        # Antialiasing only matters when shrinking; without it bilinear aliases (skips pixels).
        shrinking = image_size < max(x.shape[-2:])
        x = F.interpolate(
            x,
            size=(image_size, image_size),
            mode="bilinear",
            align_corners=False,
            antialias=shrinking,
        ).clamp(-1, 1)  # the filters never overshoot; this only removes float rounding past 1
    if x.shape[1] == 1 and channels == 3:
        x = x.repeat(1, 3, 1, 1)
    return x
