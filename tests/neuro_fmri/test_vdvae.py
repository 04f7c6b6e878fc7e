"""The VDVAE of Brain-Diffuser's stage 1: presets, latent interface, upstream file layout, strict loading."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from decodelab.hub import CheckpointMismatchError
from decodelab.neuro import brain_diffuser
from decodelab.neuro.brain_diffuser import VDVAE, VDVAE_LATENT_DIM, VDVAE_LAYER_DIMS
from decodelab.neuro.vdvae import (
    VDVAE_IMAGENET64_FILE,
    VDVAE_PRESETS,
    VDVAEConfig,
    VeryDeepVAE,
    load_vdvae,
    parse_layer_string,
)


def _random_model(preset: str = "test", seed: int = 0) -> VeryDeepVAE:
    """A model whose every parameter is random (upstream zero-initialises biases, the prior's last conv, bias_xs)."""
    torch.manual_seed(seed)
    model = VeryDeepVAE(preset).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_imagenet64_preset_is_upstreams_and_gives_brain_diffusers_91168_latents():
    cfg = VDVAE_PRESETS["imagenet64"]
    # openai/vdvae hps.py (imagenet64 <- imagenet32 presets, argument defaults) and data.py (imagenet64 scaling)
    assert (cfg.width, cfg.zdim, cfg.bottleneck_multiple, cfg.custom_width_str) == (512, 16, 0.25, "")
    assert cfg.enc_blocks == "64x11,64d2,32x20,32d2,16x9,16d2,8x8,8d2,4x7,4d4,1x5"
    assert cfg.dec_blocks == "1x2,4m1,4x3,8m4,8x7,16m8,16x15,32m16,32x31,64m32,64x12"
    assert (cfg.no_bias_above, cfg.num_mixtures, cfg.image_size, cfg.image_channels) == (64, 10, 64, 3)
    assert (cfg.shift, cfg.scale) == (-115.92961967, 1.0 / 69.37404)
    assert cfg.latent_layers == 31 and cfg.latent_dim == 91_168 == VDVAE_LATENT_DIM
    sizes = [c * h * w for c, h, w in cfg.latent_shapes()]
    assert sizes == [d for n, d in VDVAE_LAYER_DIMS for _ in range(n)]  # Brain-Diffuser's layer_dims
    assert len(parse_layer_string(cfg.enc_blocks)) == 65 and len(parse_layer_string(cfg.dec_blocks)) == 75

    with torch.device("meta"):
        model = VeryDeepVAE("imagenet64")
    n_params = sum(p.numel() for p in model.parameters())
    assert round(n_params / 1e6) == 125  # openai/vdvae README: "125M parameter model" (ImageNet 64)
    assert n_params == 125_005_860
    keys = model.state_dict()
    assert len(keys) == 2482 and not [k for k in keys if not k.startswith(("encoder.", "decoder."))]
    assert tuple(keys["decoder.out_net.out_conv.weight"].shape) == (100, 512, 1, 1)
    assert tuple(keys["decoder.dec_blocks.0.prior.c4.weight"].shape) == (512 + 32, 128, 1, 1)
    assert [tuple(keys[f"decoder.bias_xs.{i}"].shape)[1:] for i in range(6)] == [
        (512, r, r) for r in (1, 4, 8, 16, 32, 64)
    ]


def test_tiny_presets_encode_and_decode_with_the_right_shapes():
    model = _random_model("test")
    cfg = model.config
    assert cfg.widths() == {1: 16, 4: 12, 8: 8, 16: 8}  # custom widths: the low resolutions are wider
    assert len(model.decoder.bias_xs) == 3  # resolutions 1, 4, 8; 16 > no_bias_above starts from zeros
    assert model.latent_shapes == [(2, 1, 1), (2, 4, 4), (2, 4, 4), (2, 8, 8)]
    x = _images(3, 16)
    z = model.encode_latents(x, generator=_gen(0))
    assert z.shape == (3, 2 + 32 + 32 + 128) == (3, model.latent_dim) and z.dtype == torch.float32
    y = model.decode_latents(z, generator=_gen(1))
    assert y.shape == (3, 3, 16, 16) and 0.0 <= y.min() and y.max() <= 1.0
    assert model.sample(2, generator=_gen(2)).shape == (2, 3, 16, 16)

    layout = _random_model("test-imagenet64-layout")
    z = layout.encode_latents(_images(1, 64), generator=_gen(0))
    assert z.shape == (1, 91_168)
    assert layout.decode_latents(z, generator=_gen(0)).shape == (1, 3, 64, 64)


def test_input_scaling_is_upstreams_imagenet64_preprocessing():
    model = VeryDeepVAE("test")
    x = _images(1, 16)
    x[0, :, 0, :3] = torch.tensor([0.0, 0.5, 1.0])
    got = model.preprocess(x)
    torch.testing.assert_close(got, (x * 255.0 - 115.92961967) / 69.37404)  # data.py: (pixel + shift) * scale
    torch.testing.assert_close(got[0, 0, 0, :3], torch.tensor([-1.671081, 0.166783, 2.004646]), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="16 x 16"):
        model.encode_latents(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\[B, 194\]"):
        model.decode_latents(torch.zeros(1, 10))


def test_output_net_layout_and_mode():
    """Logits, then per channel (R, G, B) M means, M log scales, M tanh coefficients; G += a R, B += b R + c G."""
    model = VeryDeepVAE("test")
    net, m = model.decoder.out_net, model.config.num_mixtures
    with torch.no_grad():
        net.out_conv.weight.zero_()
        bias = torch.zeros(10 * m)
        bias[1] = 5.0  # component 1 wins
        rest = bias[m:].view(3, 3 * m)
        rest[:, 1] = torch.tensor([0.2, 0.1, -0.3])  # means of component 1
        rest[:, m + 1] = -20.0  # log scales (clamped to -7)
        rest[:, 2 * m + 1] = torch.atanh(torch.tensor([0.5, -0.25, 0.4]))  # coefficients
        net.out_conv.bias.copy_(bias)
    out = net.sample(torch.zeros(2, model.config.width, 4, 4), mode=True)
    r, g = 0.2, 0.1 + 0.5 * 0.2
    b = -0.3 - 0.25 * r + 0.4 * g
    torch.testing.assert_close(out[:, :, 0, 0], torch.tensor([[r, g, b]] * 2))
    drawn = net.sample(torch.zeros(2, model.config.width, 4, 4), _gen(0))
    assert (drawn - out).abs().max() < 0.05  # scale e^-7: the logistic draw stays close to the location


def test_upstream_file_layout_round_trips_through_load_vdvae(tmp_path):
    model = _random_model("test", seed=3)
    state = model.state_dict()
    assert all(k.startswith(("encoder.", "decoder.")) for k in state)
    ema = tmp_path / "test-model-ema.th"
    torch.save(state, ema)  # upstream save_model: ema_vae.state_dict()
    ddp = tmp_path / "test-model.th"
    torch.save({f"module.{k}": v for k, v in state.items()}, ddp)  # the DDP-wrapped training model
    x = _images(2, 16, seed=1)
    want_z = model.encode_latents(x, generator=_gen(4))
    want_y = model.decode_latents(want_z, generator=_gen(5))
    for path in (ema, ddp):
        loaded = load_vdvae(path, "test")
        assert isinstance(loaded, VDVAE) and not loaded.training
        assert all(not p.requires_grad for p in loaded.parameters())
        torch.testing.assert_close(loaded.encode_latents(x, generator=_gen(4)), want_z, rtol=0, atol=0)
        torch.testing.assert_close(loaded.decode_latents(want_z, generator=_gen(5)), want_y, rtol=0, atol=0)


def test_bad_files_raise_errors_naming_the_key_or_the_file(tmp_path, monkeypatch):
    state = VeryDeepVAE("test").state_dict()
    cases = {
        "missing": ({k: v for k, v in state.items() if k != "decoder.gain"}, "decoder.gain"),
        "unexpected": ({**state, "decoder.extra": torch.zeros(1)}, "decoder.extra"),
        "shape": ({**state, "decoder.dec_blocks.2.z_proj.weight": torch.zeros(3, 3, 1, 1)}, "dec_blocks.2.z_proj"),
    }
    for name, (sd, key) in cases.items():
        path = tmp_path / f"{name}.th"
        torch.save(sd, path)
        with pytest.raises(CheckpointMismatchError, match=key):
            load_vdvae(path, "test")

    missing = tmp_path / "nowhere" / VDVAE_IMAGENET64_FILE
    with pytest.raises(FileNotFoundError, match="nowhere") as err:
        load_vdvae(missing)
    assert VDVAE_IMAGENET64_FILE in str(err.value) and "openai/vdvae" in str(err.value)
    (tmp_path / "corrupt.th").write_bytes(b"x")
    with pytest.raises(ValueError, match="corrupt.th"):
        load_vdvae(tmp_path / "corrupt.th", "test")
    with pytest.raises(ValueError, match="unknown VDVAE preset"):
        VeryDeepVAE("imagenet65")

    # brain_diffuser.load_vdvae delegates (with the imagenet64 preset, swapped for the tiny one here)
    torch.save(state, tmp_path / "ok.th")
    monkeypatch.setitem(VDVAE_PRESETS, "imagenet64", VDVAE_PRESETS["test"])
    assert isinstance(brain_diffuser.load_vdvae(tmp_path / "ok.th"), VDVAE)


def test_invalid_architectures_are_rejected():
    base = VDVAE_PRESETS["test"]
    with pytest.raises(ValueError, match="bad block"):
        parse_layer_string("16x1,16q2")
    with pytest.raises(ValueError, match="below"):  # a lower resolution narrower than the one above it
        VeryDeepVAE(dataclasses.replace(base, custom_width_str="4:4"))
    with pytest.raises(ValueError, match="latent_layers"):
        VeryDeepVAE(dataclasses.replace(base, latent_layers=99))
    with pytest.raises(ValueError, match="image_size"):
        VeryDeepVAE(dataclasses.replace(base, image_size=32))
    assert isinstance(VDVAEConfig(), VDVAEConfig) and VDVAEConfig() == VDVAE_PRESETS["imagenet64"]


def test_a_fixed_generator_makes_encoding_and_decoding_reproducible():
    model = _random_model("test")
    x = _images(3, 16)
    z1, z2 = model.encode_latents(x, generator=_gen(7)), model.encode_latents(x, generator=_gen(7))
    assert torch.equal(z1, z2) and not torch.equal(z1, model.encode_latents(x, generator=_gen(8)))
    y1, y2 = model.decode_latents(z1, generator=_gen(9)), model.decode_latents(z1, generator=_gen(9))
    assert torch.equal(y1, y2) and not torch.equal(y1, model.decode_latents(z1, generator=_gen(10)))
    # one generator per row: a row does not depend on its batch
    gens = [_gen(s) for s in (11, 12, 13)]
    z_rows = model.encode_latents(x, generator=gens)
    torch.testing.assert_close(z_rows[1:2], model.encode_latents(x[1:2], generator=[_gen(12)]))
    y_rows = model.decode_latents(z_rows, generator=[_gen(s) for s in (21, 22, 23)])
    torch.testing.assert_close(y_rows[2:], model.decode_latents(z_rows[2:], generator=[_gen(23)]))
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        model.encode_latents(x, generator=gens[:2])
    with pytest.raises(ValueError, match="temperature"):
        model.decode_latents(z1, temperature=-1.0)


def test_posterior_means_prior_means_and_output_mode_are_deterministic():
    model = _random_model("test")
    x = _images(2, 16)
    z = model.encode_latents(x, sample=False)
    assert torch.equal(z, model.encode_latents(x, sample=False))
    noisy = model.encode_latents(x, generator=_gen(0))
    assert not torch.equal(z, noisy)  # Brain-Diffuser's z is a posterior sample around that mean
    y1 = model.decode_latents(z, temperature=0.0, sample_output=False)
    y2 = model.decode_latents(z, temperature=0.0, sample_output=False)
    assert torch.equal(y1, y2) and y1.shape == (2, 3, 16, 16)
    # temperature scales the prior's standard deviation: a tiny temperature stays near temperature 0
    y_small = model.decode_latents(z, temperature=1e-6, generator=_gen(1), sample_output=False)
    assert (y_small - y1).abs().max() < 1e-3
    assert not math.isclose(
        (model.decode_latents(z, temperature=1.0, generator=_gen(1), sample_output=False) - y1).abs().max().item(), 0.0
    )
