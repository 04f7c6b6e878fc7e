"""The Fashion-MNIST classifier, its preprocessing, the cached reference statistics and its training."""

from __future__ import annotations

import hashlib
import json
import struct
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from decodelab.datasets.fashion_mnist import FashionMNIST, find_fashion_mnist, load_fashion_mnist
from decodelab.eval import fmnist
from decodelab.eval.fid import feature_statistics, frechet_distance
from decodelab.hub import default_cache_dir
from decodelab.registry import METRICS

APT_HINT = "Fashion-MNIST not installed: `apt-get install dataset-fashion-mnist`"


def have_data() -> bool:
    try:
        find_fashion_mnist("train")
        find_fashion_mnist("test")
    except FileNotFoundError:
        return False
    return True


needs_data = pytest.mark.skipif(not have_data(), reason=APT_HINT)
needs_shipped = pytest.mark.skipif(
    not (fmnist.DEFAULT_CLASSIFIER_DIR / "model.safetensors").is_file() or not have_data(),
    reason="the shipped fmnist-classifier asset (or the Fashion-MNIST data) is not installed",
)


def tiny() -> fmnist.FMNISTClassifier:
    torch.manual_seed(0)
    return fmnist.FMNISTClassifier(channels=[4, 8], feature_dim=16).eval()


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    n = len(images)
    header = bytes([0, 0, 8, 3]) + struct.pack(">III", n, 28, 28)
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", n) + labels.tobytes())


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 30)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        write_idx(tmp_path, prefix, images, (np.arange(n) % 10).astype(np.uint8))
    return tmp_path


# ---------------------------------------------------------------------------------- preprocessing
def test_preprocess_pads_raw_images_like_the_dataset():
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    x = fmnist.preprocess(raw)
    assert x.shape == (3, 1, 32, 32) and x.dtype == torch.float32
    assert torch.all(x[:, :, :2] == -1) and torch.all(x[:, :, :, -2:] == -1)
    torch.testing.assert_close(x[:, 0, 2:30, 2:30], torch.from_numpy(raw).float() / 127.5 - 1)
    # A PIL image and a list of arrays give the same tensor.
    torch.testing.assert_close(fmnist.preprocess(Image.fromarray(raw[0])), x[:1])
    torch.testing.assert_close(fmnist.preprocess([raw[0], raw[1:]]), x)


@needs_data
def test_preprocess_matches_fashion_mnist_dataset():
    ds = FashionMNIST("test", image_size=32)
    images, _ = load_fashion_mnist("test")
    want = torch.stack([ds[i][0] for i in range(4)])
    torch.testing.assert_close(fmnist.preprocess(images[:4]), want)


def test_preprocess_generated_layouts():
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = fmnist.preprocess([Image.fromarray(rgb), Image.fromarray(rgb[:32, :32])])
    assert out.shape == (2, 1, 32, 32) and out.min() >= -1 and out.max() <= 1
    # float tensors in [-1, 1], [N, C, H, W]; RGB reduced with luma weights.
    t = torch.rand(2, 3, 32, 32) * 2 - 1
    grey = fmnist.preprocess(t)
    torch.testing.assert_close(grey[:, 0], 0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2])
    # grey uint8 tensor [N, H, W]; numpy NHWC; another value range.
    assert fmnist.preprocess(torch.zeros(5, 32, 32, dtype=torch.uint8)).eq(-1).all()
    assert fmnist.preprocess(np.full((2, 48, 48, 1), 255, np.uint8)).eq(1).all()
    assert fmnist.preprocess(torch.ones(1, 1, 32, 32), value_range=(0.0, 1.0)).eq(1).all()
    assert fmnist.preprocess(np.zeros((2, 64, 64), np.uint8), image_size=16).shape == (2, 1, 16, 16)


@pytest.mark.parametrize("bad", [[], np.zeros((2, 5, 7, 9)), "image.png", [object()], torch.zeros(2, 2, 8, 8)])
def test_preprocess_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        fmnist.preprocess(bad)


