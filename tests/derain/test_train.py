"""MCW-Net training: the loss goes down, resume is exact, outputs load, configs are checked."""

from __future__ import annotations

import json

import pytest
import torch

from decodelab.derain import load_derainer
from decodelab.train.common import read_jsonl
from decodelab.train.derain import DerainDataConfig, DerainTrainConfig, load_derain_config, train


def _cfg(folder, out, **kw) -> DerainTrainConfig:
    data = DerainDataConfig(name=str(folder), crop=16, **kw.pop("data", {}))
    base = dict(model={"name": "test_mcwnet"}, data=data, steps=10, batch_size=2, lr=2e-3, seed=0, out_dir=str(out),
                final_eval=False, progress=False, log_every=1, ckpt_every=100)  # fmt: skip
    return DerainTrainConfig(**{**base, **kw})


def test_a_few_steps_reduce_the_loss(rain_folder, tmp_path) -> None:
    res = train(_cfg(rain_folder, tmp_path / "run", data={"cutout": 0.0, "flip": False}))
    first, last = sum(res.losses[:3]) / 3, sum(res.losses[-3:]) / 3
    assert res.finished and len(res.losses) == 10
    assert last < 0.7 * first, res.losses


def test_resume_continues_exactly(rain_folder, tmp_path) -> None:
    kw = dict(steps=6, lr_step=3, val_every=3, data={"cutout": 0.5, "flip": True})
    full = train(_cfg(rain_folder, tmp_path / "a", **kw))
    part = train(_cfg(rain_folder, tmp_path / "b", **kw), stop_at=3)
    assert not part.finished and part.step == 3 and not (tmp_path / "b" / "final").exists()
    rest = train(_cfg(rain_folder, tmp_path / "b", **kw), resume=True)
    assert part.losses + rest.losses == full.losses
    wa = load_derainer(tmp_path / "a" / "final").state_dict()
    wb = load_derainer(tmp_path / "b" / "final").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    log_a = [r for r in read_jsonl(tmp_path / "a" / "log.jsonl")]
    log_b = [r for r in read_jsonl(tmp_path / "b" / "log.jsonl")]
    strip = [{k: v for k, v in r.items() if k != "time_s"} for r in log_a]
    assert strip == [{k: v for k, v in r.items() if k != "time_s"} for r in log_b]
    assert [r["lr"] for r in log_a] == [2e-3] * 3 + [1e-3] * 3  # halved at step 3
    assert sum("val_psnr_rgb" in r for r in log_a) == 2


def test_resume_refuses_a_changed_recipe(rain_folder, tmp_path) -> None:
    train(_cfg(rain_folder, tmp_path / "r", steps=4), stop_at=2)
    with pytest.raises(ValueError, match="lr"):
        train(_cfg(rain_folder, tmp_path / "r", steps=4, lr=1e-2), resume=True)
    with pytest.raises(ValueError, match="--resume"):
        train(_cfg(rain_folder, tmp_path / "r", steps=4))  # would overwrite the run


def test_final_dir_card_and_eval(rain_folder, tmp_path) -> None:
    res = train(_cfg(rain_folder, tmp_path / "f", steps=3, final_eval=True, data={"test_split": "test"}))
    final = tmp_path / "f" / "final"
    for name in ("config.json", "model.safetensors", "card.json", "card.md", "eval.json"):
        assert (final / name).is_file(), name
    card = json.loads((final / "card.json").read_text())
    assert card["steps"] == 3 and card["seed"] == 0 and card["num_parameters"] > 0
    assert {"psnr_rgb", "psnr_rgb_rainy", "ssim_y", "psnr_gain_rgb"} <= set(card["metrics"])
    assert res.metrics["psnr_rgb_rainy"] == card["metrics"]["psnr_rgb_rainy"]


def test_synthetic_data_and_validation(tmp_path) -> None:
    cfg = DerainTrainConfig(model={"name": "test_mcwnet"}, steps=2, batch_size=1, out_dir=str(tmp_path / "s"),
                            data=DerainDataConfig(name="synthetic", crop=32, val_crop=16, scale=[0.5, 1.0]),
                            val_every=2, final_eval=False, progress=False, log_every=1)  # fmt: skip
    res = train(cfg)
    log = read_jsonl(tmp_path / "s" / "log.jsonl")
    assert res.finished and log[-1]["step"] == 2 and 5 < log[-1]["val_psnr_rgb"] < 60
    assert 5 < log[-1]["val_psnr_rgb_rainy"] < 60 and log[-1]["val_psnr_rgb_rainy"] != log[-1]["val_psnr_rgb"]


def test_config_validation(tmp_path) -> None:
    with pytest.raises(ValueError, match="endless"):
        DerainTrainConfig(epochs=3)
    with pytest.raises(ValueError, match="only one"):
        DerainTrainConfig(epochs=3, steps=2, data=DerainDataConfig(name="x"))
    with pytest.raises(ValueError, match="task: derain"):
        DerainTrainConfig(task="vq")
    with pytest.raises(ValueError, match="model.name"):
        train(DerainTrainConfig(steps=1, out_dir=str(tmp_path / "m")))
    cfg = load_derain_config("configs/mcwnet/synthetic-small.yaml", ["steps=7", "data.crop=64"])
    assert cfg.steps == 7 and cfg.data.crop == 64 and cfg.model == {"name": "mcwnet_small"}
    with pytest.raises(ValueError, match="unknown config key"):
        load_derain_config("configs/mcwnet/synthetic-small.yaml", ["data.crpo=3"])
    for name in ("rain200h", "rain200l", "rain1400", "spa"):
        c = load_derain_config(f"configs/mcwnet/{name}.yaml")
        assert c.model["name"] == "mcwnet_large" and c.lr == 1e-4 and c.loss_weight == 10 and c.batch_size == 4
