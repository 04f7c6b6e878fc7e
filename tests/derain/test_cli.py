"""`decodelab train` (task: derain), `decodelab derain` and `decodelab eval derain` end to end."""

from __future__ import annotations

import json

import numpy as np
import yaml
from PIL import Image

from decodelab.cli import main
from decodelab.derain import test_mcwnet


def test_train_then_derain_then_eval(rain_folder, tmp_path, capsys) -> None:
    cfg = {"task": "derain", "name": "tiny", "model": {"name": "test_mcwnet"},
           "data": {"name": str(rain_folder), "crop": 16}, "steps": 2, "batch_size": 2, "log_every": 1,
           "final_eval": False}  # fmt: skip
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    assert "finished 2 steps" in capsys.readouterr().out
    model_dir = out / "final"

    derained = tmp_path / "derained"
    assert main(["derain", str(rain_folder / "rain-0.png"), str(rain_folder / "rain-1.png"), "--out", str(derained),
                 "--model", str(model_dir), "--tile", "16", "--overlap", "4"]) == 0  # fmt: skip
    img = Image.open(derained / "rain-0.png")
    assert img.size == (24, 24) and img.mode == "RGB"

    js = tmp_path / "eval.json"
    assert main(["eval", "derain", "--model", str(model_dir), "--data", str(rain_folder), "--protocol", "y",
                 "--json", str(js), "--no-ensemble"]) == 0  # fmt: skip
    res = json.loads(js.read_text())
    assert res["settings"]["protocols"] == ["y"] and res["settings"]["self_ensemble"] is False
    assert res["data"]["num_images"] == 4 and {"psnr_y", "ssim_y", "psnr_y_rainy"} <= set(res["metrics"])
    assert "rainy" in capsys.readouterr().out


def test_eval_baseline_is_the_rainy_input(tmp_path, rain_folder) -> None:
    from decodelab.datasets.rain import RainPairs
    from decodelab.eval.quality import psnr

    m = test_mcwnet()
    m.save_pretrained(tmp_path / "m")
    js = tmp_path / "e.json"
    assert main(["eval", "derain", "--model", str(tmp_path / "m"), "--data", str(rain_folder), "--protocol", "rgb",
                 "--json", str(js), "--max-images", "2"]) == 0  # fmt: skip
    res = json.loads(js.read_text())
    ds = RainPairs(rain_folder)
    expect = np.mean([float(psnr(*ds[i])) for i in range(2)])
    assert abs(res["metrics"]["psnr_rgb_rainy"] - expect) < 1e-9 and "psnr_y" not in res["metrics"]


def test_cli_errors_are_clear(tmp_path, capsys, monkeypatch) -> None:
    import decodelab.assets

    monkeypatch.setattr(decodelab.assets, "ASSETS_DIR", tmp_path / "no_assets")
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    assert main(["derain", str(img), "--out", str(tmp_path / "o")]) == 2
    assert "decodelab train --config configs/mcwnet/synthetic-small.yaml" in capsys.readouterr().err
    assert main(["derain", str(tmp_path / "missing.png"), "--out", str(tmp_path / "o")]) == 2
    assert "input not found" in capsys.readouterr().err
    m = test_mcwnet()
    m.save_pretrained(tmp_path / "m")
    assert main(["eval", "derain", "--model", str(tmp_path / "m"), "--data", "Rain200H"]) == 2
    assert "never downloads" in capsys.readouterr().err
