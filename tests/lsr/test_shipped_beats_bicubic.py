"""``decodelab upscale``'s default model beats bicubic at x4 on a photograph it has never seen.

The photo is a bundled held-out photo (``coffee``, scikit-image's test split: never used to train
or select any shipped model). It is down-sampled x4 with the MATLAB-style bicubic kernel, written as
a PNG, up-sampled back by the ``upscale`` command with its default model and by bicubic
interpolation of the same PNG, and both are compared with the original in RGB PSNR.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from decodelab.assets import ASSETS_DIR
from decodelab.cli import main
from decodelab.cli.lsr import DEFAULT_MODELS
from decodelab.datasets.photos import BundledPhotos
from decodelab.datasets.sr import make_lr, read_image
from decodelab.eval.quality import psnr
from decodelab.vision.lsr.evaluate import BicubicBaseline

ASSET = ASSETS_DIR / DEFAULT_MODELS["upscale"]
PHOTO, SCALE = "coffee", 4


def _save_png(img: torch.Tensor, path) -> None:
    arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(arr).save(path)


@pytest.mark.skipif(not (ASSET / "config.json").is_file(), reason=f"{ASSET} is not shipped in this installation")
def test_upscale_default_beats_bicubic_x4_on_a_held_out_photo(tmp_path) -> None:
    photos = BundledPhotos("test")
    assert PHOTO in photos.names  # held out: never in a training split
    hr, lr = make_lr(photos[photos.names.index(PHOTO)], SCALE)  # [3, 400, 600], [3, 100, 150]
    _save_png(lr, tmp_path / "lr.png")
    lr = read_image(tmp_path / "lr.png")  # what the user's file holds (8-bit)
    out = tmp_path / "up.png"
    assert main(["upscale", str(tmp_path / "lr.png"), "--scale", str(SCALE), "--out", str(out), "--threads", "1"]) == 0
    up = read_image(out)
    bicubic = BicubicBaseline().render(lr[None], tuple(hr.shape[-2:]))[0]
    assert up.shape == hr.shape == bicubic.shape
    p_model, p_bicubic = float(psnr(up[None], hr[None])), float(psnr(bicubic[None], hr[None]))
    assert p_model > p_bicubic, f"upscale x{SCALE}: {p_model:.2f} dB, bicubic {p_bicubic:.2f} dB"
