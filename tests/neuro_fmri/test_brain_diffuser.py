"""Brain-Diffuser's real path on tiny random components of the real classes (shapes and wiring only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from decodelab.neuro.brain_diffuser import (
    VDVAE_LATENT_DIM,
    BrainDiffuser,
    BrainDiffuserConfig,
    BrainDiffuserRegression,
    DualGuidedTransformer,
    clip_text_embeddings,
    clip_vision_embeddings,
    dual_guided_img2img,
    load_brain_diffuser_config,
    load_vdvae,
    load_versatile_diffusion,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "brain-diffuser"
D = 16  # tiny CLIP width (768 in Versatile Diffusion)


class FakeVDVAE(nn.Module):
    """Stands in for the VDVAE: 8x8 images, 48 latents (the real one: 64x64, 91,168)."""

    def __init__(self) -> None:
        super().__init__()
        self.dec = nn.Linear(48, 3 * 8 * 8)

    def encode_latents(self, images):
        return nn.functional.adaptive_avg_pool2d(images, 4).flatten(1)  # [B, 48]

    def decode_latents(self, latents):
        return torch.sigmoid(self.dec(latents)).view(-1, 3, 8, 8)


class FakeTokenizer:
    model_max_length = 77

    def __call__(self, texts, **kwargs):
        ids = torch.stack(
            [torch.randint(0, 100, (77,), generator=torch.Generator().manual_seed(len(t))) for t in texts]
        )

        class Out:
            input_ids = ids

        return Out()


def _unet_kwargs():
    return dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=D,
        attention_head_dim=4,
        norm_num_groups=4,
    )


@pytest.fixture(scope="module")
def vd_folder(tmp_path_factory):
    """Tiny random Versatile Diffusion components saved in its diffusers layout."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    root = tmp_path_factory.mktemp("vd")
    torch.manual_seed(0)
    UNet2DConditionModel(**_unet_kwargs()).save_pretrained(root / "image_unet")
    UNet2DConditionModel(**_unet_kwargs()).save_pretrained(root / "text_unet")
    AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    ).save_pretrained(root / "vae")
    DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False
    ).save_pretrained(root / "scheduler")
    text = CLIPTextModelWithProjection(
        CLIPTextConfig(
            hidden_size=D,
            projection_dim=D,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=100,
            max_position_embeddings=77,
        )
    )
    vision = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=D,
            projection_dim=D,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=2,
        )
    )
    return root, text.eval(), vision.eval()


def test_config_files_hold_the_papers_settings():
    cfg = load_brain_diffuser_config(CONFIGS / "nsd.yaml")
    assert (cfg.alpha_vdvae, cfg.alpha_clip_text, cfg.alpha_clip_vision) == (5e4, 1e5, 6e4)
    assert (cfg.strength, cfg.mix, cfg.steps, cfg.guidance_scale, cfg.eta) == (0.75, 0.4, 50, 7.5, 0.0)
    assert cfg.subjects == [1, 2, 5, 7] and cfg.sessions == 37 and cfg == BrainDiffuserConfig()
    assert load_brain_diffuser_config(CONFIGS / "nsd_subj01.yaml", ["steps=10"]).steps == 10
    assert load_brain_diffuser_config(CONFIGS / "nsd_subj01.yaml").subjects == [1]
    with pytest.raises(ValueError):
        load_brain_diffuser_config(CONFIGS / "nsd.yaml", ["not_a_key=1"])
    assert VDVAE_LATENT_DIM == 91168


def test_missing_assets_raise_errors_naming_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="imagenet64-iter-1600000-model-ema.th"):
        load_vdvae(tmp_path / "vdvae.th")
    (tmp_path / "vdvae.th").write_bytes(b"x")
    with pytest.raises(ValueError, match="vdvae.th is not a VDVAE weights file"):
        load_vdvae(tmp_path / "vdvae.th")
    with pytest.raises(FileNotFoundError, match="image_unet"):
        load_versatile_diffusion(tmp_path)
    with pytest.raises(FileNotFoundError, match="VDVAE"):
        BrainDiffuser(BrainDiffuserConfig())


def test_one_ridge_over_all_tokens_equals_brain_diffusers_ridge_per_token():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 12)), rng.normal(size=(30, 3, 5))
    reg = BrainDiffuserRegression({"clip_text": 7.0}, rescale=False).fit(x, {"clip_text": y})
    pred = reg.predict(x[:4])["clip_text"]
    assert pred.shape == (4, 3, 5)
    for tok in range(3):
        np.testing.assert_allclose(pred[:, tok], Ridge(alpha=7.0).fit(x, y[:, tok]).predict(x[:4]), atol=1e-8)
    rescaled = BrainDiffuserRegression({"clip_text": 7.0}).fit(x, {"clip_text": y}).predict(x[:10])["clip_text"]
    np.testing.assert_allclose(rescaled.std(0), y.std(0), rtol=1e-6)  # Brain-Diffuser's post-hoc rescaling


