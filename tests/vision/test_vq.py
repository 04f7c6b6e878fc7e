"""Tests for the LlamaGen-layout VQ tokenizer (all on the tiny ``test_vq`` preset except the size checks)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from decodelab.hub import CheckpointMismatchError, load_pretrained
from decodelab.registry import MODELS
from decodelab.vision.tokenizers import VQModel, import_llamagen_vq
from decodelab.vision.tokenizers import vq as vq_module


def make_vq(seed: int = 0, **kwargs) -> VQModel:
    torch.manual_seed(seed)
    return vq_module.test_vq(**kwargs).eval()


def images(b: int = 2, h: int = 16, w: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def vq() -> VQModel:
    return make_vq()


def test_registered_as_tokenizers() -> None:
    names = MODELS.list(kind="tokenizer")
    assert {"llamagen_vq_16", "llamagen_vq_8", "test_vq"} <= set(names)
    model = MODELS.create("test_vq", codebook_size=32)
    assert isinstance(model, VQModel) and model.codebook_size == 32


def test_properties_and_shapes(vq: VQModel) -> None:
    assert (vq.downsample_factor, vq.codebook_size, vq.embed_dim) == (4, 64, 4)
    tokens = vq.encode(images(2, 16, 24))
    assert tokens.shape == (2, 4, 6) and tokens.dtype == torch.long
    assert int(tokens.min()) >= 0 and int(tokens.max()) < 64
    out = vq.decode(tokens)
    assert out.shape == (2, 3, 16, 24) and out.dtype == torch.float32
    assert vq.encode_latents(images()).shape == (2, 4, 4, 4)
    assert vq.quantize_tokens_to_latents(tokens).shape == (2, 4, 4, 6)


def test_encode_is_nearest_normalised_code(vq: VQModel) -> None:
    x = images(3, 16, 16)
    with torch.no_grad():
        z = vq.encode_latents(x)  # [B, D, h, w]
    assert torch.allclose(z.norm(dim=1), torch.ones(()), atol=1e-5)  # l2-normalised latents
    flat = z.permute(0, 2, 3, 1).reshape(-1, vq.embed_dim)
    codebook = F.normalize(vq.quantize.embedding.weight.detach(), dim=-1)
    dist = ((flat[:, None, :] - codebook[None, :, :]) ** 2).sum(-1)  # [N, K]
    expected = dist.argmin(1).reshape(3, 4, 4)
    assert torch.equal(vq.encode(x), expected)


def test_encode_without_l2_norm_uses_raw_codes() -> None:
    model = make_vq(codebook_l2_norm=False)
    x = images()
    with torch.no_grad():
        z = model.encode_latents(x)
    flat = z.permute(0, 2, 3, 1).reshape(-1, model.embed_dim)
    dist = torch.cdist(flat, model.quantize.embedding.weight.detach())
    assert torch.equal(model.encode(x).flatten(), dist.argmin(1))


def test_decode_is_post_quant_conv_then_decoder(vq: VQModel) -> None:
    tokens = torch.randint(0, 64, (2, 4, 5), generator=torch.Generator().manual_seed(3))
    codebook = F.normalize(vq.quantize.embedding.weight, dim=-1)
    with torch.no_grad():
        latents = codebook[tokens].permute(0, 3, 1, 2).contiguous()  # [B, D, h, w]
        expected = vq.decoder(vq.post_quant_conv(latents))
        assert torch.equal(vq.decode(tokens), expected)
        assert torch.equal(vq.decode_code(tokens.flatten(), (2, vq.embed_dim, 4, 5)), vq.decode(tokens))


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.zeros(3, 16, 16), "4-D"),
        (torch.zeros(1, 1, 16, 16), "3 image channels"),
        (torch.zeros(1, 3, 18, 16), "multiples of the downsample factor 4"),
        (torch.zeros(1, 3, 16, 10), "multiples of the downsample factor 4"),
        (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), "float"),
    ],
)
def test_bad_images_raise(vq: VQModel, bad: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        vq.encode(bad)
    with pytest.raises(ValueError, match=match):
        vq(bad)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.full((1, 2, 2), 64), r"\[0, 64\)"),
        (torch.full((1, 2, 2), -1), r"\[0, 64\)"),
        (torch.zeros(4, 4, dtype=torch.long), "3-D"),
        (torch.zeros(1, 2, 2), "integer"),
    ],
)
def test_bad_tokens_raise(vq: VQModel, bad: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        vq.decode(bad)


def test_bad_constructor_sizes_raise() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        vq_module.test_vq(ch=16)
    with pytest.raises(ValueError, match="encoder_ch_mult"):
        vq_module.test_vq(encoder_ch_mult=[])


def test_save_and_from_pretrained_round_trip(vq: VQModel, tmp_path: Path) -> None:
    vq.save_pretrained(tmp_path / "vq")
    assert {p.name for p in (tmp_path / "vq").iterdir()} == {"config.json", "model.safetensors"}
    for loaded in (VQModel.from_pretrained(tmp_path / "vq"), load_pretrained(tmp_path / "vq")):
        assert isinstance(loaded, VQModel) and loaded.config == vq.config
        x = images()
        tokens = vq.encode(x)
        assert torch.equal(loaded.encode(x), tokens)
        with torch.no_grad():
            assert torch.equal(loaded.decode(tokens), vq.decode(tokens))


def _upstream_checkpoint(model: VQModel, path: Path, state: dict[str, torch.Tensor] | None = None) -> Path:
    """Save like LlamaGen's vq_train.py: the model under "model", the GAN parts beside it."""
    state = dict(model.state_dict()) if state is None else state
    disc = {"conv.weight": torch.zeros(2, 2)}
    torch.save({"model": state, "discriminator": disc, "steps": 10}, path)
    return path


