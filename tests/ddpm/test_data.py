"""Datasets: pixel mapping, resizing, channel conversion, the split, batches, and every error path.

MNIST and CIFAR-10 go through torchvision's own loaders, fed tiny files written here in the real
on-disk formats, so nothing touches the network.
"""

import os
import pickle
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from ddpm.data import DATASETS, DatasetError, ImageDataset, load_dataset

LUMA = torch.tensor([0.299, 0.587, 0.114])


def to_unit(pixels):
    """0..255 -> [-1, 1], the mapping every image dataset uses."""
    return torch.as_tensor(pixels, dtype=torch.float32) / 255 * 2 - 1


def all_images(ds):
    """Training and validation images back in the source's order."""
    images = torch.cat([ds.train_images, ds.validation()])
    order = torch.cat([ds.train_indices, ds.val_indices])
    out = torch.empty_like(images)
    out[order] = images
    return out


def id_dataset(n, width=1, flip=False):
    """Image i holds 100 * i + column: its index is recoverable, and a flip is visible."""
    images = 100 * torch.arange(n).view(n, 1, 1, 1) + torch.arange(width).view(1, 1, 1, width)
    return ImageDataset("ids", images.float().expand(n, 1, 2, width).clone(), flip=flip)


def ids(batch):
    return (batch[:, 0, 0, 0] // 100).long()


# ---------------------------------------------------------------- digits (scikit-learn, offline)


def raw_digits():
    from sklearn.datasets import load_digits

    return torch.from_numpy(load_digits().images).float() / 16 * 2 - 1  # (1797, 8, 8)


def test_digits_shape_range_and_split():
    ds = load_dataset("digits", image_size=16, channels=1, val_fraction=0.1)
    assert ds.train_images.shape == (1617, 1, 16, 16) and len(ds) == 1617
    assert ds.validation().shape == (180, 1, 16, 16)  # round(1797 * 0.1)
    assert ds.train_images.dtype == torch.float32
    assert sorted(torch.cat([ds.train_indices, ds.val_indices]).tolist()) == list(range(1797))
    x = torch.cat([ds.train_images, ds.validation()])
    assert x.min() >= -1 and x.max() <= 1
    assert x.min() < -0.99 and x.max() > 0.99


def test_digits_at_native_size_is_the_raw_data():
    ds = load_dataset("digits", image_size=8, channels=1)
    torch.testing.assert_close(all_images(ds)[:, 0], raw_digits(), rtol=0, atol=1e-6)


def test_digits_resized_keeps_the_content():
    x = all_images(load_dataset("digits", image_size=16, channels=1))[:, 0]
    raw = raw_digits()
    # A 2x bilinear upsample keeps each image's mean intensity...
    torch.testing.assert_close(x.mean((1, 2)), raw.mean((1, 2)), rtol=0, atol=1e-5)
    # ...and pooling it back gives a blurred copy of the original, pixel for pixel.
    back = F.avg_pool2d(x[:, None], 2)[:, 0]
    assert torch.corrcoef(torch.stack([back.flatten(), raw.flatten()]))[0, 1] > 0.95
    assert (back - raw).abs().mean() < 0.2


def test_digits_rgb_repeats_the_grey_channel():
    grey = load_dataset("digits", image_size=12, channels=1, seed=3)
    rgb = load_dataset("digits", image_size=12, channels=3, seed=3)
    assert rgb.train_images.shape == (len(grey), 3, 12, 12)
    for c in range(3):
        assert torch.equal(rgb.train_images[:, c], grey.train_images[:, 0])
    assert torch.equal(rgb.validation()[:, 2], grey.validation()[:, 0])


def test_split_depends_on_seed_only():
    a, b = load_dataset("digits", 8, 1, seed=1), load_dataset("digits", 8, 1, seed=1)
    c = load_dataset("digits", 8, 1, seed=2)
    assert torch.equal(a.val_indices, b.val_indices)
    assert not torch.equal(a.val_indices, c.val_indices)


def test_at_least_one_image_held_out():
    ds = id_dataset(4)
    ds_small = ImageDataset("ids", ds.train_images, val_fraction=0.01)
    assert ds_small.validation().shape[0] == 1 and len(ds_small) == 2


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_seeded_unclamped_standard_normal():
    a = load_dataset("synthetic", image_size=8, channels=3, seed=5)
    b = load_dataset("synthetic", image_size=8, channels=3, seed=5)
    c = load_dataset("synthetic", image_size=8, channels=3, seed=6)
    x = all_images(a)
    assert x.shape == (1024, 3, 8, 8)
    assert torch.equal(x, all_images(b)) and not torch.equal(x, all_images(c))
    assert x.abs().max() > 3  # not clamped to [-1, 1]
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05


# ---------------------------------------------------------------- batches


def test_batches_exact_size_and_deterministic():
    ds = load_dataset("digits", image_size=8, channels=1)
    a, b, c = ds.batches(32, seed=0), ds.batches(32, seed=0), ds.batches(32, seed=1)
    for _ in range(60):  # more than one epoch, so a batch straddles the boundary
        xa, xb, xc = next(a), next(b), next(c)
        assert xa.shape == (32, 1, 8, 8)
        assert torch.equal(xa, xb)
    assert not torch.equal(xa, xc)


def test_batches_cover_every_training_image_once_per_epoch():
    ds = id_dataset(50)
    n = len(ds)
    assert n == 45
    it = ds.batches(7, seed=0)
    stream = torch.cat([ids(next(it)) for _ in range(20)])  # 140 images: 3 whole epochs
    train = sorted(ids(ds.train_images).tolist())
    epochs = [stream[e * n : (e + 1) * n] for e in range(3)]
    for epoch in epochs:
        assert sorted(epoch.tolist()) == train
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled each epoch


def test_batches_wrap_around_a_small_dataset():
    ds = id_dataset(6)  # 5 training images
    batch = next(ds.batches(12, seed=0))
    assert batch.shape[0] == 12
    stream = ids(batch).tolist()
    train = sorted(ids(ds.train_images).tolist())
    assert sorted(stream[:5]) == train and sorted(stream[5:10]) == train
    assert set(stream[10:]) <= set(train)


def test_flip_mirrors_some_images():
    ds = id_dataset(200, width=4, flip=True)
    train = ds.train_images
    originals = {i: img for i, img in zip(ids(train).tolist(), train, strict=True)}
    batch = next(ds.batches(128, seed=0))
    flipped = 0
    for i, img in zip(ids(batch).tolist(), batch, strict=True):
        if torch.equal(img, torch.flip(originals[i], dims=[-1])):
            flipped += 1
        else:
            assert torch.equal(img, originals[i])
    assert 32 < flipped < 96  # each image flipped with probability 1/2
    assert torch.equal(batch, next(ds.batches(128, seed=0)))


def test_no_flip_by_default():
    ds = id_dataset(200, width=4)
    batch = next(ds.batches(128, seed=0))
    assert torch.equal(batch, ds.train_images[_positions(ds, ids(batch))])


def _positions(ds, wanted):
    where = {i: p for p, i in enumerate(ids(ds.train_images).tolist())}
    return torch.tensor([where[i] for i in wanted.tolist()])


# ---------------------------------------------------------------- MNIST (torchvision, idx files)


def write_idx(path, array):
    """The idx format: magic 0x0000_08_<ndim> (uint8 data), big-endian dims, then the bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def write_mnist(root, images):
    # torchvision 0.29's MNIST._check_exists wants all four uncompressed files under MNIST/raw/.
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "train-images-idx3-ubyte", images)
    write_idx(raw / "train-labels-idx1-ubyte", np.arange(len(images)) % 10)
    write_idx(raw / "t10k-images-idx3-ubyte", images[:2])
    write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(2))


def test_mnist_through_torchvision(tmp_path):
    values = np.linspace(0, 255, 19).round().astype(np.uint8)  # 0 and 255 included
    images = np.zeros((20, 28, 28), dtype=np.uint8)
    images[:19] = values[:, None, None]
    images[19, :, 14:] = 255  # one image half black, half white
    write_mnist(tmp_path, images)
    ds = load_dataset("mnist", image_size=32, channels=1, root=tmp_path)
    x = all_images(ds)
    assert x.shape == (20, 1, 32, 32) and len(ds) == 18
    for i in range(19):  # a constant image stays constant under resizing
        torch.testing.assert_close(x[i], torch.full((1, 32, 32), to_unit(values[i]).item()))
    assert x[0].max() == -1 and x[18].min() == 1
    assert torch.all(x[19, :, :, 0] == -1) and torch.all(x[19, :, :, -1] == 1)
    rgb = all_images(load_dataset("mnist", image_size=16, channels=3, root=tmp_path))
    assert rgb.shape == (20, 3, 16, 16) and torch.equal(rgb[:, 0], rgb[:, 2])


def test_mnist_missing_does_not_download(tmp_path, monkeypatch):
    def no_network(self):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_network)
    with pytest.raises(DatasetError, match="MNIST not found under .*--download") as err:
        load_dataset("mnist", 32, 1, root=tmp_path, download=False)
    assert str(tmp_path) in str(err.value)


def test_failed_download_is_a_dataset_error(tmp_path, monkeypatch):
    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    with pytest.raises(DatasetError, match="could not download MNIST"):
        load_dataset("mnist", 32, 1, root=tmp_path, download=True)


# ---------------------------------------------------------------- CIFAR-10 (torchvision, pickles)


def write_cifar(root, images):
    """images: uint8 (N, 3, 32, 32), N divisible by 5, spread over the five training batches."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    # Rows are the R plane, then G, then B, each 32x32 row-major: (N, 3072) uint8. The real files
    # are Python 2 pickles whose byte-string keys torchvision decodes to str (encoding="latin1");
    # a Python 3 pickle with str keys loads to the same dict.
    rows = images.reshape(len(images), 3072)
    for k, chunk in enumerate(np.split(rows, 5)):
        batch = {"data": chunk, "labels": [0] * len(chunk)}
        (folder / f"data_batch_{k + 1}").write_bytes(pickle.dumps(batch))
    (folder / "test_batch").write_bytes(pickle.dumps({"data": rows[:1], "labels": [0]}))
    meta = {"label_names": [str(i) for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))


@pytest.fixture
def cifar(tmp_path, monkeypatch):
    # CIFAR10 checks every file's md5 against the real archive's (in _check_integrity and again in
    # _load_meta, both through cifar.check_integrity); our tiny files cannot match, so the check
    # is reduced to "the file exists", which still fails when one is missing.
    monkeypatch.setattr(
        torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath)
    )
    images = np.random.default_rng(0).integers(0, 256, size=(10, 3, 32, 32), dtype=np.uint8)
    images[0], images[1] = 0, 255
    write_cifar(tmp_path, images)
    return tmp_path, images


