"""Training: every variant learns, bandwidths behave as documented, runs resume exactly, CLI wiring."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from decodelab.datasets.sr import NativeCropSampler, SRImplicitSampler
from decodelab.train.lsr import LSRDataConfig, LSRTrainConfig, lr_for_step, step_generator, train_lsr
from decodelab.vision.lsr import create_lsr_model, load_lsr_model

VARIANTS = [
    ("test_gblsr_native", {"bandwidth_mode": "global_scalar"}, "native"),
    ("test_gblsr_native", {"bandwidth_mode": "fixed_midpoint"}, "native"),
    ("test_gblsr_native", {"bandwidth_mode": "local_logspace"}, "native"),
    ("test_gblsr_native", {"bandwidth_mode": "local_linear"}, "native"),
    ("test_gblsr_sr", {}, "sr"),
    ("test_gblsr_sr", {"local_ensemble": False}, "sr"),
    ("test_liif", {}, "sr"),
    ("test_lte", {}, "sr"),
    ("test_wire", {}, "sr"),
]


def _smooth_images(n: int, size: int = 40, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 5, 5, generator=g)
    imgs = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    return [(im * 255).round().to(torch.uint8) for im in imgs]


@pytest.mark.parametrize("name,kwargs,mode", VARIANTS, ids=[f"{n}-{m}-{k}" for n, k, m in VARIANTS])
def test_every_variant_trains(name: str, kwargs: dict, mode: str) -> None:
    torch.manual_seed(0)
    model = create_lsr_model(name, **kwargs).train()
    images = _smooth_images(2)
    sampler = NativeCropSampler(images, 16, 64) if mode == "native" else SRImplicitSampler(images, 8, 1, 3, 64)
    batch = sampler.batch([0, 1], step_generator(0, 0))  # one fixed batch: the loss must go down on it
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    s_before = model.bandwidth(torch.zeros(())).item() if name == "test_gblsr_native" else None
    losses = []
    for _ in range(30):
        loss = F.mse_loss(model(batch["inp"], batch["coord"], batch["cell"]), batch["gt"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0], losses
    if name == "test_gblsr_native":
        s_after = model.bandwidth(torch.zeros(())).item()
        if kwargs["bandwidth_mode"] == "global_scalar":
            assert s_after != s_before and 0.25 <= s_after <= 2.0  # trainable, stays in its range
        if kwargs["bandwidth_mode"] == "fixed_midpoint":
            assert s_after == pytest.approx(1.125)
        if kwargs["bandwidth_mode"].startswith("local"):
            assert model.decoder.adaptivity.proj.weight.abs().sum() > 0  # the per-patch head learns


def _cfg(tmp_path, **kw) -> LSRTrainConfig:
    base = dict(name="t", mode="sr", model={"name": "test_gblsr_sr"}, inp_size=8, scale_max=3.0, sample_q=32,
                steps=6, batch_size=2, lr=1e-3, out_dir=str(tmp_path / "run"), progress=False, log_every=1,
                ckpt_every=3, seed=3, eval_scales=[2.0], data=LSRDataConfig(eval_crop=None))  # fmt: skip
    base.update(kw)
    return LSRTrainConfig(**base)


def _eval_sets():
    from decodelab.datasets.sr import SRDataset

    hr = [im.float() / 255 for im in _smooth_images(1, 24, seed=9)]
    return {"x2": [SRDataset(None, None, 2.0, ["a"], hr)[0]]}


@pytest.mark.parametrize("model", ["test_gblsr_sr", "test_liif"])
def test_resume_is_exact(tmp_path, model: str) -> None:
    images = _smooth_images(3)
    full = train_lsr(_cfg(tmp_path / "a", model={"name": model}), train_images=images, eval_sets={})
    part = train_lsr(_cfg(tmp_path / "b", model={"name": model}), train_images=images, eval_sets={}, stop_at=3)
    assert not part.finished and part.final_dir is None
    rest = train_lsr(_cfg(tmp_path / "b", model={"name": model}), train_images=images, eval_sets={}, resume=True)
    assert rest.finished and part.losses + rest.losses == full.losses
    a = load_lsr_model(str(full.final_dir)).state_dict()
    b = load_lsr_model(str(rest.final_dir)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "b" / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4, 5, 6]  # no duplicated steps after resume


def test_training_outputs_card_metrics_and_refuses_overwrite(tmp_path) -> None:
    res = train_lsr(_cfg(tmp_path), train_images=_smooth_images(2), eval_sets=_eval_sets())
    card = json.loads((res.final_dir / "card.json").read_text())
    assert card["steps"] == 6 and card["seed"] == 3 and card["num_parameters"] > 0
    assert {"x2_psnr_y", "x2_ssim_y", "x2_psnr_rgb"} <= set(card["metrics"])
    assert card["bandwidth"] == pytest.approx(load_lsr_model(str(res.final_dir)).bandwidth().item())
    assert (res.final_dir / "card.md").is_file()
    with pytest.raises(ValueError, match="already holds a training run"):
        train_lsr(_cfg(tmp_path), train_images=_smooth_images(2), eval_sets={})
    with pytest.raises(ValueError, match="cannot resume"):
        train_lsr(_cfg(tmp_path, lr=5e-3), train_images=_smooth_images(2), eval_sets={}, resume=True)


def test_schedules_and_config_validation() -> None:
    cfg = LSRTrainConfig(model={"name": "test_liif"}, lr=1.0, milestones=[2, 4], gamma=0.5, lr_schedule="multistep")
    assert [lr_for_step(cfg, s) for s in range(6)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    with pytest.raises(ValueError, match="mode"):
        LSRTrainConfig(mode="deblur")
    with pytest.raises(ValueError, match="loss"):
        LSRTrainConfig(loss="huber")
    assert LSRTrainConfig(mode="native", downscale=[0.35, 1.0]).downscale == [0.35, 1.0]
    with pytest.raises(ValueError, match="downscale must be"):
        LSRTrainConfig(mode="native", downscale=[0.5, 1.2])
    with pytest.raises(ValueError, match="mode: native only"):
        LSRTrainConfig(mode="sr", downscale=[0.5, 1.0])


def test_train_cli_runs_task_lsr(tmp_path, capsys) -> None:
    from decodelab.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "task: lsr\nname: cli\nmode: native\nmodel:\n  name: test_gblsr_native\ninp_size: 16\nsample_q: 32\n"
        "steps: 4\nbatch_size: 1\nlr: 0.001\nthreads: 1\nlog_every: 1\nckpt_every: 2\n"
        "data:\n  name: bundled\n  max_train_images: 1\n  eval_images: 1\n  eval_crop: 24\n"
    )
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--stop-at", "2", "--no-progress"]) == 0
    assert "stopped after 2 steps" in capsys.readouterr().out
    assert main(["train", "--config", str(cfg), "--out", str(out), "--resume", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "finished 4 steps" in text and "native_psnr" in text
    assert load_lsr_model(str(out / "final")).config["patch_size"] == 8
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r2"), "model.nope=1"]) == 2
