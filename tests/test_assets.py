"""The shipped embedded-default assets load offline and stay within the size budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import decodelab
from decodelab.assets import ASSETS_DIR, available


def test_shipped_weights_stay_under_100_mb() -> None:
    total = sum(f.stat().st_size for f in ASSETS_DIR.rglob("*") if f.is_file())
    assert total < 100 * 2**20, f"shipped assets take {total / 2**20:.1f} MB"


def test_every_shipped_pipeline_has_a_provenance_card() -> None:
    for name in available():
        card = json.loads((ASSETS_DIR / name / "card.json").read_text())
        assert card["steps"] > 0 and "command" in card and "seed" in card


@pytest.mark.skipif("fmnist-c2i" not in available(), reason="fmnist-c2i is not shipped in this checkout")
def test_fmnist_c2i_generates_offline_and_sjd_matches_ar_greedy() -> None:
    pipe = decodelab.load_pipeline("fmnist-c2i")
    assert pipe.info["trained"] and pipe.info["world"] == "fashion_mnist"
    assert pipe.model.num_tokens == 256  # 16x16 tokens
    out = pipe(classes=[7], decoder="sjd_coupled", seed=0)
    assert out.images[0].size == (32, 32)
    assert out.decode.nfe < 256  # the trained model accepts more than one token per forward
    greedy = dict(temperature=0.0)
    a = pipe(classes=[1], decoder="ar", seed=0, **greedy)
    j = pipe(classes=[1], decoder="jacobi", seed=0, **greedy)
    assert torch.equal(a.tokens, j.tokens) and j.nfe < a.nfe


def test_missing_asset_error_says_how_to_build_it(tmp_path, monkeypatch) -> None:
    import decodelab.assets
    from decodelab.assets import asset_path

    monkeypatch.setattr(decodelab.assets, "ASSETS_DIR", tmp_path)  # as if not shipped
    with pytest.raises(FileNotFoundError, match="decodelab train --config configs/embedded/shapes-t2i"):
        asset_path("shapes-t2i")


@pytest.mark.skipif("fmnist-nar" not in available(), reason="fmnist-nar is not shipped in this checkout")
def test_fmnist_nar_generates_offline_in_31_steps_and_refuses_ar() -> None:
    pipe = decodelab.load_pipeline("fmnist-nar")
    assert pipe.info["trained"] and pipe.model.generation_order.name == "next_neighbor"
    out = pipe(classes=[7, 9], seed=0)  # the pipeline's default decoder is nar
    assert out.images[0].size == (32, 32) and out.decode.nfe == 31  # 2 x 16 - 1 anti-diagonals
    again = pipe(classes=[7, 9], decoder="nar_sjd", seed=0)
    assert again.decode.nfe <= 31
    with pytest.raises(ValueError, match="next"):
        pipe(classes=[7], decoder="ar", seed=0)
    # the shipped NAR decodes with the shipped fmnist-c2i tokenizer (same codebook as the GPT it compares with)
    if "fmnist-c2i" in available():
        c2i = decodelab.load_pipeline("fmnist-c2i")
        assert torch.equal(pipe.tokenizer.quantize.embedding.weight, c2i.tokenizer.quantize.embedding.weight)


@pytest.mark.skipif("shapes-nar" not in available(), reason="shapes-nar is not shipped in this checkout")
def test_shapes_nar_generates_from_captions_in_31_steps_on_the_shapes_t2i_tokenizer() -> None:
    pipe = decodelab.load_pipeline("shapes-nar")
    assert pipe.info["trained"] and pipe.info["world"] == "shapes_world"
    assert pipe.model.generation_order.name == "next_neighbor"
    prompts = ["a photo of a red circle", "a photo of two blue squares"]
    out = pipe(prompts=prompts, seed=0)  # the pipeline's default decoder is nar
    assert [im.size for im in out.images] == [(64, 64)] * 2 and out.decode.nfe == 31
    again = pipe(prompts=prompts, seed=0)
    assert torch.equal(out.tokens, again.tokens)  # fixed seed, same tokens
    with pytest.raises(ValueError, match="next"):
        pipe(prompts=prompts[:1], decoder="sjd", seed=0)
    if "shapes-t2i" in available():  # same codebook as the GPT it is compared with
        t2i = decodelab.load_pipeline("shapes-t2i")
        assert torch.equal(pipe.tokenizer.quantize.embedding.weight, t2i.tokenizer.quantize.embedding.weight)


def test_missing_nar_asset_error_names_its_config(tmp_path, monkeypatch) -> None:
    import decodelab.assets
    from decodelab.assets import asset_path

    monkeypatch.setattr(decodelab.assets, "ASSETS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="configs/embedded/fmnist-nar.yaml"):
        asset_path("fmnist-nar")


@pytest.mark.skipif("shapes-t2i" not in available(), reason="shapes-t2i is not shipped in this checkout")
def test_shapes_t2i_generates_offline_and_jacobi_matches_ar_greedy() -> None:
    pipe = decodelab.load_pipeline("shapes-t2i")
    assert pipe.info["trained"] and pipe.info["world"] == "shapes_world"
    assert pipe.model.num_tokens == 256  # 16x16 tokens
    prompt = ["a photo of a red circle"]
    greedy = dict(temperature=0.0)
    a = pipe(prompts=prompt, decoder="ar", seed=0, **greedy)
    j = pipe(prompts=prompt, decoder="jacobi", seed=0, **greedy)
    assert a.images[0].size == (64, 64)
    assert torch.equal(a.tokens, j.tokens) and j.nfe < a.nfe


def test_shipped_configs_use_no_test_presets() -> None:
    """Shipped models are built from the registered embedded families, never from the ``test_*`` tiny presets."""
    import yaml

    from decodelab.registry import MODELS

    configs = sorted((Path(__file__).resolve().parents[1] / "configs" / "embedded").glob("*.yaml"))
    assert configs
    for path in configs:
        model = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
        name = model.get("name")
        if name is not None:
            assert not name.startswith("test_") and name in MODELS, f"{path.name}: model {name!r}"
