"""derain(): tiles with blended overlaps, self-ensemble, input types, model loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from decodelab.derain import derain, load_derainer, test_mcwnet
from decodelab.derain.infer import _ramp, tile_starts


class _Pointwise(nn.Module):
    """A purely local derainer: any tiling must reproduce its whole-image output exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return x + 0.1 * torch.tanh(self.conv(x))


class _Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return x * 0.5 + self.w


def test_tile_starts_cover_with_overlap() -> None:
    for size, tile, ov in [(100, 32, 8), (512, 512, 32), (513, 512, 32), (3000, 512, 32), (40, 64, 8)]:
        starts = tile_starts(size, tile, ov)
        t = min(tile, size)
        covered = torch.zeros(size, dtype=torch.bool)
        for s in starts:
            covered[s : s + t] = True
        assert covered.all() and starts[-1] + t == size
        assert all(b - a <= tile - ov for a, b in zip(starts, starts[1:]))  # overlap >= ov
    with pytest.raises(ValueError):
        tile_starts(100, 32, 32)


def test_ramp_is_one_at_image_borders() -> None:
    w = _ramp(10, 4, ramp_start=False, ramp_end=True)
    assert w[0] == 1 and w[-1] < 0.25 and (w > 0).all()


def test_tiled_equals_whole_image_exactly_for_a_local_model() -> None:
    torch.manual_seed(0)
    model = _Pointwise()
    x = torch.rand(3, 70, 95)
    whole = derain(model, x, tile=None)
    tiled = derain(model, x, tile=32, overlap=8)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-6)


def test_tiled_close_to_whole_image_for_mcwnet() -> None:
    """MCW-Net sees different context per tile (receptive field, SE pooling, regions): close, not equal."""
    torch.manual_seed(0)
    model = test_mcwnet().eval()
    x = torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(3))
    whole = derain(model, x, tile=None)
    tiled = derain(model, x, tile=32, overlap=16)
    diff = (tiled - whole).abs()
    assert diff.max() < 0.05 and diff.mean() < 5e-3
    assert diff.max() > 0  # the tiles really ran separately


def test_tiles_run_one_at_a_time_and_ensemble_flips() -> None:
    m = _Counting()
    derain(m, torch.rand(3, 40, 50), tile=32, overlap=8, self_ensemble=True)
    assert set(m.shapes) == {(1, 3, 32, 32)} and len(m.shapes) == 2 * 2 * 2  # 2x2 tiles, 2 passes each
    torch.manual_seed(0)
    model = test_mcwnet().eval()
    x = torch.rand(3, 16, 24)
    ens = derain(model, x, tile=None, self_ensemble=True)
    with torch.no_grad():
        ref = ((model(x[None]) + model(x[None].flip(-1)).flip(-1)) / 2).clamp(0, 1)[0]
    torch.testing.assert_close(ens, ref)
    # the flipped input gives the flipped output (the ensemble is flip-equivariant)
    torch.testing.assert_close(derain(model, x.flip(-1), tile=None), ens.flip(-1), rtol=0, atol=1e-6)


def test_input_kinds_round_trip(tmp_path) -> None:
    model = _Pointwise()
    arr = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    out = derain(model, arr)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (20, 30, 3)
    pil = derain(model, Image.fromarray(arr))
    assert isinstance(pil, Image.Image) and np.array_equal(np.asarray(pil), out)
    Image.fromarray(arr).save(tmp_path / "a.png")
    assert np.array_equal(np.asarray(derain(model, tmp_path / "a.png")), out)
    batch = derain(model, torch.rand(2, 3, 9, 9))
    assert batch.shape == (2, 3, 9, 9) and 0 <= batch.min() and batch.max() <= 1
    with pytest.raises(ValueError, match="RGB"):
        derain(model, torch.rand(1, 9, 9))
    with pytest.raises(ValueError, match="tile"):
        derain(model, torch.rand(3, 9, 9), tile=4)


def test_model_mode_is_restored() -> None:
    m = test_mcwnet().train()
    derain(m, torch.rand(3, 8, 8))
    assert m.training


def test_load_derainer(tmp_path, monkeypatch) -> None:
    import decodelab.assets

    monkeypatch.setattr(decodelab.assets, "ASSETS_DIR", tmp_path / "no_assets")  # as if not shipped yet
    with pytest.raises(FileNotFoundError, match="configs/mcwnet/synthetic-small.yaml"):
        load_derainer()
    with pytest.raises(FileNotFoundError, match="without trained weights"):
        load_derainer("test_mcwnet")
    m = test_mcwnet()
    m.save_pretrained(tmp_path / "d")
    loaded = load_derainer(tmp_path / "d")
    assert type(loaded).__name__ == "MCWNet" and not loaded.training


def test_a_16_bit_pil_image_is_scaled_not_clipped() -> None:
    """``derain`` on an in-memory 16-bit PIL image reads it like the file reader does (not as white)."""
    import numpy as np
    from PIL import Image

    from decodelab.derain.infer import _to_batch

    im = Image.fromarray(np.full((6, 5), 20000, dtype=np.uint16))
    x, kind = _to_batch(im)
    assert kind == "pil" and x.shape == (1, 3, 6, 5)
    assert abs(float(x.max()) - 20000 / 65535) < 1e-6
