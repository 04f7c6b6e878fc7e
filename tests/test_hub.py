"""Tests for checkpoint IO: the native format, offline-first resolution and safe upstream reading."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from decodelab.hub import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointMismatchError,
    default_cache_dir,
    load_pretrained,
    load_state_dict_strict,
    read_config,
    read_torch_checkpoint,
    resolve_checkpoint_dir,
)
from decodelab.registry import MODELS
from decodelab.vision.models import GPT


def make_gpt(name: str = "test_gpt", seed: int = 0, **kwargs) -> GPT:
    torch.manual_seed(seed)
    model = MODELS.create(name, **kwargs)
    torch.nn.init.normal_(model.output.weight, 0.0, 0.5)
    return model.eval()


def logits(model: GPT, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.vocab_size, (2, model.num_tokens), generator=g)
    if model.model_type == "c2i":
        cond = torch.tensor([2, 5])
    else:
        cond = torch.randn(2, model.num_cond_tokens, 24, generator=g)
    return model(tokens, cond)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[GPT, Path]:
    model = make_gpt(n_layer=1, resid_dropout_p=0.2)
    return model, model.save_pretrained(tmp_path / "ckpt")


# ----------------------------------------------------------------------------- isolation (conftest)


def test_tests_run_offline_with_temporary_caches() -> None:
    import socket

    import huggingface_hub.constants as hf

    assert os.environ["HF_HUB_OFFLINE"] == "1" and hf.HF_HUB_OFFLINE
    cache = Path(os.environ["DECODELAB_CACHE"])
    assert default_cache_dir() == cache and cache.is_dir() and not any(cache.iterdir())
    # HOME, the data folder and the HF cache all live in the same fresh per-test folder.
    root = cache.parent
    for var in ("HOME", "DECODELAB_DATA", "HF_HOME", "TORCH_HOME"):
        assert Path(os.environ[var]).parent == root and Path(os.environ[var]).is_dir(), var
    assert Path.home().parent == root and Path(hf.HF_HUB_CACHE).is_relative_to(root)

    with pytest.raises(OSError, match="network access is disabled"):
        socket.create_connection(("192.0.2.1", 443), timeout=0.1)


def test_default_cache_dir_falls_back_to_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DECODELAB_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "decodelab"


# ----------------------------------------------------------------------------- native round trip


@pytest.mark.parametrize("name", ["test_gpt", "test_gpt_t2i"])
def test_save_load_round_trip_is_exact(tmp_path: Path, name: str) -> None:
    model = make_gpt(name)
    model.setup_caches(2)  # caches must not end up in the checkpoint
    d = model.save_pretrained(tmp_path / name)
    assert sorted(p.name for p in d.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    cfg = json.loads((d / CONFIG_NAME).read_text())
    assert cfg["architecture"] == "GPT" and cfg["config"] == model.config
    loaded = load_pretrained(d)
    assert isinstance(loaded, GPT) and not loaded.training
    assert loaded.config == model.config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert torch.equal(logits(loaded), logits(model))
    again = GPT.from_pretrained(str(d))
    assert torch.equal(again.output.weight, model.output.weight)


def test_load_overrides_and_extra_config(tmp_path: Path) -> None:
    model = make_gpt(n_layer=1)
    d = model.save_pretrained(tmp_path / "m", extra={"card": {"steps": 3}})
    assert read_config(d)["card"] == {"steps": 3}
    loaded = load_pretrained(d, resid_dropout_p=0.0)
    assert loaded.config["resid_dropout_p"] == 0.0 and model.config["resid_dropout_p"] == 0.1
    # An override that changes parameter shapes is a checkpoint mismatch, named as such.
    with pytest.raises(CheckpointMismatchError, match="output.weight"):
        load_pretrained(d, vocab_size=32)


def test_from_pretrained_checks_the_class(saved, tmp_path: Path) -> None:
    _, d = saved
    vq = MODELS.create("test_vq")
    vq_dir = vq.save_pretrained(tmp_path / "vq")
    with pytest.raises(ValueError, match="holds a VQModel, not a GPT"):
        GPT.from_pretrained(vq_dir)
    assert isinstance(GPT.from_pretrained(d), GPT)


def test_resolves_names_in_the_decodelab_cache(saved) -> None:
    model, d = saved
    target = default_cache_dir() / "my-gpt"
    target.mkdir(parents=True)
    for f in d.iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    assert resolve_checkpoint_dir("my-gpt") == target
    assert torch.equal(load_pretrained("my-gpt").output.weight, model.output.weight)


def test_resolves_hub_ids_from_the_local_hf_cache(saved, tmp_path: Path) -> None:
    model, d = saved
    cache = tmp_path / "cache"
    snap = cache / "hub" / "models--someorg--tiny" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    for f in d.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    refs = cache / "hub" / "models--someorg--tiny" / "refs"
    refs.mkdir()
    (refs / "main").write_text("a" * 40)
    assert resolve_checkpoint_dir("someorg/tiny", cache_dir=cache) == snap
    loaded = load_pretrained("someorg/tiny", cache_dir=cache)
    assert torch.equal(loaded.output.weight, model.output.weight)


# ----------------------------------------------------------------------------- resolution errors


def test_missing_directory_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "ckpt"
    with pytest.raises(FileNotFoundError) as e:
        load_pretrained(missing)
    assert str(missing) in str(e.value) and "config.json" in str(e.value)
    with pytest.raises(FileNotFoundError, match="'not-a-model'"):
        resolve_checkpoint_dir("not-a-model")


def test_hub_id_without_cache_does_not_download() -> None:
    with pytest.raises(FileNotFoundError) as e:
        load_pretrained("someorg/somemodel")
    msg = str(e.value)
    assert "someorg/somemodel" in msg
    assert "does not download implicitly" in msg
    assert "local_files_only=False" in msg


def test_single_file_is_not_a_checkpoint_dir(tmp_path: Path) -> None:
    p = tmp_path / "c2i_B_256.pt"
    p.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="import_llamagen_gpt"):
        load_pretrained(p)


def test_directory_without_files(saved, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(empty)
    _, d = saved
    (d / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        load_pretrained(d)


# ----------------------------------------------------------------------------- corrupt files


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "",
        json.dumps([1, 2]),
        json.dumps({"config": {}}),
        json.dumps({"architecture": "GPT", "config": [1]}),
    ],
)
def test_corrupt_config_json(saved, text: str) -> None:
    _, d = saved
    (d / CONFIG_NAME).write_text(text)
    with pytest.raises(ValueError, match="config.json"):
        load_pretrained(d)


def test_config_json_that_does_not_fit_the_architecture(saved) -> None:
    _, d = saved
    cfg = json.loads((d / CONFIG_NAME).read_text())
    cfg["config"]["bogus_width"] = 3
    (d / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="bogus_width"):
        load_pretrained(d)
    cfg["config"].pop("bogus_width")
    cfg["architecture"] = "Transformr"
    (d / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unknown architecture 'Transformr'.*GPT"):
        load_pretrained(d)


@pytest.mark.parametrize("cut", ["half", "last_byte", "header", "empty"])
def test_truncated_safetensors(saved, cut: str) -> None:
    _, d = saved
    w = d / WEIGHTS_NAME
    data = w.read_bytes()
    w.write_bytes({"half": data[: len(data) // 2], "last_byte": data[:-1], "header": data[:4], "empty": b""}[cut])
    with pytest.raises(ValueError, match="corrupt weights file"):
        load_pretrained(d)


def test_weights_from_another_model_are_a_mismatch(saved, tmp_path: Path) -> None:
    _, d = saved
    other = make_gpt(n_layer=2).save_pretrained(tmp_path / "other")
    (d / WEIGHTS_NAME).write_bytes((other / WEIGHTS_NAME).read_bytes())
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys: layers\.1\."):
        load_pretrained(d)


# ----------------------------------------------------------------------------- strict loading / torch files


def test_load_state_dict_strict_reports_everything() -> None:
    model = make_gpt(n_layer=1)
    sd = dict(model.state_dict())
    sd.pop("norm.weight")
    sd["extra.bias"] = torch.zeros(1)
    sd["output.weight"] = torch.zeros(3, 3)
    before = model.output.weight.clone()
    with pytest.raises(CheckpointMismatchError) as e:
        load_state_dict_strict(model, sd, source="unit")
    msg = str(e.value)
    assert "checkpoint unit does not match GPT" in msg
    assert "missing keys: norm.weight" in msg and "unexpected keys: extra.bias" in msg
    assert "output.weight: checkpoint (3, 3) vs model (64, 32)" in msg
    assert torch.equal(model.output.weight, before)  # nothing was loaded
    # Ignored prefixes and compiled-model prefixes are accepted.
    good = {f"_orig_mod.{k}": v * 0 for k, v in model.state_dict().items()}
    good["freqs_cis"] = torch.ones(1)
    load_state_dict_strict(model, good, ignore=("freqs_cis",))
    assert torch.count_nonzero(model.output.weight) == 0


def test_long_key_lists_are_abbreviated() -> None:
    model = make_gpt(n_layer=3)  # 4 + 7 * 3 = 25 keys, more than the 20 shown
    with pytest.raises(CheckpointMismatchError) as e:
        load_state_dict_strict(model, {"x": torch.zeros(1)})
    missing = str(e.value).split("missing keys: ")[1].split("\n")[0]
    assert missing.endswith(", ... (25 in all)") and missing.count(",") == 20


def test_read_torch_checkpoint(tmp_path: Path) -> None:
    sd = {"a": torch.ones(2), "b": torch.zeros(1)}
    for i, obj in enumerate([sd, {"model": sd}, {"module": sd}, {"state_dict": sd}, {"ema": sd, "step": 3}]):
        p = tmp_path / f"{i}.pt"
        torch.save(obj, p)
        out = read_torch_checkpoint(p)
        assert out.keys() == sd.keys() and all(torch.equal(out[k], sd[k]) for k in sd)
    p = tmp_path / "nested.pt"
    torch.save({"state_dict": {"model": sd}}, p)
    assert read_torch_checkpoint(p).keys() == sd.keys()
    p = tmp_path / "nowrap.pt"
    torch.save({"weights": sd, "steps": 1}, p)
    with pytest.raises(ValueError, match="no state dict found"):
        read_torch_checkpoint(p)
    p = tmp_path / "garbage.pt"
    p.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="weights-only"):
        read_torch_checkpoint(p)
