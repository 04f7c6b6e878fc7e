"""The curated wallpaper photos: fixed disjoint split, verification, clear errors without the packages."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from decodelab.datasets import wallpapers as wp
from decodelab.datasets.photos import BundledPhotos, list_photos, load_photo

INSTALLED = not wp.missing_packages()
needs_packages = pytest.mark.skipif(
    not INSTALLED, reason=f"wallpaper packages not installed: {wp.install_command()} (as .ci/run does)"
)


def test_split_is_fixed_disjoint_and_complete():
    train, val = wp.list_wallpapers("train"), wp.list_wallpapers("val")
    assert val == ["mate-greenmeadow", "plasma-coldripple", "plasma-darkesthour", "plasma-eveningglow"]
    assert len(train) == 19 and not set(train) & set(val)
    assert sorted(train + val) == sorted(wp.list_wallpapers("all"))
    # the rule, not a list: the split follows the recorded content hashes
    for w in wp.WALLPAPERS:
        assert (w.name in val) == (int(w.sha256[:8], 16) % 5 == 0)
    # the photo registry exposes the same splits, and keeps the bundled photos apart
    assert list_photos("wallpapers-train") == train and list_photos("wallpapers-val") == val
    assert not set(list_photos("all")) & set(wp.list_wallpapers("all"))


def test_list_is_well_formed():
    names = [w.name for w in wp.WALLPAPERS]
    assert len(set(names)) == len(names) == 23
    assert len({w.sha256 for w in wp.WALLPAPERS}) == 23
    assert set(wp.WALLPAPER_PACKAGES) == {"mate-backgrounds", "plasma-workspace-wallpapers"}
    for w in wp.WALLPAPERS:
        assert len(w.sha256) == 16 and w.license and w.author and not w.path.startswith("/")


def test_missing_package_names_the_install_command(tmp_path):
    assert wp.missing_packages(tmp_path) == ["mate-backgrounds", "plasma-workspace-wallpapers"]
    with pytest.raises(FileNotFoundError, match="apt-get install -y mate-backgrounds"):
        wp.load_wallpaper("mate-aqua", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="apt-get install -y plasma-workspace-wallpapers"):
        wp.load_wallpaper("plasma-path", root=tmp_path)


def test_environment_root_and_verification(tmp_path, monkeypatch):
    w = next(x for x in wp.WALLPAPERS if x.name == "mate-aqua")
    path = tmp_path / w.path
    path.parent.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(path)
    monkeypatch.setenv("DECODELAB_WALLPAPER_ROOT", str(tmp_path))
    assert wp.find_wallpaper_root() == tmp_path
    assert wp.missing_packages() == ["mate-backgrounds", "plasma-workspace-wallpapers"]  # one file is not a package
    with pytest.raises(ValueError, match="does not match the curated photo"):
        wp.load_wallpaper("mate-aqua")
    img = wp.load_wallpaper("mate-aqua", verify=False, max_side=30)
    assert img.shape == (20, 30, 3) and img.dtype == np.uint8 and not img.flags.writeable
    assert hashlib.sha256(path.read_bytes()).hexdigest()[:16] != w.sha256


def test_errors():
    with pytest.raises(ValueError, match="unknown wallpaper split"):
        wp.list_wallpapers("test")
    with pytest.raises(ValueError, match="unknown wallpaper photo"):
        wp.load_wallpaper("mate-lena")
    with pytest.raises(ValueError, match="max_side"):
        wp.load_wallpaper("mate-aqua", max_side=4)


@needs_packages
def test_installed_photos_load_verified_and_reduced():
    for name in wp.list_wallpapers("val"):
        img = load_photo(name)  # through the photo registry the trainers use
        assert img.dtype == np.uint8 and img.shape[2] == 3 and max(img.shape[:2]) == wp.DEFAULT_MAX_SIDE, name
        assert min(img.shape[:2]) >= 700 and img.std() > 5, name
    ds = BundledPhotos("wallpapers-val", multiple_of=32)
    x = ds[0]
    assert x.shape[0] == 3 and x.shape[1] % 32 == 0 and x.shape[2] % 32 == 0 and 0 <= x.min() and x.max() <= 1


def test_embedded_restoration_configs_train_on_the_wallpaper_split(monkeypatch):
    """The three restoration defaults train on ``wallpapers-train``; the held-out test photos are the bundled ones."""
    from pathlib import Path

    import torch

    from decodelab.derain import synth
    from decodelab.train import load_train_config
    from decodelab.train.derain import _train_data, heldout_pairs

    root = Path(__file__).resolve().parents[2] / "configs" / "embedded"
    for name in ("lsr-sr-small", "gblsr-native-small"):
        cfg = load_train_config(root / f"{name}.yaml")
        assert (cfg.data.name, cfg.data.train_split, cfg.data.eval_split) == ("bundled", "wallpapers-train",
                                                                             "wallpapers-val")  # fmt: skip
    seen = []
    monkeypatch.setattr(synth, "_photos", lambda split: seen.append(split) or (["p"], [torch.rand(3, 160, 160)]))
    cfg = load_train_config(root / "mcwnet-small-synthetic.yaml")
    _train_data(cfg)
    heldout_pairs(cfg)
    assert seen == ["wallpapers-train", "test"]
