"""The one training loop and its task table: every task is registered once, every config file loads
through one function, the learning-rate helper covers every schedule, and the classifier (whose data
order is a stateful stream) resumes exactly, from Python and from ``decodelab train``."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from decodelab.hub import load_pretrained
from decodelab.train import TASKS, TrainTask, get_task, load_train_config, run_training
from decodelab.train.classifier import ClassifierTrainConfig, train_classifier
from decodelab.train.common import load_checkpoint, lr_at, read_jsonl

ROOT = Path(__file__).resolve().parents[2]
TINY_CLASSIFIER = {"channels": [4, 8], "feature_dim": 16}


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def fake_fashion_mnist(folder: Path, n_train: int = 100, n_test: int = 20) -> Path:
    """Random 28x28 images in the IDX layout of Fashion-MNIST (labels cycle through the 10 classes)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        image_header = bytes([0, 0, 8, 3]) + struct.pack(">III", n, 28, 28)
        label_header = bytes([0, 0, 8, 1]) + struct.pack(">I", n)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(image_header + images.tobytes())
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(label_header + labels.tobytes())
    return folder


# ------------------------------------------------------------------------------------ task table
def test_every_task_is_in_the_one_table() -> None:
    names = ["classifier", "derain", "gpt", "lsr", "meg", "nar", "vq"]
    for name in names:  # ``meg`` is registered on its first lookup (it lives in decodelab.neuro.runs)
        cls = get_task(name)
        assert issubclass(cls, TrainTask) and cls.name == name
        assert cls.config_class().task == name
    assert TASKS.list() == names
    with pytest.raises(ValueError, match="task"):
        get_task("vqq")
    with pytest.raises(ValueError, match="task"):
        run_training(object())


# settings files that are not training configs, each checked by its own tests:
# adapters/ (bench options: tests/adapters/test_bench_adapters.py), brain-diffuser/ (pipeline settings:
# tests/neuro_fmri/test_brain_diffuser.py)
NOT_TRAINING = ("adapters", "brain-diffuser")


def test_every_config_file_loads_through_the_table() -> None:
    files = sorted(f for f in (ROOT / "configs").rglob("*.yaml") if f.relative_to(ROOT / "configs").parts[0]
                   not in NOT_TRAINING)  # fmt: skip
    assert len(files) > 20
    for f in files:
        cfg = load_train_config(f)
        assert isinstance(cfg, get_task(cfg.task).config_class), f
        assert cfg.name and str(cfg.out_dir).startswith("runs/"), f


def test_lr_helper_covers_every_schedule() -> None:
    multistep = [lr_at(s, 1.0, 10, schedule="multistep", milestones=[2, 4], gamma=0.5) for s in range(5)]
    assert multistep == [1.0, 1.0, 0.5, 0.5, 0.25]
    step = [lr_at(s, 2.0, 10, schedule="step", step_size=3, gamma=0.5) for s in range(7)]
    assert step == [2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 0.5]
    assert lr_at(5, 2.0, 10, schedule="step") == 2.0  # no step size: constant
    assert lr_at(0, 1.0, 10, warmup=4, schedule="multistep", milestones=[1]) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="schedule"):
        lr_at(0, 1.0, 10, schedule="linear")


# ------------------------------------------------------------------------------------ classifier
def test_classifier_resume_is_exact(tmp_path: Path) -> None:
    # 100 images, batch 32: an epoch is 3 batches, so the stop (step 5) falls inside the second epoch
    # and the resumed call must continue that epoch's saved order and augmentation stream.
    root = fake_fashion_mnist(tmp_path / "fm")
    kw = dict(steps=8, batch_size=32, lr=3e-3, seed=0, warmup=2, root=str(root), log_every=1, verbose=False,
              model=TINY_CLASSIFIER, noise_floor_n=[])  # fmt: skip
    full = train_classifier(tmp_path / "a", **kw)
    part = train_classifier(tmp_path / "b", stop_at=5, **kw)
    assert not part.finished and part.step == 5 and not (tmp_path / "b" / "model.safetensors").exists()
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 5
    rest = train_classifier(tmp_path / "b", resume=True, **kw)
    assert rest.finished and rest.step == 8 and len(rest.losses) == 3
    assert part.losses + rest.losses == full.losses
    a = load_pretrained(tmp_path / "a").state_dict()
    b = load_pretrained(tmp_path / "b").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    card_a = json.loads((tmp_path / "a" / "card.json").read_text())
    card_b = json.loads((tmp_path / "b" / "card.json").read_text())
    assert card_a["loss_curve"] == card_b["loss_curve"] and len(card_b["loss_curve"]) == 8
    assert card_a["weights_sha256"] == card_b["weights_sha256"]
    assert card_a["metrics"]["test_accuracy"] == rest.metrics["test_accuracy"]
    assert [r["step"] for r in read_jsonl(tmp_path / "b" / "log.jsonl") if "loss" in r] == list(range(1, 9))


def test_classifier_refuses_a_changed_recipe_on_resume(tmp_path: Path) -> None:
    root = fake_fashion_mnist(tmp_path / "fm")
    kw = dict(steps=4, batch_size=16, seed=0, root=str(root), verbose=False, model=TINY_CLASSIFIER, noise_floor_n=[])
    train_classifier(tmp_path / "r", stop_at=2, **kw)
    with pytest.raises(ValueError, match="cannot resume.*lr"):
        train_classifier(tmp_path / "r", resume=True, lr=1e-2, **kw)
    # final-evaluation settings may change
    res = train_classifier(tmp_path / "r", resume=True, **{**kw, "noise_floor_n": [10], "noise_floor_seeds": 1})
    assert res.finished and "n=10" in res.card["fid_noise_floor (fmnist features)"]


def test_cli_trains_and_resumes_the_classifier(tmp_path: Path, capsys) -> None:
    from decodelab.cli import main

    root = fake_fashion_mnist(tmp_path / "fm")
    cfg = ClassifierTrainConfig(steps=4, batch_size=16, warmup=1, root=str(root), log_every=2, noise_floor_n=[],
                                model=TINY_CLASSIFIER)  # fmt: skip
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({k: v for k, v in vars(cfg).items()}))  # JSON is YAML
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(out), "--stop-at", "2", "--no-progress"]) == 0
    assert "stopped after 2 steps" in capsys.readouterr().out
    assert main(["train", "--config", str(path), "--out", str(out), "--resume", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "finished 4 steps" in text and "test_accuracy" in text
    card = json.loads((out / "card.json").read_text())
    assert card["task"] == "classifier" and card["steps"] == 4
    assert card["command"] == f"decodelab train --config {path} --out {out}"
    assert (out / "card.md").read_text().count("## Per-class test accuracy") == 1
