"""Pipelines with a drafter (MuLo-SD, ``mulo``): tiny target / drafter pairs from the registry's test models.

The target is a ``test_gpt`` with a 4x4-token grid over a ``test_vq`` tokenizer (16x16 images), the
drafter a ``test_gpt`` with a 2x2 grid over another ``test_vq`` (8x8 images): the ratio r = 2 of
MuLo-SD's drafter. Checked: generation through the pipeline with per-model forward counts, the
drafter's resolution (given, pipeline.json, default table) and its errors, up-samplers, saving,
the bench with drafter forwards, and the resumable sampler with a drafter.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import decodelab
import decodelab.vision.pipeline as pipeline_module
from decodelab.speculative import SamplingConfig
from decodelab.speculative.mulo import Upsampler
from decodelab.vision.bench import benchmark_decoders, format_table
from decodelab.vision.pipeline import ImageGenerationPipeline, load_pipeline
from decodelab.vision.sampler import MANIFEST, read_manifest, sample_to_folder
from decodelab.vision.upsample import LSRResize, PixelUpsampler


def _gpt(seed: int, name: str = "test_gpt", **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = decodelab.create_model(name, **kw).eval()
    torch.nn.init.normal_(m.output.weight, 0.0, 0.6)  # upstream zero-init would make p uniform
    return m


def _vq(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return decodelab.create_model("test_vq").eval()


def _pair(name: str = "tiny", drafter: bool = True, **kw) -> ImageGenerationPipeline:
    """A 4x4-token target pipeline carrying a 2x2-token drafter pipeline."""
    low = ImageGenerationPipeline(_gpt(1, block_size=4), _vq(11), info={"name": f"{name}-lowres"}) if drafter else None
    return ImageGenerationPipeline(_gpt(0), _vq(10), info={"name": name}, drafter=low, **kw)


class FakeTextEncoder:
    """Deterministic caption embeddings ``[B, T, C]`` (one hashed vector per word, left-padded)."""

    def __init__(self, max_length: int = 6, dim: int = 24) -> None:
        self.max_length, self.dim = max_length, dim

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        emb = torch.zeros(len(prompts), self.max_length, self.dim)
        mask = torch.zeros(len(prompts), self.max_length, dtype=torch.bool)
        for b, p in enumerate(prompts):
            words = p.split()[-self.max_length :]
            for j, w in enumerate(words):
                emb[b, self.max_length - len(words) + j] = torch.randn(
                    self.dim, generator=torch.Generator().manual_seed(sum(map(ord, w)))
                )
                mask[b, self.max_length - len(words) + j] = True
        return emb, mask


# --------------------------------------------------------------------------- generation
def test_generate_with_mulo_gives_images_and_forwards_per_model() -> None:
    pipe = _pair()
    out = pipe.generate(classes=[1, 2], decoder="mulo", decoder_kwargs={"tau": 0.05, "k": 2}, seed=3, num_images=2)
    assert len(out.images) == 4 and out.images[0].size == (16, 16) and out.tokens.shape == (4, 4, 4)
    nfe = out.decode.nfe_by_model
    assert set(nfe) == {"target", "drafter"} and nfe["target"] == out.nfe >= 2 and nfe["drafter"] >= 2
    assert out.decode.lossless is False and out.decode.accepted.sum(0).tolist() == [16] * 4
    assert out.settings["drafter"] == "tiny-lowres" and out.settings["upsampler"] == "bicubic"
    assert out.settings["decoder_kwargs"]["tau"] == 0.05
    # the drafter's tokens come back on its own 2x2 grid
    assert out.decode.extras["drafter_tokens"].shape == (4, 4)
    again = pipe(classes=[1, 2], decoder="mulo", decoder_kwargs={"tau": 0.05, "k": 2}, seed=3, num_images=2)
    assert torch.equal(again.tokens, out.tokens)  # generate is __call__; same seed, same images
    other = pipe(classes=[1, 2], decoder="mulo", decoder_kwargs={"tau": 0.05, "k": 2}, seed=4, num_images=2)
    assert not torch.equal(other.tokens, out.tokens)


def test_decoders_without_a_drafter_are_unaffected(tmp_path: Path) -> None:
    plain = ImageGenerationPipeline(_gpt(0), _vq(10), info={"name": "tiny"})
    carrying = _pair()
    a = plain(classes=[3], decoder="sjd", seed=1, num_images=2)
    b = carrying(classes=[3], decoder="sjd", seed=1, num_images=2)
    assert torch.equal(a.tokens, b.tokens) and b.decode.nfe_by_model == {"target": b.nfe}
    assert "drafter" not in b.settings and "upsampler" not in b.settings
    # a default drafter that does not exist is never loaded by ar
    plain.drafter_spec = str(tmp_path / "no-such-drafter")
    assert plain(classes=[3], seed=1).tokens.shape == (1, 4, 4)
    with pytest.raises(FileNotFoundError, match="no-such-drafter"):
        plain(classes=[3], decoder="mulo")


def test_t2i_pair_shares_the_target_text_encoder() -> None:
    enc = FakeTextEncoder()
    low = ImageGenerationPipeline(_gpt(1, "test_gpt_t2i", block_size=4), _vq(11), FakeTextEncoder(),
                                  info={"name": "t2i-lowres"})  # fmt: skip
    pipe = ImageGenerationPipeline(_gpt(0, "test_gpt_t2i"), _vq(10), enc, info={"name": "t2i"}, drafter=low)
    assert pipe.drafter.text_encoder is enc  # the decoder hands both models the same caption embeddings
    out = pipe.generate(prompts=["a red circle", "two blue squares"], decoder="mulo", seed=0)
    assert len(out.images) == 2 and out.decode.nfe_by_model["drafter"] >= 2
    short = ImageGenerationPipeline(_gpt(1, "test_gpt_t2i", block_size=4, cls_token_num=4), _vq(11),
                                    FakeTextEncoder(max_length=4), info={"name": "short"})  # fmt: skip
    with pytest.raises(ValueError, match="captions of 4 positions x 24 dims but t2i 6 x 24"):
        pipe.set_drafter(short)


# --------------------------------------------------------------------------- which drafter, and its errors
@pytest.mark.parametrize("world", ["shapes-t2i", "fmnist-c2i"])
def test_missing_default_drafter_names_the_asset_and_its_training_configs(world, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(pipeline_module, "ASSETS_DIR", tmp_path)  # an installation without the drafter assets
    pipe = _pair(world, drafter=False)
    assert pipe.drafter_source == f"{world}-lowres"
    with pytest.raises(FileNotFoundError) as e:
        pipe.generate(classes=[0], decoder="mulo")
    msg = str(e.value)
    assert f"'{world}-lowres'" in msg and str(tmp_path / f"{world}-lowres") in msg
    assert f"decodelab train --config configs/embedded/{world}-lowres-gpt.yaml" in msg
    assert f"configs/embedded/{world}-lowres-vq.yaml" in msg and "--drafter DIR" in msg


def test_a_pipeline_without_any_drafter_says_how_to_give_one() -> None:
    pipe = _pair("no-default", drafter=False)
    assert pipe.drafter_source is None
    with pytest.raises(ValueError, match="no-default has no drafter.*drafter=NAME_OR_DIR"):
        pipe(classes=[0], decoder="mulo")
    with pytest.raises(FileNotFoundError, match="drafter 'nope-lowres' of no-default is not in this installation"):
        pipe.set_drafter("nope-lowres")
    with pytest.raises(ValueError, match="ImageGenerationPipeline, a shipped asset name or a pipeline directory"):
        pipe.set_drafter(42)


def test_drafter_grid_and_conditioning_are_checked() -> None:
    target = _pair(drafter=False)
    same_grid = ImageGenerationPipeline(_gpt(1), _vq(11), info={"name": "same"})
    with pytest.raises(ValueError, match=r"'same' has a 4x4 token grid but tiny 4x4.*r = 2: 2x2"):
        target.set_drafter(same_grid)
    text = ImageGenerationPipeline(_gpt(1, "test_gpt_t2i", block_size=4), _vq(11), FakeTextEncoder(),
                                   info={"name": "t2i"})  # fmt: skip
    with pytest.raises(ValueError, match="conditioned on 'text' but tiny on 'class'"):
        target.set_drafter(text)
    classes = ImageGenerationPipeline(_gpt(1, block_size=4, num_classes=5), _vq(11), info={"name": "five"})
    with pytest.raises(ValueError, match="5 classes but tiny 10"):
        target.set_drafter(classes)
    assert target._drafter is None  # a refused drafter is not carried
    carrying = _pair()
    with pytest.raises(ValueError, match="token grid"):
        carrying.set_drafter(same_grid)
    assert carrying.drafter.info["name"] == "tiny-lowres"  # nor does it replace the current one
    assert carrying.set_drafter(None).drafter_source is None


def test_a_quarter_resolution_drafter_needs_the_decoder_ratio() -> None:
    low = ImageGenerationPipeline(_gpt(1, block_size=1), _vq(11), info={"name": "quarter"})
    pipe = ImageGenerationPipeline(_gpt(0), _vq(10), info={"name": "tiny"}, drafter=low)
    with pytest.raises(ValueError, match="divided by ratio=2"):
        pipe(classes=[1], decoder="mulo")
    out = pipe(classes=[1], decoder="mulo", decoder_kwargs={"ratio": 4})
    assert out.decode.accepted.sum() == 16 and out.decode.nfe_by_model["drafter"] >= 1


def test_save_and_reload_carries_the_drafter(tmp_path: Path) -> None:
    pipe = _pair()
    d = pipe.save_pretrained(tmp_path / "pipe")
    cfg = json.loads((d / "pipeline.json").read_text())
    assert cfg["drafter"] == "drafter" and (d / "drafter" / "pipeline.json").is_file()
    loaded = load_pipeline(d)
    assert loaded._drafter is None  # loaded when a decoder first needs it
    kw = {"classes": [2, 5], "decoder": "mulo", "decoder_kwargs": {"tau": 0.1}, "seed": 7}
    assert torch.equal(loaded(**kw).tokens, pipe(**kw).tokens)
    assert loaded.drafter.info["name"] == "tiny-lowres"
    # an explicit drafter directory replaces it, and is checked at once
    other = load_pipeline(d, drafter=d / "drafter", upsampler="bilinear")
    assert other._drafter is not None and other(**kw).settings["upsampler"] == "bilinear"


# --------------------------------------------------------------------------- up-samplers
def test_upsampler_names_callables_and_errors(tmp_path, monkeypatch) -> None:
    pipe = _pair()
    up = pipe.build_upsampler()
    assert isinstance(up, PixelUpsampler) and isinstance(up, Upsampler) and up.method == "bicubic"
    assert pipe.build_upsampler() is up  # built once
    assert pipe.build_upsampler("bilinear").method == "bilinear"
    assert up.drafter_tokenizer is pipe.drafter.tokenizer and up.target_tokenizer is pipe.tokenizer
    calls = []

    def resize(images, size):
        calls.append(tuple(size))
        return torch.nn.functional.interpolate(images, size=size, mode="nearest")

    out = pipe(classes=[1], decoder="mulo", upsampler=resize)
    assert calls and set(calls) == {(16, 16)} and out.settings["upsampler"] == "resize"
    with pytest.raises(ValueError, match="unknown up-sampler 'bicubik'.*bicubic, bilinear, nearest, lsr"):
        pipe.upsampler = "bicubik"
    with pytest.raises(ValueError, match="unknown up-sampler"):
        load_pipeline("test-c2i", upsampler="lanczos")
    monkeypatch.setattr(pipeline_module, "ASSETS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="configs/embedded/lsr-sr-small.yaml"):
        pipe.build_upsampler("lsr")


def test_lsr_upsampler_renders_with_the_shipped_sr_model() -> None:
    if not (pipeline_module.ASSETS_DIR / "lsr-sr-small" / "config.json").is_file():
        pytest.skip("lsr-sr-small is not shipped in this installation")
    pipe = _pair(upsampler="lsr")
    up = pipe.build_upsampler()
    assert isinstance(up.method, LSRResize)
    grey = torch.rand(2, 1, 8, 8) * 2 - 1
    assert up.method(grey, (16, 16)).shape == (2, 1, 16, 16)  # grey images go through the RGB model and back
    rgb = torch.rand(1, 3, 8, 8) * 2 - 1
    big = up.method(rgb, (16, 16))
    assert big.shape == (1, 3, 16, 16) and float(big.min()) >= -1 and float(big.max()) <= 1
    assert not torch.allclose(big, torch.nn.functional.interpolate(rgb, size=(16, 16), mode="bicubic"), atol=1e-3)
    out = pipe(classes=[4], decoder="mulo", seed=0)
    assert out.settings["upsampler"] == "lsr" and out.decode.accepted.sum() == 16


# --------------------------------------------------------------------------- bench
def test_bench_reports_drafter_forwards_next_to_target_forwards() -> None:
    pipe = _pair()
    conds = torch.tensor([1, 2, 3])
    models = pipe.decoder_models(decodelab.create_decoder("mulo"))
    report = benchmark_decoders(
        pipe.model, conds, {"ar": {"name": "ar"}, "mulo": {"name": "mulo", "tau": 0.05}},
        sampling=SamplingConfig(), repeats=1, components={"mulo": {**models, "record": {"drafter": "tiny-lowres"}}},
    )  # fmt: skip
    ar, mulo = report["decoders"]["ar"], report["decoders"]["mulo"]
    assert ar["forwards_by_model"] == {"target": 3 * 16} and ar["components"] == {}
    assert set(mulo["forwards_by_model"]) == {"target", "drafter"} and mulo["forwards_by_model"]["drafter"] > 0
    assert mulo["forwards_per_image_by_model"]["drafter"] == pytest.approx(mulo["forwards_by_model"]["drafter"] / 3)
    assert mulo["forwards_by_model"]["target"] == mulo["batch_forwards"]
    assert mulo["components"] == {"drafter": "tiny-lowres"}
    assert 0 < mulo["time_breakdown_s"]["drafter"] <= mulo["wall_time_s_median"]
    assert "upsampler" in mulo["time_breakdown_s"]
    table = format_table(report)
    assert "drf/img" in table
    assert f"{mulo['forwards_per_image_by_model']['drafter']:8.1f}" in table.splitlines()[3]
    with pytest.raises(ValueError, match="decoder 'mulo' needs a drafter"):
        benchmark_decoders(pipe.model, conds, {"ar": {"name": "ar"}, "mulo": {"name": "mulo"}},
                           sampling=SamplingConfig(), repeats=1)  # fmt: skip


# --------------------------------------------------------------------------- the resumable sampler
def test_sampler_resumes_with_a_drafter_and_records_it(tmp_path: Path) -> None:
    pipe = _pair()
    conds = [0, 1, 2, 3, 4, 5]
    kw = {"decoder": "mulo", "decoder_kwargs": {"tau": 0.05}, "sampling": SamplingConfig(), "seed": 2,
          "batch_size": 2, "shard_size": 4, "progress": False}  # fmt: skip
    first = sample_to_folder(pipe, conds, tmp_path / "s", **kw)
    assert first["generated"] == 6 and first["settings"]["drafter"] == "tiny-lowres"
    assert read_manifest(tmp_path / "s")["settings"]["upsampler"] == "bicubic"
    files = sorted((tmp_path / "s").glob("shard_*/*.png"))
    before = {f.name: f.read_bytes() for f in files}
    files[-1].unlink()
    again = sample_to_folder(_pair(), conds, tmp_path / "s", **kw)  # a fresh process's pipeline
    assert again["resumed"] == 4 and again["generated"] == 2
    assert {f.name: f.read_bytes() for f in sorted((tmp_path / "s").glob("shard_*/*.png"))} == before
    pipe.upsampler = "bilinear"
    with pytest.raises(ValueError, match="other settings"):
        sample_to_folder(pipe, conds, tmp_path / "s", **kw)
    # a missing drafter is refused before the folder is touched
    lost = _pair(drafter=False)
    lost.drafter_spec = str(tmp_path / "gone")
    with pytest.raises(FileNotFoundError, match="gone"):
        sample_to_folder(lost, conds, tmp_path / "t", **kw)
    assert not (tmp_path / "t" / MANIFEST).exists()