def test_import_llamagen_layout(tmp_path: Path) -> None:
    source = make_vq(seed=5)
    source.quantize.codebook_used[-3:] = torch.tensor([1.0, 2.0, 3.0])
    path = _upstream_checkpoint(source, tmp_path / "vq_ds4.pt")
    model = import_llamagen_vq(path, name="test_vq")
    assert not model.training and model.config == source.config
    assert torch.equal(model.quantize.codebook_used, source.quantize.codebook_used)
    x = images()
    tokens = source.encode(x)
    assert torch.equal(model.encode(x), tokens)
    with torch.no_grad():
        assert torch.equal(model.decode(tokens), source.decode(tokens))


def test_import_reads_codebook_shape_and_usage_buffer(tmp_path: Path) -> None:
    source = make_vq(codebook_size=32, codebook_embed_dim=6, codebook_show_usage=False)
    assert "quantize.codebook_used" not in source.state_dict()
    model = import_llamagen_vq(_upstream_checkpoint(source, tmp_path / "a.pt"), name="test_vq")
    assert (model.codebook_size, model.embed_dim, model.quantize.codebook_used) == (32, 6, None)
    # A model built without the buffer may still read a checkpoint that carries it.
    path = _upstream_checkpoint(make_vq(), tmp_path / "b.pt")
    assert import_llamagen_vq(path, name="test_vq", codebook_show_usage=False).quantize.codebook_used is None


def test_import_ema_weights_on_request(tmp_path: Path) -> None:
    """weights="ema" loads the EMA copy vq_train.py --ema saves beside "model"; "model" is the default."""
    source, ema = make_vq(seed=5), make_vq(seed=6)
    path = tmp_path / "vq_ema.pt"
    torch.save({"model": source.state_dict(), "ema": ema.state_dict(), "discriminator": {}, "steps": 10}, path)
    x = images()
    assert torch.equal(import_llamagen_vq(path, name="test_vq").encode(x), source.encode(x))
    loaded = import_llamagen_vq(path, name="test_vq", weights="ema")
    for k, v in ema.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with pytest.raises(ValueError, match="no EMA weights"):
        import_llamagen_vq(_upstream_checkpoint(source, tmp_path / "plain.pt"), name="test_vq", weights="ema")


