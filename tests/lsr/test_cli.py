"""``decodelab upscale`` / ``reconstruct`` / ``eval lsr`` end to end with tiny random models, and tiling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from decodelab.cli import main
from decodelab.vision.lsr import DEFAULT_CHUNK, create_lsr_model
from decodelab.vision.lsr.render import receptive_radius, render_tiled


@pytest.fixture
def image(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (13, 17, 3), dtype=np.uint8)
    path = tmp_path / "in.png"
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def sr_dir(tmp_path):
    torch.manual_seed(0)
    return create_lsr_model("test_gblsr_sr").save_pretrained(tmp_path / "sr")


def test_upscale_any_float_scale_and_size(image, sr_dir, tmp_path, capsys) -> None:
    out = tmp_path / "up.png"
    assert main(["upscale", str(image), "--scale", "3.7", "--out", str(out), "--model", str(sr_dir)]) == 0
    assert Image.open(out).size == (63, 48)  # round(17 * 3.7) x round(13 * 3.7)
    assert "x3.7" in capsys.readouterr().out
    assert main(["upscale", str(image), "--size", "40x30", "--out", str(out), "--model", str(sr_dir),
                 "--chunk", "7", "--tile", "5"]) == 0  # fmt: skip
    assert Image.open(out).size == (40, 30)
    assert main(["upscale", str(image), "--scale", "0.5", "--out", str(out), "--model", str(sr_dir)]) == 0
    assert Image.open(out).size == (8, 6)  # down-sampling is a query like any other (round(6.5) = 6)


def test_upscale_accepts_an_upstream_checkpoint_file(image, tmp_path) -> None:
    model = create_lsr_model("test_gblsr_sr")
    save_file(model.state_dict(), str(tmp_path / "gblsr.safetensors"))
    out, ckpt = tmp_path / "o.png", str(tmp_path / "gblsr.safetensors")
    assert main(["upscale", str(image), "--scale", "2", "--out", str(out), "--model", ckpt]) == 0
    assert Image.open(out).size == (34, 26)


def test_bad_input_is_refused_clearly(image, sr_dir, tmp_path, capsys, monkeypatch) -> None:
    out = str(tmp_path / "o.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"no image here")
    cases = [
        (["upscale", str(bad), "--scale", "2", "--out", out, "--model", str(sr_dir)], "could not read"),
        (["upscale", str(tmp_path / "missing.png"), "--scale", "2", "--out", out, "--model", str(sr_dir)], "not found"),
        (["upscale", str(image), "--scale", "0", "--out", out, "--model", str(sr_dir)], "positive"),
        (["upscale", str(image), "--scale", "-3", "--out", out, "--model", str(sr_dir)], "positive"),
        (["upscale", str(image), "--scale", "nan", "--out", out, "--model", str(sr_dir)], "positive"),
        (["upscale", str(image), "--out", out, "--model", str(sr_dir)], "exactly one"),
        (["upscale", str(image), "--size", "12", "--out", out, "--model", str(sr_dir)], "WIDTHxHEIGHT"),
        (["upscale", str(image), "--size", "100000x90000", "--out", out, "--model", str(sr_dir)], "MP limit"),
        (["upscale", str(image), "--scale", "2", "--out", out, "--model", str(tmp_path / "nope")], "neither"),
        (["upscale", str(image), "--scale", "2", "--out", str(tmp_path / "o.xyz"), "--model", str(sr_dir)],
         "could not write"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    import decodelab.assets

    monkeypatch.setattr(decodelab.assets, "ASSETS_DIR", tmp_path / "no_assets")
    assert main(["upscale", str(image), "--scale", "2", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "lsr-sr-small" in err and "decodelab train --config configs/embedded/lsr-sr-small.yaml" in err
    assert main(["reconstruct", str(image), "--out", out]) == 2
    assert "configs/embedded/gblsr-native-small.yaml" in capsys.readouterr().err


def test_reconstruct(image, tmp_path) -> None:
    model_dir = create_lsr_model("test_gblsr_native").save_pretrained(tmp_path / "native")
    out = tmp_path / "rec.png"
    assert main(["reconstruct", str(image), "--out", str(out), "--model", str(model_dir)]) == 0
    assert Image.open(out).size == (17, 13)
    assert main(["reconstruct", str(image), "--out", str(out), "--model", str(model_dir), "--size", "50x20"]) == 0
    assert Image.open(out).size == (50, 20)
    assert main(["reconstruct", str(image), "--out", str(out), "--model", str(model_dir),
                 "--max-input-pixels", "100"]) == 2  # fmt: skip


@pytest.mark.parametrize("name", ["test_gblsr_sr", "test_liif", "test_lte", "test_wire"])
def test_tiled_rendering_equals_whole_rendering(name: str) -> None:
    torch.manual_seed(1)
    model = create_lsr_model(name).eval()
    x = torch.rand(1, 3, 23, 29, generator=torch.Generator().manual_seed(2))
    whole = model.render(x, (61, 40))
    tiled = render_tiled(model, x, (61, 40), tile=6)  # 4 x 5 tiles, margins from the receptive field
    torch.testing.assert_close(tiled, whole, rtol=0, atol=2e-5)
    too_small = render_tiled(model, x, (61, 40), tile=6, margin=0)  # no context: the tile seams show
    assert (too_small - whole).abs().max() > 1e-3
    assert receptive_radius(model) > 0


def test_eval_lsr_command(tmp_path, sr_dir, capsys) -> None:
    for i in range(2):
        arr = np.random.default_rng(i).integers(0, 256, (24, 20, 3), dtype=np.uint8)
        (tmp_path / "Mini" / "HR").mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(tmp_path / "Mini" / "HR" / f"im{i}.png")
    js = tmp_path / "res.json"
    argv = ["eval", "lsr", "--model", str(sr_dir), "--data", str(tmp_path / "Mini"), "--scales", "2", "4",
            "--json", str(js)]  # fmt: skip
    assert main(argv) == 0
    res = json.loads(js.read_text())
    assert res["x2"]["num_images"] == 2 and np.isfinite(res["x4"]["psnr_y"])
    assert "PSNR-Y" in capsys.readouterr().out
    assert main(["eval", "lsr", "--model", str(sr_dir), "--data", str(tmp_path / "Mini"), "--mode", "native"]) == 0


def test_cli_chunk_default_matches_the_library() -> None:
    from decodelab.cli import lsr

    assert lsr.DEFAULT_CHUNK == DEFAULT_CHUNK


def test_shipped_defaults_run_offline(tmp_path) -> None:
    # `upscale` / `reconstruct` without --model use the shipped lsr-sr-small / gblsr-native-small,
    # trained by decodelab; they must load offline, carry a provenance card and beat trivial output.
    from decodelab.assets import ASSETS_DIR
    from decodelab.datasets.sr import load_sr_dataset
    from decodelab.eval.quality import psnr
    from decodelab.vision.lsr import load_lsr_model
    from decodelab.vision.lsr.evaluate import center_crop

    for name in ("lsr-sr-small", "gblsr-native-small"):
        card = json.loads((ASSETS_DIR / name / "card.json").read_text())
        assert card["config"]["name"] == name and "decodelab train --config" in card["command"]
    hr = center_crop(load_sr_dataset("bundled", split="test").hr(0), 64)  # a held-out photo
    path = tmp_path / "photo.png"
    Image.fromarray((hr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    out = tmp_path / "out.png"
    assert main(["upscale", str(path), "--scale", "1.5", "--out", str(out)]) == 0
    assert Image.open(out).size == (96, 96)
    assert main(["reconstruct", str(path), "--out", str(out)]) == 0
    rec = torch.from_numpy(np.asarray(Image.open(out), dtype=np.float32) / 255).permute(2, 0, 1)
    flat = hr.mean(dim=(1, 2), keepdim=True).expand_as(hr)  # the best constant image
    assert float(psnr(rec[None], hr[None])[0]) > float(psnr(flat[None], hr[None])[0]) + 3.0
    # x2 SR of the held-out crop beats nearest-neighbour upsampling of its own input
    sr = load_lsr_model(str(ASSETS_DIR / "lsr-sr-small")).eval()
    lr = torch.nn.functional.interpolate(hr[None], scale_factor=0.5, mode="area")
    up = sr.render(lr, (64, 64))
    nearest = torch.nn.functional.interpolate(lr, size=(64, 64), mode="nearest")
    assert float(psnr(up.clamp(0, 1), hr[None])[0]) > float(psnr(nearest, hr[None])[0])


def test_eval_lsr_bicubic_baseline(tmp_path, capsys) -> None:
    path = tmp_path / "bicubic.json"
    argv = ["eval", "lsr", "--model", "bicubic", "--mode", "sr", "--scales", "2", "--crop", "48", "--num-images", "2",
            "--json", str(path)]  # fmt: skip
    assert main(argv) == 0
    res = json.loads(path.read_text())
    assert res["num_parameters"] == 0 and res["x2"]["num_images"] == 2
    assert 20.0 < res["x2"]["psnr_y"] < 60.0  # bicubic x2 of natural photos: a real, finite PSNR
    assert main(["eval", "lsr", "--model", "bicubic", "--mode", "native"]) == 2
    assert "--mode sr" in capsys.readouterr().err
