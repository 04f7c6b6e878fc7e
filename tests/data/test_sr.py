"""SR dataset loaders on tiny folders of the real layouts, path resolution, and the training samplers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from decodelab.datasets.resize import imresize
from decodelab.datasets.sr import (
    NativeCropSampler,
    SRImplicitSampler,
    find_sr_root,
    load_sr_dataset,
    make_lr,
    read_image,
)


def _png(path, h: int, w: int, seed: int = 0, grey: bool = False) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w) if grey else (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def test_benchmark_layout_pairs_hr_and_lr(tmp_path) -> None:
    root = tmp_path / "Set5"
    _png(root / "HR" / "baby.png", 21, 17, 0)
    _png(root / "HR" / "bird.png", 12, 12, 1, grey=True)
    lr_baby = _png(root / "LR_bicubic" / "X2" / "babyx2.png", 10, 8, 2)
    _png(root / "LR_bicubic" / "X2" / "birdx2.png", 6, 6, 3)
    ds = load_sr_dataset("set5", scale=2, data_dir=tmp_path)
    assert ds.names == ["baby", "bird"] and ds.info["layout"] == "HR + LR_bicubic"
    s = ds[0]
    assert s.hr.shape == (3, 20, 16) and s.lr.shape == (3, 10, 8)  # HR cropped to 2 x LR
    assert torch.equal((s.lr * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(lr_baby))
    assert ds[1].hr.shape == (3, 12, 12)  # grey -> 3 channels
    # a scale without LR files falls back to generated LR images
    ds3 = load_sr_dataset("Set5", scale=3, data_dir=tmp_path)
    assert ds3[0].lr.shape == (3, 7, 5) and ds3[0].hr.shape == (3, 21, 15)
    assert load_sr_dataset("set5", data_dir=tmp_path / "Set5")[0].lr is None  # the set's own folder works too


def test_flat_and_selfexsr_layouts(tmp_path) -> None:
    hr = _png(tmp_path / "Kodak" / "kodim01.png", 16, 24, 4)
    ds = load_sr_dataset("kodak", scale=4, data_dir=tmp_path)
    s = ds[0]
    assert ds.info["layout"] == "flat (LR generated)" and s.name == "kodim01"
    ref = imresize(torch.from_numpy(hr).permute(2, 0, 1).float() / 255, size=(4, 6)).clamp(0, 1)
    torch.testing.assert_close(s.lr, ref)
    srf = tmp_path / "Set14" / "image_SRF_3"
    _png(srf / "img_001_SRF_3_HR.png", 12, 15, 5)
    _png(srf / "img_001_SRF_3_LR.png", 4, 5, 6)
    ds = load_sr_dataset("set14", scale=3, data_dir=tmp_path)
    assert ds.names == ["img_001"] and ds[0].lr.shape == (3, 4, 5) and ds[0].hr.shape == (3, 12, 15)


def test_div2k_layout_and_env_var(tmp_path, monkeypatch) -> None:
    root = tmp_path / "data" / "sr" / "DIV2K"
    _png(root / "DIV2K_valid_HR" / "0801.png", 18, 24, 7)
    _png(root / "DIV2K_valid_LR_bicubic" / "X3" / "0801x3.png", 6, 8, 8)
    _png(root / "DIV2K_train_HR" / "0001.png", 9, 9, 9)
    monkeypatch.setenv("DECODELAB_DATA", str(tmp_path / "data"))
    ds = load_sr_dataset("div2k", scale=3)  # found through $DECODELAB_DATA/sr/DIV2K
    assert ds.names == ["0801"] and ds[0].lr.shape == (3, 6, 8)
    assert load_sr_dataset("div2k", split="train").names == ["0001"]
    with pytest.raises(ValueError, match="split"):
        load_sr_dataset("div2k", split="test")


def test_missing_and_unreadable_data_are_clear_errors(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DECODELAB_DATA", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"DECODELAB_DATA/sr/Urban100"):
        load_sr_dataset("urban100")
    with pytest.raises(FileNotFoundError):
        find_sr_root("b100", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown SR dataset"):
        load_sr_dataset("set99")
    bad = tmp_path / "B100" / "HR" / "broken.png"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="could not read"):
        load_sr_dataset("b100", data_dir=tmp_path)[0]
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "none.png")


def test_bundled_set_and_non_integer_scale() -> None:
    ds = load_sr_dataset("bundled", scale=4)
    assert len(ds) == 5 and ds.names[0] == "astronaut"  # the fixed test split
    s = ds[0]
    assert s.hr.shape == (3, 512, 512) and s.lr.shape == (3, 128, 128)
    hr, lr = make_lr(torch.rand(3, 50, 40), 3.7)
    assert lr.shape == (3, 13, 10) and hr.shape == (3, 48, 37)  # floor(50/3.7)=13, round(13*3.7)=48
    with pytest.raises(ValueError, match="too small"):
        make_lr(torch.rand(3, 3, 3), 4)


def test_sr_sampler_follows_liif_and_is_deterministic() -> None:
    img = (torch.rand(3, 60, 70, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    sampler = SRImplicitSampler([img], inp_size=8, scale_min=1.0, scale_max=4.0, sample_q=None)
    for seed in range(4):
        out = sampler.sample(0, torch.Generator().manual_seed(seed))
        n = out["gt"].shape[0]
        side = int(round(n**0.5))
        assert out["inp"].shape == (3, 8, 8) and side * side == n and 8 <= side <= 32
        assert out["coord"].abs().max() < 1 and torch.allclose(out["cell"], torch.full((n, 2), 2 / side))
        hr = out["gt"].t().reshape(3, side, side)  # all pixels, row-major
        # the LR input is the bicubic reduction of exactly this (flipped/transposed) HR crop
        torch.testing.assert_close(out["inp"], imresize(hr, size=(8, 8)).clamp(0, 1), rtol=0, atol=1e-5)
    a = SRImplicitSampler([img], 8, sample_q=20).batch([0, 0], torch.Generator().manual_seed(5))
    b = SRImplicitSampler([img], 8, sample_q=20).batch([0, 0], torch.Generator().manual_seed(5))
    assert a["coord"].shape == (2, 20, 2) and all(torch.equal(a[k], b[k]) for k in a)


def test_native_sampler_targets_are_the_input_pixels() -> None:
    img = torch.rand(3, 20, 30)
    out = NativeCropSampler([img], crop=16, sample_q=10).sample(0, torch.Generator().manual_seed(1))
    assert out["inp"].shape == (3, 16, 16) and out["gt"].shape == (10, 3)
    iy = ((out["coord"][:, 0] + 1) * 8 - 0.5).round().long()
    ix = ((out["coord"][:, 1] + 1) * 8 - 0.5).round().long()
    torch.testing.assert_close(out["gt"], out["inp"][:, iy, ix].t())
    small = NativeCropSampler([torch.rand(3, 10, 12)], crop=16).sample(0, torch.Generator().manual_seed(0))
    assert small["inp"].shape == (3, 16, 16)  # images smaller than the crop are up-sampled first


def test_native_sampler_downscale_reduces_a_larger_region() -> None:
    # a horizontal ramp: a crop at scale z spans 16 / z source columns, so its slope is 1 / z times steeper
    img = torch.linspace(0, 1, 400).expand(3, 120, 400).contiguous()
    fixed = NativeCropSampler([img], crop=16, augment=False, downscale=(0.5, 0.5))
    out = fixed.sample(0, torch.Generator().manual_seed(3))
    assert out["inp"].shape == (3, 16, 16)
    slope = float((out["inp"][0, 8, -2] - out["inp"][0, 8, 1]) / 13)
    assert slope == pytest.approx(2 / 399, rel=0.02)
    # the patch is the MATLAB-bicubic reduction of a 32 px square of the image
    left = int(round(float(out["inp"][0, 0, 0] - 0.5 / 399) * 399))
    region = img[:, :32, left : left + 32]
    torch.testing.assert_close(out["inp"][:, :, 2:-2], imresize(region, size=(16, 16)).clamp(0, 1)[:, :, 2:-2],
                               rtol=0, atol=2e-3)  # fmt: skip
    # (1, 1) keeps GB-LSR's recipe: the same crops from the same generator state as before the option
    plain = NativeCropSampler([img], crop=16, sample_q=10).sample(0, torch.Generator().manual_seed(1))
    same = NativeCropSampler([img], crop=16, sample_q=10, downscale=(1, 1)).sample(0, torch.Generator().manual_seed(1))
    assert all(torch.equal(plain[k], same[k]) for k in plain)
    with pytest.raises(ValueError, match="downscale"):
        NativeCropSampler([img], crop=16, downscale=(0.5, 1.5))