@pytest.mark.parametrize("mode", ["rename", "drop", "reshape"])
def test_import_mismatch_names_the_key(tmp_path: Path, mode: str) -> None:
    state = dict(make_vq().state_dict())
    key = "decoder.conv_blocks.0.attn.1.proj_out.weight"
    if mode == "rename":
        state["decoder.conv_blocks.0.attn.1.proj.weight"] = state.pop(key)
    elif mode == "drop":
        del state[key]
    else:
        state[key] = torch.zeros(3, 3, 1, 1)
    path = _upstream_checkpoint(make_vq(), tmp_path / "bad.pt", state)
    with pytest.raises(CheckpointMismatchError, match=key.replace(".", r"\.")) as info:
        import_llamagen_vq(path, name="test_vq")
    if mode == "rename":
        assert "decoder.conv_blocks.0.attn.1.proj.weight" in str(info.value)


def test_import_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        import_llamagen_vq(tmp_path / "nope.pt", name="test_vq")


def test_llamagen_vq_16_size_and_layout() -> None:
    # Counts checked against FoundationVision/LlamaGen@ce98ec4 tokenizer/tokenizer_image/vq_model.py VQ_16 /
    # VQ_8 built with that code (README: "VQ 72M" for vq_ds16, "70M" for vq_ds8).
    model = MODELS.create("llamagen_vq_16")
    assert sum(p.numel() for p in model.parameters()) == 71_883_403
    assert model.downsample_factor == 16 and (model.codebook_size, model.embed_dim) == (16384, 8)
    state = model.state_dict()
    assert len(state) == 344
    shapes = {
        "quantize.embedding.weight": (16384, 8),
        "quantize.codebook_used": (65536,),
        "quant_conv.weight": (8, 256, 1, 1),
        "post_quant_conv.weight": (256, 8, 1, 1),
        "encoder.conv_in.weight": (128, 3, 3, 3),
        "encoder.conv_blocks.2.res.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.conv_blocks.3.downsample.conv.weight": (256, 256, 3, 3),
        "encoder.conv_blocks.4.attn.1.q.weight": (512, 512, 1, 1),
        "encoder.mid.1.proj_out.weight": (512, 512, 1, 1),
        "encoder.conv_out.weight": (256, 512, 3, 3),
        "decoder.conv_in.weight": (512, 256, 3, 3),
        "decoder.conv_blocks.0.attn.2.norm.weight": (512,),
        "decoder.conv_blocks.0.upsample.conv.weight": (512, 512, 3, 3),
        "decoder.conv_blocks.1.res.0.nin_shortcut.weight": (256, 512, 1, 1),
        "decoder.conv_blocks.4.res.2.conv2.weight": (128, 128, 3, 3),
        "decoder.conv_out.weight": (3, 128, 3, 3),
    }
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    # attention only at the lowest resolution; no resampling at the ends
    assert not any(k.startswith(f"encoder.conv_blocks.{i}.attn") for k in state for i in range(4))
    assert not any(k.startswith(f"decoder.conv_blocks.{i}.attn") for k in state for i in range(1, 5))
    ends = ("encoder.conv_blocks.4.downsample", "decoder.conv_blocks.4.upsample")
    assert not any(k.startswith(ends) for k in state)
    norm = model.encoder.conv_blocks[0].res[0].norm1
    assert (norm.num_groups, norm.eps) == (32, 1e-6)


def test_llamagen_vq_8_size() -> None:
    model = MODELS.create("llamagen_vq_8")
    assert model.downsample_factor == 8
    assert sum(p.numel() for p in model.parameters()) == 70_109_835


@pytest.mark.parametrize("entropy_ratio", [0.0, 0.1])
def test_training_forward_backprops(entropy_ratio: float) -> None:
    model = make_vq(entropy_loss_ratio=entropy_ratio).train()
    x = images()
    recon, losses = model(x)
    assert recon.shape == x.shape
    assert set(losses) == {"vq_loss", "commit_loss", "entropy_loss", "codebook_usage"}
    assert 0 < float(losses["codebook_usage"]) <= 1 and not losses["codebook_usage"].requires_grad
    assert torch.allclose(losses["commit_loss"], 0.25 * losses["vq_loss"])  # same squared distance, beta 0.25
    assert (float(losses["entropy_loss"].detach()) != 0) == (entropy_ratio > 0)
    total = F.mse_loss(recon, x) + losses["vq_loss"] + losses["commit_loss"] + losses["entropy_loss"]
    total.backward()
    names = (
        "encoder.conv_in.weight",
        "quant_conv.weight",
        "quantize.embedding.weight",
        "decoder.conv_out.weight",
    )
    for name in names:
        grad = model.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_straight_through_and_codebook_gradient_paths() -> None:
    model = make_vq().train()
    recon, losses = model(images())
    recon.square().mean().backward(retain_graph=True)
    # reconstruction reaches the encoder (straight-through) but not the codebook
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.quantize.embedding.weight.grad is None
    model.zero_grad()
    losses["vq_loss"].backward()
    assert model.quantize.embedding.weight.grad.abs().sum() > 0
    assert model.encoder.conv_in.weight.grad is None or model.encoder.conv_in.weight.grad.abs().sum() == 0


