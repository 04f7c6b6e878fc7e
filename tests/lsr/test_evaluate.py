"""Evaluation helpers: protocol details (crop, shave, Y channel), throughput and peak-memory measurement."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from decodelab.datasets.sr import SRDataset
from decodelab.eval.quality import psnr, ssim
from decodelab.vision.lsr import create_lsr_model
from decodelab.vision.lsr.evaluate import (
    center_crop,
    evaluate_native,
    evaluate_sr,
    measure_peak_memory_mb,
    measure_query_throughput,
)


def test_native_and_sr_protocols() -> None:
    torch.manual_seed(0)
    model = create_lsr_model("test_gblsr_sr").eval()
    img = torch.rand(3, 30, 26, generator=torch.Generator().manual_seed(1))
    res = evaluate_native(model, [img], ["a"], crop=20)
    x = center_crop(img, 20).unsqueeze(0)
    with torch.no_grad():
        rec = model.render(x, (20, 20))
    assert res["psnr"] == pytest.approx(float(psnr(rec, x)[0])) and res["ssim"] == pytest.approx(float(ssim(rec, x)[0]))
    sample = SRDataset(None, None, 3.0, ["b"], [img])[0]
    out = evaluate_sr(model, [sample])
    with torch.no_grad():
        pred = model.render(sample.lr.unsqueeze(0), tuple(sample.hr.shape[-2:]))
    ref = float(psnr(pred, sample.hr.unsqueeze(0), y_channel=True, shave=3)[0])
    assert out["psnr_y"] == pytest.approx(ref) and out["per_image"][0]["size"] == [30, 24]
    assert math.isfinite(out["ssim_y"]) and out["psnr_rgb"] != out["psnr_y"]


def test_throughput_reports_positive_rates() -> None:
    model = create_lsr_model("test_liif")
    r = measure_query_throughput(model, torch.rand(3, 12, 12), num_queries=500, repeats=2)
    assert r["queries_per_s"] > 0 and r["query_s"] > 0 and r["encode_s"] > 0 and r["num_queries"] == 500
    assert model.training  # the mode is restored


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux-only")
def test_peak_memory_sees_the_allocations() -> None:
    junk = torch.randn(5_000_000)  # leave freed heap behind: it must not hide the child's allocations
    del junk
    big = measure_peak_memory_mb(lambda: torch.ones(20_000_000).sum())  # 76 MiB
    small = measure_peak_memory_mb(lambda: torch.ones(1_000_000).sum())  # 4 MiB
    assert big is not None and small is not None
    # the child's own baseline (interpreter + torch) varies with the machine; the 72 MiB difference does not
    assert 60 < big - small < 110 and small < 80
