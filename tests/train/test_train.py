"""Tests for the training code: tiny VQ and GPT runs on random (noise) images (seconds each on a CPU).

Covers: the loss goes down, a stopped-and-resumed run equals an uninterrupted one exactly, configs
reject unknown keys, cards / final weights / pipelines are written and load back.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
import yaml

from decodelab.hub import load_pretrained
from decodelab.registry import MODELS
from decodelab.train import GPTTrainConfig, VQTrainConfig, load_train_config, train_gpt, train_vq
from decodelab.train.common import batch_indices, load_checkpoint, lr_at, psnr
from decodelab.train.config import DataConfig, TextEncoderConfig

SYNTH = dict(name="noise", image_size=16, channels=3, num_train=64, num_eval=16, num_classes=4)
TINY_VQ = {"name": "test_vq"}
TINY_GPT = {"name": "test_gpt"}


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic and fast for tiny tensors
    yield
    torch.set_num_threads(old)


def vq_cfg(out: Path, **kw) -> VQTrainConfig:
    base = dict(
        data=DataConfig(**SYNTH), model=dict(TINY_VQ), steps=6, batch_size=16, lr=3e-3, warmup=2,
        log_every=1, ckpt_every=100, eval_every=100, eval_batch_size=32, out_dir=str(out), progress=False,
    )  # fmt: skip
    base.update(kw)
    return VQTrainConfig(**base)


def gpt_cfg(out: Path, tokenizer: str = "", **kw) -> GPTTrainConfig:
    base = dict(
        data=DataConfig(**SYNTH), model=dict(TINY_GPT), tokenizer=tokenizer, steps=6, batch_size=16, lr=3e-3,
        warmup=2, log_every=1, ckpt_every=100, eval_every=100, eval_batch_size=32, eval_samples=16,
        out_dir=str(out), progress=False,
    )  # fmt: skip
    base.update(kw)
    return GPTTrainConfig(**base)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A (randomly initialised) tiny tokenizer saved in the native format."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tok") / "vq"
    MODELS.create("test_vq").save_pretrained(d)
    return d


# ----------------------------------------------------------------------------------- helpers
def test_lr_schedule_warmup_and_cosine() -> None:
    assert lr_at(0, 1.0, 100, warmup=10) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 100, warmup=10) == pytest.approx(1.0)
    assert lr_at(10, 1.0, 100, warmup=10, min_lr_ratio=0.1) == pytest.approx(1.0)
    assert lr_at(100, 1.0, 100, warmup=10, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_at(50, 1.0, 100, schedule="constant") == 1.0
    with pytest.raises(ValueError, match="schedule"):
        lr_at(0, 1.0, 10, schedule="linear")


def test_batch_order_is_a_function_of_step_and_covers_each_epoch() -> None:
    seen = torch.cat([batch_indices(10, 4, s, seed=3) for s in range(5)])  # 20 = two epochs
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    assert torch.equal(batch_indices(10, 4, 2, seed=3), seen[8:12])  # straddles the epoch boundary
    assert not torch.equal(batch_indices(10, 4, 0, seed=4), seen[:4])


def test_psnr_known_values() -> None:
    x = torch.zeros(2, 1, 4, 4)
    assert torch.allclose(psnr(x + 0.2, x), torch.full((2,), 20.0))  # 0.1 in [0, 1] units -> 20 dB
    assert float(psnr(x, x)[0]) == 100.0


# ------------------------------------------------------------------------------------ configs
def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_config_unknown_key_and_bad_task(tmp_path: Path) -> None:
    good = {"task": "vq", "model": {"name": "test_vq", "ch": 32}, "data": dict(SYNTH)}
    cfg = load_train_config(write_yaml(tmp_path / "a.yaml", good), ["steps=7", "model.ch=64", "data.num_train=8"])
    assert isinstance(cfg, VQTrainConfig) and cfg.steps == 7 and cfg.model["ch"] == 64 and cfg.data.num_train == 8
    with pytest.raises(ValueError, match="stepz"):
        load_train_config(write_yaml(tmp_path / "b.yaml", {**good, "stepz": 3}))
    with pytest.raises(ValueError, match="data.bogus"):
        load_train_config(tmp_path / "a.yaml", ["data.bogus=1"])
    with pytest.raises(ValueError, match="tokenizer"):  # a GPT key in a VQ config
        load_train_config(write_yaml(tmp_path / "c.yaml", {**good, "tokenizer": "x"}))
    with pytest.raises(ValueError, match="task"):
        load_train_config(write_yaml(tmp_path / "d.yaml", {"steps": 3}))
    with pytest.raises(FileNotFoundError):
        load_train_config(tmp_path / "missing.yaml")
    gpt = load_train_config(write_yaml(tmp_path / "e.yaml", {"task": "gpt", "model": {"name": "test_gpt"}}))
    assert isinstance(gpt, GPTTrainConfig) and gpt.conditioning == "class"


def test_shipped_configs_load() -> None:
    root = Path(__file__).resolve().parents[2] / "configs" / "embedded"
    files = sorted(root.glob("*.yaml"))
    assert files, "no configs/embedded/*.yaml"
    for f in files:  # every task's config goes through the one task table
        cfg = load_train_config(f)
        if cfg.task in ("vq", "gpt"):
            cfg.check_model()
        assert cfg.name and str(cfg.out_dir).startswith("runs/")


# ----------------------------------------------------------------------------------------- VQ
def test_vq_loss_goes_down_and_exports(tmp_path: Path) -> None:
    # num_train == batch_size: every step sees the same 16 images, so the losses are comparable.
    cfg = vq_cfg(tmp_path / "vq", steps=20, lr=5e-3, data=DataConfig(**{**SYNTH, "num_train": 16}),
                 grad_loss_weight=0.1, dead_code_every=5, eval_every=10)  # fmt: skip
    result = train_vq(cfg, config_path="my.yaml", overrides=["steps=20"])
    first, last = sum(result.losses[:3]) / 3, sum(result.losses[-3:]) / 3
    assert result.finished and len(result.losses) == 20
    assert last < 0.85 * first, (first, last)
    final = tmp_path / "vq" / "final"
    vq = load_pretrained(final)
    assert vq.codebook_size == 64 and not vq.training
    card = json.loads((final / "card.json").read_text())
    for key in ("config", "data", "steps", "seed", "wall_time_s", "metrics", "command"):
        assert key in card
    assert card["steps"] == 20 and card["metrics"]["psnr"] == pytest.approx(result.metrics["psnr"])
    assert card["command"] == "decodelab train --config my.yaml --out " + str(tmp_path / "vq") + " steps=20"
    assert (tmp_path / "vq" / "card.md").read_text().startswith("# VQ tokenizer")
    log = [json.loads(line) for line in (tmp_path / "vq" / "log.jsonl").read_text().splitlines()]
    assert any("eval_psnr" in r for r in log) and "final_psnr" in log[-1]


def test_vq_resume_is_exact(tmp_path: Path) -> None:
    kw = dict(dead_code_every=2, eval_every=2, grad_loss_weight=0.1)
    straight = train_vq(vq_cfg(tmp_path / "a", **kw))
    first = train_vq(vq_cfg(tmp_path / "b", **kw), stop_at=3)
    assert not first.finished and first.step == 3 and first.final_dir is None
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 3
    second = train_vq(vq_cfg(tmp_path / "b", **kw), resume=True)
    assert second.finished and second.step == 6
    assert first.losses + second.losses == straight.losses
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps.count(3) == 1  # the log is not duplicated by resuming


def test_vq_refuses_to_clobber_or_resume_nothing(tmp_path: Path) -> None:
    train_vq(vq_cfg(tmp_path / "a", steps=1))
    with pytest.raises(ValueError, match="--resume"):
        train_vq(vq_cfg(tmp_path / "a", steps=1))
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train_vq(vq_cfg(tmp_path / "empty", steps=1), resume=True)
    with pytest.raises(ValueError, match="lr"):  # a changed optimiser setting cannot be resumed
        train_vq(vq_cfg(tmp_path / "a", steps=2, lr=1e-2), resume=True)
    with pytest.raises(ValueError, match="not a VQ tokenizer"):
        train_vq(vq_cfg(tmp_path / "g", model={"name": "test_gpt"}))


def test_vq_time_budget_stops_and_exports(tmp_path: Path) -> None:
    result = train_vq(vq_cfg(tmp_path / "a", steps=5, time_budget_min=1e-9))
    assert result.finished and result.step == 1 and result.final_dir is not None
    card = json.loads((tmp_path / "a" / "card.json").read_text())
    assert card["stopped_by_time_budget"] and card["steps"] == 1 and card["planned_steps"] == 5


# ---------------------------------------------------------------------------------------- GPT
def test_gpt_loss_goes_down_and_writes_pipeline(tmp_path: Path, tokenizer_dir: Path) -> None:
    import decodelab

    data = DataConfig(**{**SYNTH, "num_train": 32})
    model = {"name": "test_gpt", "token_dropout_p": 0.0}
    cfg = gpt_cfg(tmp_path / "gpt", str(tokenizer_dir), steps=30, batch_size=32, data=data, model=model)
    result = train_gpt(cfg)
    first, last = sum(result.losses[:3]) / 3, sum(result.losses[-3:]) / 3
    assert result.finished and last < 0.8 * first, (first, last)
    caches = list((tmp_path / "gpt" / "cache").glob("tokens-*.npy"))
    assert len(caches) == 2  # train and held-out tokens, keyed by the tokenizer hash
    pipe = decodelab.load_pipeline(str(tmp_path / "gpt" / "pipeline"))
    assert pipe.info["trained"] and pipe.info["class_names"] == [f"class_{i}" for i in range(4)]
    assert pipe.model.num_classes == 4 and pipe.model.vocab_size == 64 and pipe.defaults["cfg_scale"] == 4.0
    assert pipe.info["card"]["steps"] == 30
    out = pipe(classes=[0, 3], seed=0)
    assert len(out.images) == 2 and out.images[0].size == (16, 16)
    assert (tmp_path / "gpt" / "samples.png").is_file()
    assert (tmp_path / "gpt" / "pipeline" / "card.md").is_file()
    # A second run on the same tokenizer reuses the cached tokens.
    stamp = {p: p.stat().st_mtime_ns for p in caches}
    train_gpt(gpt_cfg(tmp_path / "gpt", str(tokenizer_dir), steps=1, overwrite=True,
                      data=DataConfig(**{**SYNTH, "num_train": 32})))  # fmt: skip
    assert {p: p.stat().st_mtime_ns for p in caches} == stamp


def test_gpt_bf16_autocast_trains(tmp_path: Path, tokenizer_dir: Path) -> None:
    data = DataConfig(**{**SYNTH, "num_train": 32})
    model = {"name": "test_gpt", "token_dropout_p": 0.0}
    fp32 = train_gpt(gpt_cfg(tmp_path / "a", str(tokenizer_dir), steps=30, batch_size=32, data=data, model=model))
    bf16 = train_gpt(gpt_cfg(tmp_path / "b", str(tokenizer_dir), steps=30, batch_size=32, data=data, model=model,
                             autocast_bf16=True))  # fmt: skip
    first, last = sum(bf16.losses[:3]) / 3, sum(bf16.losses[-3:]) / 3
    assert bf16.finished and last < 0.8 * first, (first, last)
    assert bf16.losses != fp32.losses  # the forward really ran in bfloat16 ...
    assert abs(bf16.losses[-1] - fp32.losses[-1]) < 0.1 * fp32.losses[-1]  # ... and learned the same
    weights = load_pretrained(tmp_path / "b" / "pipeline" / "model").state_dict()
    assert all(v.dtype == torch.float32 for v in weights.values() if v.is_floating_point())


def test_vq_patch_encoder_trains(tmp_path: Path) -> None:
    cfg = vq_cfg(tmp_path / "vq", steps=20, lr=5e-3, data=DataConfig(**{**SYNTH, "num_train": 16}),
                 model={**TINY_VQ, "encoder_type": "patch"}, grad_loss_weight=0.1)  # fmt: skip
    result = train_vq(cfg)
    first, last = sum(result.losses[:3]) / 3, sum(result.losses[-3:]) / 3
    assert result.finished and last < 0.85 * first, (first, last)
    assert load_pretrained(tmp_path / "vq" / "final").config["encoder_type"] == "patch"


def test_gpt_resume_is_exact(tmp_path: Path, tokenizer_dir: Path) -> None:
    # Dropout stays on (the model's defaults), so this also checks the global RNG is restored.
    straight = train_gpt(gpt_cfg(tmp_path / "a", str(tokenizer_dir)))
    first = train_gpt(gpt_cfg(tmp_path / "b", str(tokenizer_dir)), stop_at=3)
    second = train_gpt(gpt_cfg(tmp_path / "b", str(tokenizer_dir)), resume=True)
    assert first.step == 3 and second.step == 6
    assert first.losses + second.losses == straight.losses
    a = load_pretrained(tmp_path / "a" / "pipeline" / "model").state_dict()
    b = load_pretrained(tmp_path / "b" / "pipeline" / "model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gpt_rejects_conflicting_model_settings(tmp_path: Path, tokenizer_dir: Path) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        train_gpt(gpt_cfg(tmp_path / "x", str(tokenizer_dir), model={"name": "test_gpt", "vocab_size": 99}))
    with pytest.raises(ValueError, match="cond_dropout"):
        gpt_cfg(tmp_path / "y", model={"name": "test_gpt", "class_dropout_prob": 0.2})
    with pytest.raises(FileNotFoundError):
        train_gpt(gpt_cfg(tmp_path / "z", str(tmp_path / "no-such-tokenizer")))


class FakeTextEncoder:
    """Deterministic stand-in for the MiniLM encoder: one hashed vector per word, left-padded."""

    def __init__(self, max_length: int = 6, dim: int = 24) -> None:
        self.max_length, self.dim, self.path = max_length, dim, "fake"

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        emb = torch.zeros(len(prompts), self.max_length, self.dim)
        mask = torch.zeros(len(prompts), self.max_length, dtype=torch.bool)
        for b, p in enumerate(prompts):
            words = p.split()[-self.max_length :]
            for j, w in enumerate(words):
                g = torch.Generator().manual_seed(sum(map(ord, w)))
                emb[b, self.max_length - len(words) + j] = torch.randn(self.dim, generator=g)
                mask[b, self.max_length - len(words) + j] = True
        return emb, mask


def test_gpt_caption_conditional(tmp_path: Path, tokenizer_dir: Path) -> None:
    cfg = gpt_cfg(tmp_path / "t2i", str(tokenizer_dir), steps=20, conditioning="caption",
                  model={"name": "test_gpt_t2i"}, text_encoder=TextEncoderConfig(max_length=6))  # fmt: skip
    result = train_gpt(cfg, text_encoder=FakeTextEncoder())
    assert result.finished and sum(result.losses[-3:]) < sum(result.losses[:3])
    assert list((tmp_path / "t2i" / "cache").glob("captions-*.npz"))
    pipeline = json.loads((tmp_path / "t2i" / "pipeline" / "pipeline.json").read_text())
    assert pipeline["text_encoder"]["max_length"] == 6 and "class_names" not in pipeline["info"]
    model = load_pretrained(tmp_path / "t2i" / "pipeline" / "model")
    assert model.model_type == "t2i" and model.num_cond_tokens == 6


# ---------------------------------------------------------------------------------------- CLI
def test_cli_train_and_resume(tmp_path: Path, capsys) -> None:
    from decodelab.cli import train as cli

    data = {"task": "vq", "name": "cli", "model": {"name": "test_vq"}, "data": dict(SYNTH), "steps": 4,
            "batch_size": 8, "warmup": 1, "progress": False}  # fmt: skip
    path = write_yaml(tmp_path / "vq.yaml", data)
    out = tmp_path / "run"
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["train", "--config", str(path), "--out", str(out), "--stop-at", "2", "lr=0.002"])
    assert args.func(args) == 0 and "stopped after 2 steps" in capsys.readouterr().out
    args = parser.parse_args(["train", "--config", str(path), "--out", str(out), "--resume", "lr=0.002"])
    assert cli.run(args) == 0 and "finished 4 steps" in capsys.readouterr().out
    card = json.loads((out / "card.json").read_text())
    assert card["command"].endswith("lr=0.002") and card["config"]["lr"] == 0.002
    assert cli.main(["--config", str(path), "bogus.key=1"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_one_meaning_per_data_name() -> None:
    """``synthetic`` is synthetic rain (derain task); the VQ/GPT random images are ``noise``."""
    from decodelab.train.config import DataConfig

    with pytest.raises(ValueError, match="data.name: noise"):
        DataConfig(name="synthetic", num_train=4)
    assert DataConfig(name="noise", num_train=4).name == "noise"
