"""Chameleon's VQ-GAN decoder: the release's key layout, strict loading, sizes, the transformers encoder, pipelines.

The reference decoder below is a functional re-statement of taming-transformers' decoder maths over
a raw state dict (convolutions, GroupNorm 32 / eps 1e-6, swish, single-head attention written with
``bmm`` and an explicit ``1/sqrt(C)``), independent of the module under test: loading the
release's layout must reproduce it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from decodelab.hub import CheckpointMismatchError
from decodelab.vision.adapters.chameleon_vq import (
    CHAMELEON_VQ_CONFIG,
    ChameleonVQDecoder,
    find_chameleon_vq,
    import_chameleon_vq,
    read_chameleon_vq_yaml,
)

# A small decoder with every structural feature of the release: 3 levels, 2 blocks per level (so
# nin_shortcut at width changes), attention at one level (resolution 8 of 16) and in the bottleneck.
TINY = dict(codebook_size=16, embed_dim=8, z_channels=32, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
            attn_resolutions=(8,), resolution=16)  # fmt: skip


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():  # norms' affine parameters too: a mis-mapped norm key would show
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if p.dim() > 1 else 0.5) + (1.0 if p.dim() == 1 else 0))
    return module.eval()


def _tiny(seed: int = 0, **kw) -> ChameleonVQDecoder:
    return _randomize(ChameleonVQDecoder(**{**TINY, **kw}), seed)


def _yaml_text(cfg: dict) -> str:
    dd = dict(double_z=False, z_channels=cfg["z_channels"], resolution=cfg["resolution"], in_channels=3, out_ch=3,
              ch=cfg["ch"], ch_mult=list(cfg["ch_mult"]), num_res_blocks=cfg["num_res_blocks"],
              attn_resolutions=list(cfg["attn_resolutions"]), dropout=0.0)  # fmt: skip
    params = dict(embed_dim=cfg["embed_dim"], n_embed=cfg["codebook_size"], ddconfig=dd,
                  lossconfig=dict(target="taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator"))  # fmt: skip
    return yaml.safe_dump({"model": {"target": "taming.models.vqgan.VQModel", "params": params}})


def _write_release(directory, model: ChameleonVQDecoder, cfg: dict, extra: dict | None = None, yaml_file=True):
    """``vqgan.ckpt`` (Lightning-style ``{"state_dict": ...}``, encoder half and a loss entry) + ``vqgan.yaml``."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["encoder.conv_in.weight"] = torch.randn(cfg["ch"], 3, 3, 3)  # the half transformers loads
    state["quant_conv.weight"] = torch.randn(cfg["embed_dim"], cfg["z_channels"], 1, 1)
    state["loss.discriminator.main.0.weight"] = torch.randn(4, 3, 4, 4)  # training-only, skipped as upstream does
    state.update(extra or {})
    torch.save({"state_dict": state, "global_step": torch.tensor(7)}, directory / "vqgan.ckpt")
    if yaml_file:
        (directory / "vqgan.yaml").write_text(_yaml_text(cfg))
    return directory / "vqgan.ckpt"


# ------------------------------------------------------------------ an independent functional reference


def _conv(sd, p, x, pad=1):
    return F.conv2d(x, sd[p + ".weight"], sd[p + ".bias"], padding=pad)


def _norm(sd, p, x):
    return F.group_norm(x, 32, sd[p + ".weight"], sd[p + ".bias"], eps=1e-6)


def _swish(x):
    return x * torch.sigmoid(x)


def _resnet(sd, p, x):
    h = _conv(sd, p + ".conv1", _swish(_norm(sd, p + ".norm1", x)))
    h = _conv(sd, p + ".conv2", _swish(_norm(sd, p + ".norm2", h)))
    skip = _conv(sd, p + ".nin_shortcut", x, pad=0) if p + ".nin_shortcut.weight" in sd else x
    return skip + h


def _attn(sd, p, x):
    b, c, hh, ww = x.shape
    y = _norm(sd, p + ".norm", x)
    q, k, v = (_conv(sd, f"{p}.{n}", y, pad=0).reshape(b, c, hh * ww) for n in "qkv")
    w = torch.softmax(torch.bmm(q.permute(0, 2, 1), k) * c**-0.5, dim=2)  # [b, query, key]
    out = torch.bmm(v, w.permute(0, 2, 1)).reshape(b, c, hh, ww)
    return x + _conv(sd, p + ".proj_out", out, pad=0)


