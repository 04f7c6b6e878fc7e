"""The ``nar`` training task: tiny runs on random (noise) images on a random tiny tokenizer (seconds on a CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import decodelab
from decodelab.hub import load_pretrained
from decodelab.registry import MODELS
from decodelab.train import TASKS, get_task
from decodelab.train.config import DataConfig
from decodelab.train.nar import NARTask, NARTrainConfig, train_nar

SYNTH = dict(name="noise", image_size=16, channels=3, num_train=64, num_eval=16, num_classes=4)


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic and fast for tiny tensors
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tok") / "vq"
    MODELS.create("test_vq").save_pretrained(d)
    return d


def nar_cfg(out: Path, tokenizer: str, **kw) -> NARTrainConfig:
    base = dict(
        data=DataConfig(**SYNTH), model={"name": "test_nar"}, tokenizer=tokenizer, steps=6, batch_size=16, lr=3e-3,
        warmup=2, log_every=1, ckpt_every=100, eval_every=100, eval_batch_size=32, eval_samples=16,
        out_dir=str(out), progress=False,
    )  # fmt: skip
    base.update(kw)
    return NARTrainConfig(**base)


def test_registered_in_the_task_table() -> None:
    assert "nar" in TASKS.list() and get_task("nar") is NARTask
    with pytest.raises(ValueError, match="task: nar"):
        NARTrainConfig(task="gpt")
    with pytest.raises(ValueError, match="cond_dropout"):
        NARTrainConfig(cond_dropout=1.5)


def test_resume_is_exact(tmp_path: Path, tokenizer_dir: Path) -> None:
    # Dropout stays on (the model's defaults), so this also checks the global RNG is restored.
    straight = train_nar(nar_cfg(tmp_path / "a", str(tokenizer_dir)))
    first = train_nar(nar_cfg(tmp_path / "b", str(tokenizer_dir)), stop_at=3)
    second = train_nar(nar_cfg(tmp_path / "b", str(tokenizer_dir)), resume=True)
    assert first.step == 3 and second.step == 6
    assert first.losses + second.losses == straight.losses
    a = load_pretrained(tmp_path / "a" / "pipeline" / "model").state_dict()
    b = load_pretrained(tmp_path / "b" / "pipeline" / "model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["medusa_output.weight"], MODELS.create("test_nar").medusa_output.weight)


def test_loss_goes_down_and_the_pipeline_decodes_with_nar(tmp_path: Path, tokenizer_dir: Path) -> None:
    data = DataConfig(**{**SYNTH, "num_train": 32})
    model = {"name": "test_nar", "token_dropout_p": 0.0}
    result = train_nar(nar_cfg(tmp_path / "n", str(tokenizer_dir), steps=30, batch_size=32, data=data, model=model))
    first, last = sum(result.losses[:3]) / 3, sum(result.losses[-3:]) / 3
    assert result.finished and last < 0.8 * first, (first, last)
    pipe = decodelab.load_pipeline(str(tmp_path / "n" / "pipeline"))
    assert type(pipe.model).__name__ == "NAR" and pipe.model.num_classes == 4
    out = pipe(classes=[0, 3], seed=0, decoder="nar")
    assert out.tokens.shape == (2, 4, 4) and out.outputs[0].nfe == 7
    assert (tmp_path / "n" / "samples.png").is_file()


def test_refuses_a_model_without_the_vertical_head(tmp_path: Path, tokenizer_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"not a NAR.*test_nar.*task: gpt"):
        train_nar(nar_cfg(tmp_path / "x", str(tokenizer_dir), model={"name": "test_gpt"}))


def test_yaml_config_selects_the_task(tmp_path: Path) -> None:
    from decodelab.train import load_train_config

    p = tmp_path / "nar.yaml"
    p.write_text("task: nar\nmodel: {name: test_nar}\ntokenizer: runs/vq/final\nsteps: 5\n")
    cfg = load_train_config(p)
    assert isinstance(cfg, NARTrainConfig) and cfg.task == "nar" and cfg.steps == 5 and cfg.out_dir == "runs/nar"