def test_cifar10_through_torchvision(cifar):
    root, images = cifar
    ds = load_dataset("cifar10", image_size=32, channels=3, root=root)
    x = all_images(ds)
    assert x.shape == (10, 3, 32, 32) and len(ds) == 9
    torch.testing.assert_close(x, to_unit(images), rtol=0, atol=1e-6)
    assert torch.all(x[0] == -1) and torch.all(x[1] == 1)


def test_cifar10_to_grey_is_luma(cifar):
    root, images = cifar
    x = all_images(load_dataset("cifar10", image_size=32, channels=1, root=root))
    luma = (torch.as_tensor(images, dtype=torch.float32) * LUMA.view(1, 3, 1, 1)).sum(1, True)
    torch.testing.assert_close(x, to_unit(luma), rtol=0, atol=1e-5)


def test_cifar10_downsized(cifar):
    root, _ = cifar
    x = all_images(load_dataset("cifar10", image_size=16, channels=3, root=root))
    assert x.shape == (10, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert torch.all(x[0] == -1) and torch.all(x[1] == 1)


def test_cifar10_missing(tmp_path):
    with pytest.raises(DatasetError, match="CIFAR-10 not found under"):
        load_dataset("cifar10", 32, 3, root=tmp_path)


# ---------------------------------------------------------------- image folder (PIL)


def test_folder_of_mixed_images(tmp_path):
    Image.new("L", (10, 10), 30).save(tmp_path / "grey.png")
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (20, 12), (200, 100, 50)).save(tmp_path / "sub" / "rgb.png")
    wide = np.zeros((4, 12, 3), dtype=np.uint8)
    wide[:, 4:8] = 255  # only the centred 4x4 square is white
    Image.fromarray(wide).save(tmp_path / "sub" / "wide.bmp")
    Image.new("RGBA", (9, 9), (0, 255, 0, 128)).save(tmp_path / "alpha.webp", lossless=True)
    (tmp_path / "notes.txt").write_text("not an image")

    rgb = load_dataset("folder", image_size=4, channels=3, root=tmp_path)
    x = all_images(rgb)  # sorted paths: alpha.webp, grey.png, sub/rgb.png, sub/wide.bmp
    assert x.shape == (4, 3, 4, 4) and len(rgb) == 3
    torch.testing.assert_close(x[0], to_unit([0, 255, 0]).view(3, 1, 1).expand(3, 4, 4))
    torch.testing.assert_close(x[1], torch.full((3, 4, 4), to_unit(30).item()))
    torch.testing.assert_close(x[2], to_unit([200, 100, 50]).view(3, 1, 1).expand(3, 4, 4))
    assert torch.all(x[3] == 1)  # centre-cropped, not squeezed

    grey = all_images(load_dataset("folder", image_size=4, channels=1, root=tmp_path))
    assert grey.shape == (4, 1, 4, 4)
    expected = to_unit(0.299 * 200 + 0.587 * 100 + 0.114 * 50).item()
    torch.testing.assert_close(grey[2], torch.full((1, 4, 4), expected))
    torch.testing.assert_close(grey[1], torch.full((1, 4, 4), to_unit(30).item()))


