"""Fashion-MNIST loader: IDX parsing on tiny files written here, search order, real data when installed."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from decodelab.datasets import fashion_mnist as fm
from decodelab.registry import DATASETS

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> Path:
    """Write ``arr`` (uint8) in the real IDX format: 0, 0, type 0x08, ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def make_split(folder: Path, split: str, n: int, gz: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    prefix = "train" if split == "train" else "t10k"
    write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz)
    return images, labels


@pytest.fixture
def no_default_dirs(monkeypatch, tmp_path):
    """Hide the Debian install, $DECODELAB_DATA and ~/decodelab_data from the search."""
    monkeypatch.setattr(fm, "SYSTEM_DIRS", ())
    monkeypatch.delenv("DECODELAB_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.mark.parametrize("gz", [True, False])
def test_load_gz_and_raw(tmp_path, gz):
    images, labels = make_split(tmp_path, "train", 7, gz=gz)
    test_images, test_labels = make_split(tmp_path, "test", 3, gz=not gz, seed=1)
    x, y = fm.load_fashion_mnist("train", root=tmp_path)
    assert x.dtype == np.uint8 and x.shape == (7, 28, 28)
    assert y.dtype == np.int64 and y.shape == (7,)
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
    xt, yt = fm.load_fashion_mnist("test", root=tmp_path)
    np.testing.assert_array_equal(xt, test_images)
    np.testing.assert_array_equal(yt, test_labels)


def test_cached_and_read_only(tmp_path):
    make_split(tmp_path, "test", 4, gz=True)
    a = fm.load_fashion_mnist("test", root=tmp_path)
    b = fm.load_fashion_mnist("test", root=tmp_path)
    assert a[0] is b[0] and a[1] is b[1]
    assert not a[0].flags.writeable


def test_torchvision_layout_and_env_search(tmp_path, monkeypatch, no_default_dirs):
    images, _ = make_split(tmp_path / "tv" / "FashionMNIST" / "raw", "test", 2, gz=False)
    np.testing.assert_array_equal(fm.load_fashion_mnist("test", root=tmp_path / "tv")[0], images)
    data = tmp_path / "data"
    images2, _ = make_split(data / "fashion-mnist", "test", 5, gz=True, seed=3)
    monkeypatch.setenv("DECODELAB_DATA", str(data))
    assert fm.search_paths()[0] == data / "fashion-mnist"
    np.testing.assert_array_equal(fm.load_fashion_mnist("test")[0], images2)


def test_home_folder_is_searched(tmp_path, no_default_dirs):
    images, _ = make_split(tmp_path / "home" / "decodelab_data" / "fashion-mnist", "test", 3, gz=True)
    np.testing.assert_array_equal(fm.load_fashion_mnist("test")[0], images)


def test_missing_files_error_lists_places_and_apt_hint(tmp_path, no_default_dirs):
    with pytest.raises(FileNotFoundError) as err:
        fm.load_fashion_mnist("train")
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert str(tmp_path / "home" / "decodelab_data" / "fashion-mnist") in msg
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fm.FashionMNIST("test", root=tmp_path / "nowhere")


def test_corrupt_magic_names_file(tmp_path):
    make_split(tmp_path, "test", 2, gz=False)
    bad = tmp_path / "t10k-images-idx3-ubyte"
    raw = bytearray(bad.read_bytes())
    raw[0] = 0x12
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.*magic"):
        fm.load_fashion_mnist("test", root=tmp_path)


def test_truncated_data_and_gzip(tmp_path):
    make_split(tmp_path, "test", 2, gz=False)
    f = tmp_path / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        fm.read_idx(f)
    gz = write_idx(tmp_path / "x-idx1-ubyte", np.arange(50, dtype=np.uint8), gz=True)
    gz.write_bytes(gz.read_bytes()[:-12])
    with pytest.raises(ValueError, match="gzip"):
        fm.read_idx(gz)


def test_wrong_dims_and_count_mismatch(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 27, 28), np.uint8), gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8), gz=False)
    with pytest.raises(ValueError, match=r"\[N, 28, 28\]"):
        fm.load_fashion_mnist("test", root=tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8), gz=False)
    with pytest.raises(ValueError, match="3 images but"):
        fm.load_fashion_mnist("test", root=tmp_path)


def test_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="split"):
        fm.load_fashion_mnist("val", root=tmp_path)
    with pytest.raises(ValueError, match="split"):
        fm.FashionMNIST("validation", root=tmp_path)


def test_dataset_items(tmp_path):
    images, labels = make_split(tmp_path, "test", 4, gz=True)
    ds = fm.FashionMNIST("test", root=tmp_path)
    assert len(ds) == 4 and ds.image_size == 32 and ds.classes[0] == "T-shirt/top"
    x, y = ds[1]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and y == int(labels[1])
    assert torch.all(x[:, :2] == -1) and torch.all(x[:, :, -2:] == -1)  # 2 px background padding
    expected = torch.tensor(images[1], dtype=torch.float32) / 127.5 - 1
    torch.testing.assert_close(x[0, 2:30, 2:30], expected)
    x3, _ = fm.FashionMNIST("test", root=tmp_path, channels=3)[1]
    assert x3.shape == (3, 32, 32) and torch.equal(x3[0], x3[2])
    x64, _ = fm.FashionMNIST("test", root=tmp_path, image_size=64, transform=lambda t: t * 0.5)[0]
    assert x64.shape == (1, 64, 64) and x64.abs().max() <= 0.5
    x28, _ = fm.FashionMNIST("test", root=tmp_path, image_size=28)[1]
    torch.testing.assert_close(x28[0], expected)
    with pytest.raises(ValueError, match="channels"):
        fm.FashionMNIST("test", root=tmp_path, channels=2)


def test_registered(tmp_path):
    make_split(tmp_path, "test", 2, gz=True)
    assert DATASETS.get("fashion_mnist").kind == "image"
    ds = DATASETS.create("fashion_mnist", split="test", root=tmp_path, image_size=None)
    assert isinstance(ds, fm.FashionMNIST) and len(ds) == 2


def test_real_debian_data():
    if not all(
        (DEBIAN_DIR / f"{p}-{k}-ubyte.gz").is_file() for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1")
    ):
        pytest.skip("dataset-fashion-mnist not installed: apt-get install dataset-fashion-mnist")
    x, y = fm.load_fashion_mnist("train", root=DEBIAN_DIR)
    xt, yt = fm.load_fashion_mnist("test", root=DEBIAN_DIR)
    assert x.shape == (60000, 28, 28) and y.shape == (60000,)
    assert xt.shape == (10000, 28, 28) and yt.shape == (10000,)
    assert y.min() == 0 and y.max() == 9 and np.all(np.bincount(y) == 6000)
    assert yt.min() == 0 and yt.max() == 9 and np.all(np.bincount(yt) == 1000)
    img, label = fm.FashionMNIST("test", root=DEBIAN_DIR)[0]
    assert img.shape == (1, 32, 32) and -1 <= img.min() < img.max() <= 1 and label == int(yt[0])