def test_dual_transformer_mixes_vision_and_text_as_specified():
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    torch.manual_seed(0)
    kw = dict(num_attention_heads=2, attention_head_dim=4, in_channels=8, norm_num_groups=4, cross_attention_dim=D)
    vision, text = Transformer2DModel(**kw).eval(), Transformer2DModel(**kw).eval()
    h, ctx_t, ctx_v = torch.randn(2, 8, 4, 4), torch.randn(2, 77, D), torch.randn(2, 257, D)
    ctx = torch.cat([ctx_t, ctx_v], 1)
    with torch.no_grad():
        tv = vision(h, encoder_hidden_states=ctx_v).sample
        tt = text(h, encoder_hidden_states=ctx_t).sample
        out = DualGuidedTransformer(vision, text, 0.4)(h, encoder_hidden_states=ctx).sample
        only_text = DualGuidedTransformer(vision, text, 1.0)(h, ctx, return_dict=False)[0]
    torch.testing.assert_close(out, h + 0.6 * (tv - h) + 0.4 * (tt - h))
    torch.testing.assert_close(only_text, tt)


def test_clip_embeddings_have_versatile_diffusions_shapes(vd_folder):
    _, text, vision = vd_folder
    t = clip_text_embeddings(text, FakeTokenizer(), [["a cat", "a dog on a mat"], ["x"]])
    v = clip_vision_embeddings(vision, torch.rand(3, 3, 48, 48))
    assert t.shape == (2, 77, D) and v.shape == (3, 257, D)
    torch.testing.assert_close(v[:, 0].norm(dim=-1), torch.ones(3))  # CLS-normalised


def test_brain_diffuser_end_to_end_on_tiny_components(vd_folder):
    root, text, vision = vd_folder
    comp = load_versatile_diffusion(root, clip=False)
    assert sum(isinstance(m, DualGuidedTransformer) for m in comp["unet"].modules()) == 4  # down 1, mid 1, up 2
    comp.update(text_encoder=text, tokenizer=FakeTokenizer(), image_encoder=vision)
    cfg = BrainDiffuserConfig(
        steps=4, image_size=16, vdvae_size=8, alpha_vdvae=10.0, alpha_clip_text=10.0, alpha_clip_vision=10.0
    )
    torch.manual_seed(0)
    bd = BrainDiffuser(cfg, vdvae=FakeVDVAE(), components=comp)
    assert bd.uncond_text.shape == (1, 77, D) and bd.uncond_vision.shape == (1, 257, D)
    rng = np.random.default_rng(0)
    images = torch.rand(12, 3, 32, 32)
    targets = bd.targets(images, [["a red square"], ["two blue circles"]] * 6, batch_size=5)
    assert {k: v.shape for k, v in targets.items()} == {
        "vdvae": (12, 48),
        "clip_text": (12, 77, D),
        "clip_vision": (12, 257, D),
    }
    betas = rng.normal(size=(12, 20))
    bd.fit(betas, targets)
    out = bd.reconstruct(betas[:2])
    assert out["stage1"].shape == out["stage2"].shape == (2, 3, 16, 16)
    assert torch.isfinite(out["stage2"]).all() and 0 <= out["stage2"].min() and out["stage2"].max() <= 1
    torch.testing.assert_close(bd.reconstruct(betas[:2])["stage2"], out["stage2"])  # seeded
    # strength 0 is the stage-1 image through the VAE; the guidance changes the image when it re-noises
    args = (
        comp["unet"],
        comp["scheduler"],
        comp["vae"],
        out["stage1"],
        torch.randn(2, 77, D),
        torch.randn(2, 257, D),
        bd.uncond_text,
        bd.uncond_vision,
    )
    vae = comp["vae"]
    with torch.no_grad():
        round_trip = ((vae.decode(vae.encode(out["stage1"] * 2 - 1).latent_dist.mode()).sample + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(dual_guided_img2img(*args, strength=0.0, steps=4), round_trip)
    a = dual_guided_img2img(*args, strength=0.75, steps=4, generator=torch.Generator().manual_seed(1))
    b = dual_guided_img2img(
        *args, strength=0.75, steps=4, guidance_scale=1.0, generator=torch.Generator().manual_seed(1)
    )
    assert not torch.allclose(a, b)