def test_folder_missing(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError, match="not found") as err:
        load_dataset("folder", 8, 3, root=missing)
    assert str(missing) in str(err.value)


@pytest.mark.parametrize("name", ["folder", "mnist", "cifar10"])
def test_a_data_root_that_is_a_file_says_so(tmp_path, name):
    """Not "not found": the path is there, and is a file where a folder belongs."""
    path = tmp_path / "images.zip"
    path.write_bytes(b"PK")
    with pytest.raises(DatasetError, match=f"--data-root {path} is a file, not a folder"):
        load_dataset(name, 8, 3 if name != "mnist" else 1, root=path, download=True)
    assert path.read_bytes() == b"PK"


def test_folder_without_images(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing to see")
    with pytest.raises(DatasetError, match="no png/jpg") as err:
        load_dataset("folder", 8, 3, root=tmp_path)
    assert str(tmp_path) in str(err.value)


def test_folder_with_a_corrupt_image(tmp_path):
    Image.new("L", (4, 4)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="bad.png"):
        load_dataset("folder", 8, 1, root=tmp_path)


# ---------------------------------------------------------------- bad arguments


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'") as err:
        load_dataset("imagenet", 32, 3)
    assert all(name in str(err.value) for name in DATASETS)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_size": 0},
        {"image_size": -8},
        {"channels": 0},
        {"channels": 2},  # an image set is grey or RGB
        {"val_fraction": 0.0},
        {"val_fraction": 1.0},
    ],
)
def test_bad_arguments(kwargs):
    args = {"name": "digits", "image_size": 8, "channels": 1, **kwargs}
    with pytest.raises(ValueError):
        load_dataset(**args)


def test_bad_batch_size():
    ds = id_dataset(4)
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="batch_size"):
            ds.batches(bad)


def test_dataset_error_is_a_value_error():
    assert issubclass(DatasetError, ValueError)
