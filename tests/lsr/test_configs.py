"""The shipped ``task: lsr`` configs load, build their models, and the CPU tracks really are matched."""

from __future__ import annotations

from pathlib import Path

import pytest

from decodelab.train.lsr import load_lsr_config
from decodelab.vision.lsr import create_lsr_model

ROOT = Path(__file__).resolve().parents[2] / "configs"
LSR_CONFIGS = sorted(
    [p for d in ("gblsr", "liif", "lte", "wire") for p in (ROOT / d).glob("*.yaml")]
    + sorted((ROOT / "embedded").glob("*lsr*.yaml"))
)
# every field that defines the budget of a run; the model (and its config) is the only difference
MATCHED = ("mode", "data", "inp_size", "scale_min", "scale_max", "sample_q", "augment", "steps", "batch_size",
           "optimizer", "lr", "betas", "weight_decay", "lr_schedule", "milestones", "gamma", "warmup", "grad_clip",
           "loss", "seed", "threads", "eval_scales")  # fmt: skip


def test_there_are_paper_and_cpu_configs_for_every_family() -> None:
    names = {f"{p.parent.name}/{p.stem}" for p in LSR_CONFIGS}
    for family in ("gblsr", "liif", "lte", "wire"):
        assert f"{family}/native-cpu" in names and f"{family}/sr-cpu" in names
    assert {"gblsr/native-paper", "gblsr/sr-rdn-div2k", "liif/edsr-baseline-div2k", "lte/rdn-div2k"} <= names
    assert {"embedded/lsr-sr-small", "embedded/gblsr-native-small"} <= names


@pytest.mark.parametrize("path", LSR_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_loads(path: Path) -> None:
    cfg = load_lsr_config(path)
    assert cfg.task == "lsr" and cfg.model["name"] and cfg.out_dir.startswith("runs/lsr/")
    if "cpu" in path.stem or path.parent.name == "embedded":  # small models only: build them
        create_lsr_model(cfg.model["name"], **{k: v for k, v in cfg.model.items() if k != "name"})


@pytest.mark.parametrize("track", ["native-cpu", "sr-cpu"])
def test_cpu_tracks_share_one_budget(track: str) -> None:
    cfgs = [load_lsr_config(p) for p in LSR_CONFIGS if p.stem.startswith(track)]
    assert len(cfgs) >= 5  # GB-LSR variants + LIIF + LTE + WIRE
    ref = cfgs[0]
    for cfg in cfgs[1:]:
        for key in MATCHED:
            assert getattr(cfg, key) == getattr(ref, key), (cfg.name, key)
    encoders = {str(create_lsr_model(c.model["name"]).config.get("encoder")) for c in cfgs if "gblsr_native" not in
                c.model["name"]}  # fmt: skip
    assert len(encoders) == 1  # one shared encoder architecture per track