# ------------------------------------------------------------------------------------------ model
def test_classifier_shapes_and_roundtrip(tmp_path: Path):
    m = tiny()
    x = fmnist.preprocess(np.zeros((3, 28, 28), np.uint8))
    assert m(x).shape == (3, 10) and m.features(x).shape == (3, 16)
    with pytest.raises(ValueError, match="preprocess"):
        m(torch.zeros(1, 1, 28, 28))
    with pytest.raises(ValueError, match="divisible"):
        fmnist.FMNISTClassifier(channels=[4, 4, 4, 4, 4, 4])
    m.save_pretrained(tmp_path / "clf")
    loaded = fmnist.load_classifier(tmp_path / "clf")
    torch.testing.assert_close(loaded(x), m(x))
    file_sha = hashlib.sha256((tmp_path / "clf" / "model.safetensors").read_bytes()).hexdigest()
    assert loaded.weights_sha256 == file_sha == fmnist.weights_sha256(m)


def test_missing_classifier_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(FileNotFoundError, match="decodelab.train.classifier"):
        fmnist.load_classifier(tmp_path / "nowhere")
    from decodelab.vision.models import fmnist_classifier

    monkeypatch.setattr(fmnist_classifier, "DEFAULT_CLASSIFIER_DIR", tmp_path / "nowhere")
    with pytest.warns(UserWarning, match="skipped"):
        assert fmnist.evaluate_generated(np.zeros((2, 32, 32), np.uint8), [0, 1]) == {}


def test_metric_is_registered():
    assert METRICS.get("fmnist_domain").kind == "domain"
    assert fmnist.ACCURACY_KEY == "class_accuracy (fmnist classifier)"
    assert fmnist.FID_KEY == "fid (fmnist features)"


# ------------------------------------------------------------------------------ reference stats
def test_stats_cache_key():
    p = fmnist.stats_cache_path("fashion_mnist", "test", "ab" * 32, 32)
    assert p.parent == default_cache_dir() / "fid_stats"
    assert "fashion_mnist" in p.name and "test" in p.name and "32px" in p.name and "ab" * 32 in p.name
    others = {
        fmnist.stats_cache_path("fashion_mnist", "train", "ab" * 32, 32),
        fmnist.stats_cache_path("fashion_mnist", "test", "cd" * 32, 32),
        fmnist.stats_cache_path("fashion_mnist", "test", "ab" * 32, 64),
        fmnist.stats_cache_path("mnist", "test", "ab" * 32, 32),
    }
    assert p not in others and len(others) == 4
    with pytest.raises(ValueError):
        fmnist.stats_cache_path("fashion_mnist", "../x", "ab", 32)
    assert "decodelab" not in str(p.relative_to(default_cache_dir()))  # nothing inside the package


def test_reference_statistics_are_cached(fake_root: Path, monkeypatch: pytest.MonkeyPatch):
    m = tiny()
    mu, sigma = fmnist.reference_statistics("test", m, root=fake_root)
    path = fmnist.stats_cache_path("fashion_mnist", "test", fmnist.weights_sha256(m), 32)
    assert path.is_file() and mu.shape == (16,) and sigma.shape == (16, 16)
    monkeypatch.setattr(fmnist, "features", lambda *a, **k: pytest.fail("recomputed despite the cache"))
    mu2, sigma2 = fmnist.reference_statistics("test", m, root=fake_root)
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)


def test_domain_fid_and_noise_floor(fake_root: Path):
    m = tiny()
    images, labels = load_fashion_mnist("train", fake_root)
    assert fmnist.domain_fid(images, images, m) == pytest.approx(0.0, abs=1e-8)
    floor = fmnist.noise_floor_fid(20, seed=0, classifier=m, root=fake_root)
    assert np.isfinite(floor) and floor > 0
    assert floor == fmnist.noise_floor_fid(20, seed=0, classifier=m, root=fake_root)
    with pytest.raises(ValueError):
        fmnist.noise_floor_fid(1000, classifier=m, root=fake_root)
    assert 0.0 <= fmnist.class_accuracy(images, labels, m) <= 1.0
    with pytest.raises(ValueError, match="unknown Fashion-MNIST class"):
        fmnist.class_accuracy(images[:1], ["Hat"], m)