def _reference_decode(sd: dict, tokens: torch.Tensor, levels: int, blocks: int) -> torch.Tensor:
    z = sd["quantize.embedding.weight"][tokens].permute(0, 3, 1, 2)
    h = _conv(sd, "decoder.conv_in", _conv(sd, "post_quant_conv", z, pad=0))
    h = _resnet(sd, "decoder.mid.block_2", _attn(sd, "decoder.mid.attn_1", _resnet(sd, "decoder.mid.block_1", h)))
    for i in reversed(range(levels)):
        for j in range(blocks):
            h = _resnet(sd, f"decoder.up.{i}.block.{j}", h)
            if f"decoder.up.{i}.attn.{j}.q.weight" in sd:
                h = _attn(sd, f"decoder.up.{i}.attn.{j}", h)
        if i:
            h = _conv(sd, f"decoder.up.{i}.upsample.conv", F.interpolate(h, scale_factor=2.0, mode="nearest"))
    return _conv(sd, "decoder.conv_out", _swish(_norm(sd, "decoder.norm_out", h)))


# ------------------------------------------------------------------ layout, loading, strictness


def test_release_config_and_key_layout() -> None:
    """The defaults are the release's: 8192 x 256 codes, 16 px per code, taming's key names, no level attention."""
    m = ChameleonVQDecoder()
    assert (m.codebook_size, m.embed_dim, m.upsample_factor) == (8192, 256, 16)
    keys = set(m.state_dict())
    assert {"quantize.embedding.weight", "post_quant_conv.weight", "decoder.conv_in.weight",
            "decoder.mid.attn_1.q.weight", "decoder.up.4.block.2.conv2.weight", "decoder.up.4.upsample.conv.weight",
            "decoder.up.3.block.0.nin_shortcut.weight", "decoder.up.1.block.0.nin_shortcut.weight",
            "decoder.norm_out.weight", "decoder.conv_out.bias"} <= keys  # fmt: skip
    assert "decoder.up.2.block.0.nin_shortcut.weight" not in keys  # widths 512 -> 256 -> 256 -> 128 -> 128
    assert not any(".attn." in k for k in keys)  # attn_resolutions: [] -> attention in the bottleneck only
    assert not any(k.startswith("decoder.up.0.upsample") for k in keys)  # full resolution: no up-sampling
    assert m.state_dict()["decoder.up.4.block.0.conv1.weight"].shape == (512, 512, 3, 3)
    assert m.state_dict()["decoder.conv_out.weight"].shape == (3, 128, 3, 3)
    assert CHAMELEON_VQ_CONFIG["ch_mult"] == (1, 1, 2, 2, 4)


