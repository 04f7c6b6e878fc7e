"""A tiny paired deraining folder (JORDER layout) shared by the training and CLI tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from decodelab.derain.synth import add_rain


def write_rain_folder(folder: Path, n: int = 4, size: int = 24, seed: int = 0) -> Path:
    """``n`` pairs ``rain-i.png`` / ``norain-i.png``: smooth random backgrounds under heavy synthetic rain."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        low = torch.rand(1, 3, 4, 4, generator=g)
        clean = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[0]
        clean = (clean * 255).round() / 255
        rainy = add_rain(clean, g, "heavy")
        for name, im in (("rain", rainy), ("norain", clean)):
            arr = (im * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            Image.fromarray(arr).save(folder / f"{name}-{i}.png")
    return folder


@pytest.fixture
def rain_folder(tmp_path: Path) -> Path:
    return write_rain_folder(tmp_path / "rainset")
