"""Paired deraining loaders on tiny folders of each standard layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from decodelab.datasets.rain import RainPairs, detect_layout, find_rain_pairs


def _img(path: Path, value: int, size: tuple[int, int] = (12, 10)) -> None:
    """A small image whose pixels all equal ``value`` (lets a test check which file was paired)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, dtype=np.uint8)).save(path)


def _check(ds: RainPairs, expect: dict[str, tuple[int, int]]) -> None:
    """``expect``: rainy file name -> (rainy value, clean value)."""
    assert sorted(ds.names) == sorted(expect)
    for i, name in enumerate(ds.names):
        rain, clean = ds[i]
        assert rain.shape == clean.shape and rain.shape[0] == 3
        assert round(float(rain[0, 0, 0]) * 255) == expect[name][0]
        assert round(float(clean[0, 0, 0]) * 255) == expect[name][1]


def test_jorder_layout(tmp_path) -> None:
    d = tmp_path / "rain_heavy_test"
    for i in (1, 2):
        _img(d / f"rain-{i:03d}.png", 10 * i)
        _img(d / f"norain-{i:03d}.png", 100 + i)
    assert detect_layout(d) == "jorder"
    _check(RainPairs(d), {"rain-001.png": (10, 101), "rain-002.png": (20, 102)})


def test_rain200l_layout_train_and_x2_test(tmp_path) -> None:
    d = tmp_path / "Rain200L"
    _img(d / "norain" / "norain-1.png", 201)
    _img(d / "norain" / "norain-2.png", 202)
    _img(d / "rain" / "norain-1x2.png", 11)
    _img(d / "rain" / "X2" / "norain-2x2.png", 22)
    assert detect_layout(d) == "rain200l"
    _check(RainPairs(d, split="train"), {"norain-1x2.png": (11, 201)})
    _check(RainPairs(d, split="test"), {"norain-2x2.png": (22, 202)})


def test_prenet_layouts(tmp_path) -> None:
    old = tmp_path / "Rain100H"
    _img(old / "rainy" / "rain-001.png", 5)
    _img(old / "norain-001.png", 105)  # PReNet keeps the clean images beside rainy/
    _check(RainPairs(old), {"rain-001.png": (5, 105)})
    mcw = tmp_path / "Rain100H_old"
    _img(mcw / "rainy" / "rain-7.png", 7)
    _img(mcw / "norain" / "norain-7.png", 107)  # MCW-Net's rain100h_old: norain/no<name>
    _check(RainPairs(mcw), {"rain-7.png": (7, 107)})
    r12 = tmp_path / "Rain12"
    for i in (1, 2):
        _img(r12 / "rainy" / f"{i}.png", i)
        _img(r12 / "groundtruth" / f"{i}.png", 50 + i)
    assert detect_layout(r12) == "prenet"
    _check(RainPairs(r12), {"1.png": (1, 51), "2.png": (2, 52)})


def test_input_target_layout(tmp_path) -> None:
    d = tmp_path / "Rain13K"
    _img(d / "input" / "1.png", 30)
    _img(d / "target" / "1.png", 130)
    assert detect_layout(d) == "input_target"
    _check(RainPairs(d), {"1.png": (30, 130)})


def test_rain1400_layout(tmp_path) -> None:
    d = tmp_path / "Rain1400"
    _img(d / "ground_truth" / "901.jpg", 200)
    for k in (1, 14):
        _img(d / "rainy_image" / f"901_{k}.jpg", 40 + k)
    pairs = find_rain_pairs(d)
    assert [(p.rain.name, p.clean.name) for p in pairs] == [("901_1.jpg", "901.jpg"), ("901_14.jpg", "901.jpg")]
    assert detect_layout(d) == "rain1400" and len(RainPairs(d)) == 2


def test_spa_txt_list(tmp_path) -> None:
    d = tmp_path / "SPA"
    _img(d / "real_world" / "000" / "a_1_1.png", 60)
    _img(d / "real_world_gt" / "000" / "a_1_1.png", 160)
    lst = d / "real_world.txt"
    lst.write_text("/real_world/000/a_1_1.png /real_world_gt/000/a_1_1.png\n\n")
    assert detect_layout(lst) == "spa"
    _check(RainPairs(lst, split="train"), {"a_1_1.png": (60, 160)})
    (d / "bad.txt").write_text("only_one_path.png\n")
    with pytest.raises(ValueError, match="rain_path gt_path"):
        find_rain_pairs(d / "bad.txt")


def test_named_dataset_from_env_and_data_dir(tmp_path, monkeypatch) -> None:
    root = tmp_path / "data"
    d = root / "rain" / "Rain200H" / "rain_heavy_test"
    _img(d / "rain-1.png", 1)
    _img(d / "norain-1.png", 2)
    monkeypatch.setenv("DECODELAB_DATA", str(root))
    assert RainPairs("Rain200H", split="test").pairs[0].rain == d / "rain-1.png"
    assert RainPairs("rain200h", split="test").names == ["rain-1.png"]  # names are case-insensitive
    other = tmp_path / "elsewhere"
    _img(other / "Rain200H" / "test" / "input" / "x.png", 3)
    _img(other / "Rain200H" / "test" / "target" / "x.png", 4)
    assert RainPairs("Rain200H", split="test", data_dir=other).names == ["x.png"]  # data_dir is searched first


def test_missing_data_errors_say_what_and_where(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DECODELAB_DATA", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError) as e:
        RainPairs("Rain200H", split="train")
    msg = str(e.value)
    assert "rain_data_train_Heavy" in msg and "icst.pku.edu.cn" in msg and "never downloads" in msg
    with pytest.raises(FileNotFoundError, match="not a known dataset"):
        RainPairs(tmp_path / "nope")
    with pytest.raises(ValueError, match="no 'train' split"):
        RainPairs("Rain12", split="train")
    d = tmp_path / "broken"
    _img(d / "rain-1.png", 1)  # no norain-1.png
    with pytest.raises(FileNotFoundError, match="missing"):
        RainPairs(d)
    _img(tmp_path / "odd" / "x.png", 1)
    with pytest.raises(ValueError, match="no known deraining layout"):
        RainPairs(tmp_path / "odd")


def test_size_mismatch_and_multiple_of(tmp_path) -> None:
    d = tmp_path / "set"
    _img(d / "rain-1.png", 1, size=(13, 21))
    _img(d / "norain-1.png", 2, size=(13, 21))
    rain, clean = RainPairs(d, multiple_of=8)[0]
    assert rain.shape == clean.shape == (3, 8, 16) and rain.dtype == torch.float32
    _img(d / "rain-2.png", 1, size=(13, 21))
    _img(d / "norain-2.png", 2, size=(12, 21))
    with pytest.raises(ValueError, match="differ in size"):
        RainPairs(d)[1]


def test_rain_pairs_read_16_bit_images_with_the_shared_reader(tmp_path) -> None:
    """A 16-bit rain pair is scaled by 65535, not clipped to white (the reader of decodelab.datasets.sr)."""
    import numpy as np
    from PIL import Image

    from decodelab.datasets.rain import read_rgb

    arr = np.full((8, 8), 30000, dtype=np.uint16)
    path = tmp_path / "x.png"
    Image.fromarray(arr).save(path)
    x = read_rgb(path)
    assert x.shape == (3, 8, 8)
    assert abs(float(x.max()) - 30000 / 65535) < 1e-6