def test_tiny_release_file_loads_with_identical_outputs(tmp_path) -> None:
    model = _tiny()
    path = _write_release(tmp_path / "tokenizer", model, TINY)
    loaded = import_chameleon_vq(path)  # sizes from the vqgan.yaml beside it
    assert loaded.config["attn_resolutions"] == [8] and loaded.config["ch_mult"] == [1, 2, 2]
    assert any(".attn.0." in k for k in loaded.state_dict())  # the attention level is really exercised
    tokens = torch.randint(0, 16, (2, 3, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = loaded(tokens)
        assert torch.equal(ours, model(tokens))
        ref = _reference_decode(dict(model.state_dict()), tokens, levels=3, blocks=2)
    assert ours.shape == (2, 3, 12, 20)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    assert float(ours.std()) > 0.1
    assert find_chameleon_vq(tmp_path) == path  # the release keeps it in tokenizer/
    native = loaded.save_pretrained(tmp_path / "native")
    again = ChameleonVQDecoder.from_pretrained(native)
    assert torch.equal(again(tokens), ours)


def test_yaml_missing_reads_sizes_from_the_codebook(tmp_path) -> None:
    model = _tiny(ch_mult=(1, 2, 2, 2, 2, 2), attn_resolutions=())
    path = _write_release(tmp_path, model, TINY, yaml_file=False)
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        import_chameleon_vq(path)  # release widths (ch 128 ...) do not fit a tiny file
    kw = {k: TINY[k] for k in ("z_channels", "ch", "num_res_blocks", "resolution")}
    loaded = import_chameleon_vq(path, ch_mult=(1, 2, 2, 2, 2, 2), attn_resolutions=(), **kw)
    assert (loaded.codebook_size, loaded.embed_dim) == (16, 8)  # from quantize.embedding.weight
    tokens = torch.zeros(1, 2, 2, dtype=torch.long)
    assert torch.equal(loaded(tokens), model(tokens))


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path) -> None:
    model = _tiny()
    state = model.state_dict()
    bad = {"decoder.up.0.block.9.conv1.weight": torch.zeros(3), "post_quant_conv.weight": torch.zeros(32, 8, 3, 3)}
    path = _write_release(tmp_path, model, TINY, extra=bad)
    ckpt = torch.load(path, weights_only=True)
    del ckpt["state_dict"]["decoder.mid.attn_1.k.bias"], ckpt["state_dict"]["quantize.embedding.weight"]
    torch.save(ckpt, path)
    with pytest.raises(CheckpointMismatchError) as err:
        import_chameleon_vq(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "missing keys: decoder.mid.attn_1.k.bias, quantize.embedding.weight" in msg
    assert "unexpected keys: decoder.up.0.block.9.conv1.weight" in msg
    assert "post_quant_conv.weight: checkpoint (32, 8, 3, 3) vs model (32, 8, 1, 1)" in msg
    assert "encoder." not in msg and "loss." not in msg  # the encoder half and training entries are not errors
    assert state["post_quant_conv.weight"].shape == (32, 8, 1, 1)


def test_bad_files_are_clear_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        import_chameleon_vq(tmp_path / "nowhere.ckpt")
    path = _write_release(tmp_path, _tiny(), TINY, yaml_file=False)
    (tmp_path / "other.yaml").write_text("model: {params: {n_embed: 16}}\n")
    with pytest.raises(ValueError, match="other.yaml is not a taming VQ-GAN config"):
        import_chameleon_vq(path, config=tmp_path / "other.yaml")
    with pytest.raises(ValueError, match="attn_type"):
        ChameleonVQDecoder(attn_type="linear")
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 16\)"):
        _tiny()(torch.full((1, 2, 2), 16))


def test_torchscript_archive_is_refused(tmp_path) -> None:
    path = tmp_path / "vqgan.ckpt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(ValueError, match="TorchScript"):
        import_chameleon_vq(path)


def test_decoded_grid_is_sixteen_pixels_per_code() -> None:
    """Chameleon's factor: five levels -> 16 px per code (a 2 x 3 grid is 32 x 48 px)."""
    m = _tiny(ch_mult=(1, 1, 1, 1, 1), attn_resolutions=(), resolution=32)
    assert m.upsample_factor == 16
    with torch.no_grad():
        assert m(torch.zeros(2, 2, 3, dtype=torch.long)).shape == (2, 3, 32, 48)


# ------------------------------------------------------------------ with transformers' encoder half


def _tiny_vqvae(seed: int = 0):
    from transformers import ChameleonVQVAE, ChameleonVQVAEConfig

    cfg = ChameleonVQVAEConfig(embed_dim=8, num_embeddings=16, latent_channels=32, resolution=32, base_channels=32,
                               channel_multiplier=[1, 1, 1, 1, 1], num_res_blocks=1, attn_resolutions=[])  # fmt: skip
    return _randomize(ChameleonVQVAE(cfg), seed)


def test_round_trip_with_the_transformers_encoder(tmp_path) -> None:
    from transformers import ChameleonVQVAE

    vqvae = _tiny_vqvae()
    decoder_only = _tiny(1, ch_mult=(1, 1, 1, 1, 1), attn_resolutions=(), resolution=32)
    dec_state = {k: v for k, v in decoder_only.state_dict().items() if k.startswith("decoder.")}
    dec = ChameleonVQDecoder.from_transformers(vqvae, dec_state)
    assert torch.equal(dec.quantize.embedding.weight, vqvae.quantize.embedding.weight)
    assert dec.upsample_factor == 16
    pixels = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        enc = vqvae.encode(pixels)
        tokens = enc.image_tokens.reshape(2, 2, 3)  # encode -> quantize: codes of a 2 x 3 grid
        latents = vqvae.quant_conv(vqvae.encoder(pixels))
        flat = latents.permute(0, 2, 3, 1).reshape(-1, 8)
        assert torch.equal(dec.quantize.nearest(flat), enc.image_tokens)  # same codebook, same metric
        torch.testing.assert_close(dec.quantize_tokens_to_latents(tokens), enc.quantized_last_hidden_state)
        images = dec(tokens)
    assert len(set(enc.image_tokens.tolist())) > 1
    assert images.shape == pixels.shape  # decode gives the encoded image's size back

    # the release file holds both halves: transformers loads the encoder half, this module the rest
    full = {**vqvae.state_dict(), **dec_state}
    torch.save({"state_dict": full}, tmp_path / "vqgan.ckpt")
    vq_cfg = dict(TINY, ch_mult=(1, 1, 1, 1, 1), attn_resolutions=(), resolution=32)
    (tmp_path / "vqgan.yaml").write_text(_yaml_text(vq_cfg))
    from_file = import_chameleon_vq(tmp_path / "vqgan.ckpt")
    assert torch.equal(from_file(tokens), images)
    twin = ChameleonVQVAE(vqvae.config)
    twin.load_state_dict({k: v for k, v in full.items() if not k.startswith("decoder.")}, strict=True)
    assert torch.equal(twin.encode(pixels).image_tokens, enc.image_tokens)
    assert read_chameleon_vq_yaml(tmp_path / "vqgan.yaml")["ch_mult"] == (1, 1, 1, 1, 1)


def test_from_transformers_refuses_a_decoder_of_another_vqgan() -> None:
    vqvae = _tiny_vqvae()
    other = _tiny(3, ch_mult=(1, 1, 1, 1, 1), attn_resolutions=(), resolution=32)
    with pytest.raises(
        ValueError, match=r"disagree on post_quant_conv.bias, post_quant_conv.weight, quantize.embedding.weight"
    ):
        ChameleonVQDecoder.from_transformers(vqvae, other.state_dict())
    partial = {k: v for k, v in other.state_dict().items() if k.startswith("decoder.") and "conv_out" not in k}
    with pytest.raises(CheckpointMismatchError, match="missing keys: decoder.conv_out.bias, decoder.conv_out.weight"):
        ChameleonVQDecoder.from_transformers(vqvae, partial)


# ------------------------------------------------------------------ end to end: pipelines from a weights directory

CODES = 12
VQ_TINY = dict(codebook_size=CODES, embed_dim=4, z_channels=32, ch=32, ch_mult=(1, 1, 1, 1, 1), num_res_blocks=0,
               attn_resolutions=(), resolution=32)  # fmt: skip


def _write_chameleon_dir(path, make_word_tokenizer, vq_subdir: str | None = "tokenizer"):
    """A tiny Chameleon with the real structural ids (image start 8197, end 8196, Lumina EOL 8803, sizes 8804+)."""
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    def name(c: int) -> str:
        return "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(c)) + "Z"

    words = ["<s>", "<pad>", "</s>", "<image>"] + [f"<img{c}>" for c in range(CODES)] + ["a", "red", "dog", "[UNK]"]
    vocab_map = {"<s>": 0, "<pad>": 1, "</s>": 2, "<image>": 3, **{name(c): 4 + c for c in range(CODES)}}
    vq_config = dict(embed_dim=4, num_embeddings=CODES, latent_channels=32, resolution=32, base_channels=32,
                     channel_multiplier=[1, 1, 1, 1, 1], num_res_blocks=1)  # fmt: skip
    cfg = ChameleonConfig(vocab_size=8900, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=1,
                          bos_token_id=0, eos_token_id=2, vocabulary_map=vocab_map, vq_config=vq_config)  # fmt: skip
    torch.manual_seed(0)
    model = ChameleonForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 1.0)
    model.save_pretrained(path)
    make_word_tokenizer(words, pad_token="<pad>", bos_token="<s>", eos_token="</s>").save_pretrained(path)
    vq = _randomize(ChameleonVQDecoder(**VQ_TINY), 5)
    if vq_subdir is not None:
        _write_release(path / vq_subdir, vq, VQ_TINY)
    return vq