def test_usage_window_updates_only_in_training() -> None:
    model = make_vq()
    model(images())
    assert model.quantize.codebook_used.abs().sum() == 0
    model.train()
    _, losses = model(images())
    tokens = model.eval().encode(images())
    assert torch.equal(model.quantize.codebook_used[-32:].long(), tokens.flatten())


def test_restart_dead_codes_changes_only_dead_codes() -> None:
    model = make_vq()
    x = images(4)
    with torch.no_grad():
        latents = model.encode_latents(x).permute(0, 2, 3, 1).reshape(-1, model.embed_dim)
    counts = model.count_code_usage(model.encode(x))
    assert counts.shape == (64,) and int(counts.sum()) == 64
    counts[:10] = 0
    counts[10] = 1
    before = model.quantize.embedding.weight.detach().clone()
    n = model.restart_dead_codes(latents, counts, threshold=1, generator=torch.Generator().manual_seed(0))
    dead = counts <= 1
    assert n == int(dead.sum()) >= 11
    after = model.quantize.embedding.weight.detach()
    assert torch.equal(after[~dead], before[~dead])
    assert not torch.equal(after[dead], before[dead])
    # every restarted code is one of the (normalised) latents
    new = F.normalize(after[dead], dim=-1)
    gap = (new[:, None, :] - latents[None, :, :]).abs().amax(-1)  # [dead, N]
    assert gap.min(1).values.max() < 1e-6
    assert model.restart_dead_codes(latents, torch.ones(64, dtype=torch.long)) == 0
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        model.restart_dead_codes(latents[:, :3], counts)


# ------------------------------------------------------------------------------- patch encoder
def test_patch_encoder_tokens_depend_on_their_own_patch_only() -> None:
    vq = make_vq(encoder_type="patch")
    assert vq.downsample_factor == 4 and vq.encoder_type == "patch"
    x = images(b=1)
    y = x.clone()
    y[:, :, 4:8, 8:12] = torch.rand(3, 4, 4) * 2 - 1  # only the patch of token (1, 2) changes
    changed = (vq.encode_latents(x) - vq.encode_latents(y)).abs().amax(1)[0] > 0
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[1, 2] = True
    assert torch.equal(changed, expected)
    # The convolutional encoder leaks the change into the neighbours (the reason the option exists).
    conv = make_vq()
    assert int(((conv.encode_latents(x) - conv.encode_latents(y)).abs().amax(1)[0] > 0).sum()) > 1


def test_patch_encoder_gives_identical_patches_identical_tokens() -> None:
    vq = make_vq(encoder_type="patch")
    x = torch.full((1, 3, 16, 16), -0.9)  # flat background ...
    x[:, 0, 4:12, 4:12] = 0.8  # ... with a 2x2-token red square
    tokens = vq.encode(x)[0]
    background = torch.ones(4, 4, dtype=torch.bool)
    background[1:3, 1:3] = False
    assert tokens[background].unique().numel() == 1 and tokens[~background].unique().numel() == 1
    z = vq.encode_latents(x)[0]
    assert not torch.allclose(z[:, 0, 0], z[:, 1, 1])  # the two kinds of patch do differ


def test_patch_encoder_round_trip_and_bad_type(tmp_path: Path) -> None:
    vq = make_vq(encoder_type="patch")
    vq.save_pretrained(tmp_path / "vq")
    loaded = load_pretrained(tmp_path / "vq")
    assert loaded.config["encoder_type"] == "patch" and torch.equal(loaded.encode(images()), vq.encode(images()))
    with pytest.raises(ValueError, match="encoder_type"):
        vq_module.test_vq(encoder_type="vit")
