"""``decodelab eval fid|geneval|clip|psnr`` and ``decodelab sample``: help texts, results and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from decodelab.cli import build_parser, main


def _help(capsys, *cmd: str) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*cmd, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_help_documents_the_protocols(capsys):
    fid = _help(capsys, "eval", "fid")
    for s in ("tf1-bilinear", "pytorch-bilinear", "pil-bicubic", "antialias-bilinear", "10 contiguous splits", "k=3",
              "VIRTUAL_imagenet256_labeled.npz", "pt_inception-2015-12-05-6726825d.pth", "torchrun"):  # fmt: skip
        assert s in fid, s
    gen = _help(capsys, "eval", "geneval")
    for s in ("score > 0.3", "> 0.9 for counting", "16 per class", "over grey", "10 colours x 3 templates",
              "0.1 margin", "mean of the 6 task scores", "evaluation_metadata.jsonl", "mask2former"):  # fmt: skip
        assert s in gen, s
    assert "100 cos" in _help(capsys, "eval", "clip") and "77 tokens" in _help(capsys, "eval", "clip")
    assert "rgb2ycbcr" in _help(capsys, "eval", "psnr")
    sample = _help(capsys, "sample")
    assert "--shard-size" in sample and "--npz" in sample and "--metrics" in sample


def test_eval_fid_on_an_adm_npz(tmp_path: Path, capsys):
    from decodelab.eval.features import create_extractor, extract_features
    from decodelab.eval.fid import fid_from_features
    from decodelab.eval.images import ImageSource

    rng = np.random.default_rng(0)
    samples = rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    ref = rng.integers(0, 120, (30, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "samples.npz", arr_0=samples)
    np.savez(tmp_path / "ref.npz", arr_0=ref)
    rc = main(["eval", "fid", "--samples", str(tmp_path / "samples.npz"), "--ref", str(tmp_path / "ref.npz"),
               "--extractor", "fmnist-classifier", "--metrics", "fid,kid,pr", "--kid-subset-size", "10",
               "--json", str(tmp_path / "copy.json")])  # fmt: skip
    assert rc == 0
    res = json.loads((tmp_path / "samples_fid_results.json").read_text())
    assert res == json.loads((tmp_path / "copy.json").read_text())
    st = res["settings"]
    assert st["extractor"] == "fmnist-classifier" and st["resize_mode"] and st["weights_sha256"]
    assert st["standard_protocol"] is False and st["num_samples"] == 20 and st["reference"]["num_images"] == 30
    assert st["options"]["kid_subset_size"] == 10 and "torch" in st["versions"]
    ext = create_extractor("fmnist-classifier")
    a = extract_features(ext, ImageSource(samples).batches(), progress=False).pool
    b = extract_features(ext, ImageSource(ref).batches(), progress=False).pool
    assert res["metrics"]["fid (fmnist-classifier features)"] == pytest.approx(fid_from_features(a, b), rel=1e-6)
    assert "fid (fmnist-classifier features):" in capsys.readouterr().out


def test_eval_fid_without_inception_weights_is_a_clear_error(tmp_path: Path, capsys):
    np.savez(tmp_path / "s.npz", arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    rc = main(["eval", "fid", "--samples", str(tmp_path / "s.npz"), "--ref", "fashion_mnist:test"])
    err = capsys.readouterr().err
    assert rc == 2 and "pt_inception-2015-12-05-6726825d.pth" in err and "weights-inception-2015-12-05" in err
    rc = main(["eval", "fid", "--samples", str(tmp_path / "s.npz"), "--ref", "mnist:all", "--input-size", "64"])
    assert rc == 2 and "efficientnet-lite0 only" in capsys.readouterr().err


def test_eval_psnr(tmp_path: Path):
    from decodelab.eval.quality import psnr, ssim

    rng = np.random.default_rng(1)
    (tmp_path / "pred" / "a").mkdir(parents=True)
    (tmp_path / "gt" / "a").mkdir(parents=True)
    values = []
    for name in ("a/x.png", "y.png"):
        t = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)
        p = np.clip(t.astype(int) + rng.integers(-8, 9, t.shape), 0, 255).astype(np.uint8)
        Image.fromarray(t).save(tmp_path / "gt" / name)
        Image.fromarray(p).save(tmp_path / "pred" / name)
        pt, tt = (torch.from_numpy(v.astype(np.float64) / 255).permute(2, 0, 1) for v in (p, t))
        values.append((float(psnr(pt, tt, y_channel=True, shave=2)), float(ssim(pt, tt, y_channel=True, shave=2))))
    rc = main(["eval", "psnr", "--pred", str(tmp_path / "pred"), "--target", str(tmp_path / "gt"), "--y-channel",
               "--shave", "2", "--ssim", "--json", str(tmp_path / "quality.json")])  # fmt: skip
    assert rc == 0
    res = json.loads((tmp_path / "quality.json").read_text())
    assert res["metrics"]["psnr_mean"] == pytest.approx(np.mean([v[0] for v in values]))
    assert res["metrics"]["ssim_mean"] == pytest.approx(np.mean([v[1] for v in values]))
    assert res["settings"]["y_channel"] and res["settings"]["shave"] == 2 and res["settings"]["num_images"] == 2
    (tmp_path / "gt" / "y.png").unlink()
    assert main(["eval", "psnr", "--pred", str(tmp_path / "pred"), "--target", str(tmp_path / "gt")]) == 2


def test_sample_writes_an_adm_npz(tmp_path: Path):
    assert main(["sample", "--model", "test-c2i", "--per-class", "1", "--out", str(tmp_path / "s"), "--shard-size",
                 "4", "--npz", str(tmp_path / "s.npz"), "--no-progress"]) == 0  # fmt: skip
    with np.load(tmp_path / "s.npz") as z:
        arr = z["arr_0"]
    assert arr.dtype == np.uint8 and arr.shape[0] == 10 and arr.shape[-1] == 3
    first = np.asarray(Image.open(tmp_path / "s" / "shard_00000" / "000000.png").convert("RGB"))
    assert np.array_equal(arr[0], first)
    rec = json.loads((tmp_path / "s" / "sample_record.json").read_text())
    assert rec["sampling_run"]["num_shards"] == 3 and rec["sampling_run"]["settings"]["conditions"] == list(range(10))


def test_eval_vq_reports_the_shared_psnr(tmp_path) -> None:
    """``eval vq`` scores the shipped tokenizer with decodelab.eval.quality.psnr (the one PSNR)."""
    from decodelab.datasets.fashion_mnist import load_fashion_mnist

    try:
        load_fashion_mnist("test")
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")
    out = tmp_path / "vq.json"
    assert main(["eval", "vq", "--model", "fmnist-c2i", "--num-images", "16", "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["num_images"] == 16 and 25.0 < rec["psnr_db_mean_per_image"] < 40.0
    assert rec["psnr_db_of_mean_mse"] <= rec["psnr_db_mean_per_image"] + 1e-9  # Jensen: log of the mean MSE