@pytest.mark.parametrize("name", ["lumina-mgpt-7b-768", "anole-7b"])
def test_pipeline_decodes_images_through_the_vq(tmp_path, make_word_tokenizer, name) -> None:
    from decodelab.vision.pipeline import load_pipeline

    vq = _write_chameleon_dir(tmp_path / "ckpt", make_word_tokenizer, "tokenizer" if "lumina" in name else ".")
    pipe = load_pipeline(name, weights=tmp_path / "ckpt", grid=(2, 4), prompt_length=24)
    out = pipe(prompts=["a red dog", "a dog"], decoder="ar", seed=0, cfg_scale=2.0, top_k=0)
    assert out.tokens.shape == (2, 2, 4)
    assert [im.size for im in out.images] == [(64, 32), (64, 32)]  # 16 px per code: 4 x 2 codes -> 64 x 32 px
    with torch.no_grad():
        expected = ((vq(out.tokens).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    got = np.stack([np.asarray(im) for im in out.images])
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # the images are the VQ's decoding
    assert got.std() > 5


def test_missing_vq_checkpoint_names_the_file(tmp_path, make_word_tokenizer) -> None:
    from decodelab.vision.adapters import load_adapter
    from decodelab.vision.pipeline import load_pipeline

    _write_chameleon_dir(tmp_path / "ckpt", make_word_tokenizer, vq_subdir=None)
    with pytest.raises(FileNotFoundError, match=r"has no vqgan\.ckpt .*tokenizer.*facebook/chameleon"):
        load_pipeline("lumina-mgpt-7b-768", weights=tmp_path / "ckpt", grid=(2, 4), prompt_length=24)
    model, image_decoder, _, _ = load_adapter("anole-7b", tmp_path / "ckpt", grid=(2, 4), prompt_length=24)
    with pytest.raises(NotImplementedError, match=r"vqgan\.ckpt"):  # tokens-only use (benchmarks) still loads
        image_decoder.decode(torch.zeros(1, 2, 4, dtype=torch.long))
    with pytest.raises(FileNotFoundError, match="elsewhere.ckpt"):
        load_adapter("anole-7b", tmp_path / "ckpt", grid=(2, 4), vq_checkpoint=tmp_path / "elsewhere.ckpt")