# -------------------------------------------------------------------------------------- training
@needs_data
def test_train_classifier_loss_decreases(tmp_path: Path):
    from decodelab.train.classifier import train_classifier

    res = train_classifier(
        tmp_path / "run", steps=30, batch_size=32, lr=3e-3, seed=0, warmup=3, num_train=512, num_test=256,
        log_every=10, verbose=False, model={"channels": [8, 16], "feature_dim": 32}, noise_floor_n=[50, 10**6],
        noise_floor_seeds=2,
    )  # fmt: skip
    assert len(res.losses) == 30
    assert np.mean(res.losses[-5:]) < np.mean(res.losses[:5])
    card = json.loads((tmp_path / "run" / "card.json").read_text())
    for key in ("config", "data", "steps", "wall_time_s", "seed", "metrics", "command"):
        assert key in card
    assert card["data"]["num_train"] == 512
    assert card["metrics"]["test_accuracy"] == pytest.approx(res.metrics["test_accuracy"], abs=1e-4)
    assert (tmp_path / "run" / "card.md").is_file()
    loaded = fmnist.load_classifier(tmp_path / "run")
    assert loaded.weights_sha256 == card["weights_sha256"]
    floor = card["fid_noise_floor (fmnist features)"]
    assert len(floor["n=50"]["per_seed"]) == 2 and "skipped" in floor["n=1000000"]
    # The card's noise floor is noise_floor_fid of the saved model (reference = the card's test images).
    test_images, _ = load_fashion_mnist("test")
    ref = feature_statistics(fmnist.features(test_images[:256], loaded))
    train_images, _ = load_fashion_mnist("train")
    sub = fmnist.features(train_images[:512][fmnist.subset_indices(512, 50, 1)], loaded)
    value = frechet_distance(*feature_statistics(sub), *ref)
    assert value == pytest.approx(floor["n=50"]["per_seed"][1], abs=1e-3)


def test_training_config_file_loads():
    from decodelab.train.classifier import load_classifier_config

    path = Path(__file__).resolve().parents[2] / "configs" / "embedded" / "fmnist-classifier.yaml"
    cfg = load_classifier_config(path, ["steps=7"])
    assert cfg.task == "classifier" and cfg.steps == 7 and cfg.threads == 1
    with pytest.raises(ValueError, match="unknown"):
        load_classifier_config(path, ["stepz=7"])


# ------------------------------------------------------------------------------ shipped classifier
@needs_shipped
def test_shipped_classifier_on_real_test_images():
    images, labels = load_fashion_mnist("test")
    pil = [Image.fromarray(np.pad(im, 2)).convert("RGB") for im in images[:48]]  # like generated 32x32 RGB
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = fmnist.evaluate_generated(pil, [int(c) for c in labels[:48]])
    assert scores[fmnist.ACCURACY_KEY] >= 0.8
    assert np.isfinite(scores[fmnist.FID_KEY]) and scores[fmnist.FID_KEY] >= 0
    wrong = fmnist.evaluate_generated(pil, [(int(c) + 1) % 10 for c in labels[:48]])
    assert wrong[fmnist.ACCURACY_KEY] <= 0.2
    # The domain dispatcher routes fmnist pipelines here.
    from decodelab.eval.domain import evaluate_generated as domain_evaluate

    pipe = SimpleNamespace(info={"world": "fashion_mnist"})
    assert domain_evaluate(pipe, pil, [int(c) for c in labels[:48]]) == scores


def test_reference_statistics_fall_back_to_the_shipped_ones_without_data(monkeypatch) -> None:
    from decodelab.eval import fmnist

    try:
        model = fmnist.load_classifier()
    except FileNotFoundError:
        pytest.skip("shipped classifier not installed")
    shipped = fmnist.shipped_statistics_path("test", fmnist.weights_sha256(model))
    if not shipped.is_file():
        pytest.skip("no shipped statistics")

    def absent(*a, **k):
        raise FileNotFoundError("no Fashion-MNIST here")

    monkeypatch.setattr(fmnist, "load_fashion_mnist", absent)
    mu, sigma = fmnist.reference_statistics("test", model)
    assert mu.shape == (sigma.shape[0],) and np.isfinite(sigma).all()
    with np.load(shipped) as z:
        assert np.array_equal(mu, z["mu"])
