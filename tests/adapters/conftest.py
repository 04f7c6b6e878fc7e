"""Tiny random transformers models for the adapter tests (built from the config classes, no files)."""

from __future__ import annotations

import pytest
import torch


def tiny_janus(seed: int = 0, num_embeddings: int = 12, image_size: int = 64, head_std: float = 1.0):
    """A 2-layer Janus with a ``(image_size/16)^2`` grid and ``num_embeddings`` codes, eval mode.

    The generation head is re-drawn with a large std so that logits are spread (the default init
    makes every code nearly equally likely, and greedy ties would test nothing).
    """
    from transformers import JanusConfig, JanusForConditionalGeneration, LlamaConfig
    from transformers.models.janus.configuration_janus import JanusVisionConfig, JanusVQVAEConfig

    text = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=64, max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
    )  # fmt: skip
    vision = JanusVisionConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=image_size, patch_size=16,
        projection_dim=32, num_image_tokens=(image_size // 16) ** 2, mlp_ratio=2.0,
    )  # fmt: skip
    vq = JanusVQVAEConfig(
        embed_dim=4, num_embeddings=num_embeddings, latent_channels=32, base_channels=32,
        channel_multiplier=[1, 1, 2, 2, 4], num_res_blocks=1, projection_dim=32, image_token_embed_dim=32,
        num_hidden_layers=2,
    )  # fmt: skip
    cfg = JanusConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), vq_config=vq.to_dict(), image_token_id=5
    )
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for p in model.model.generation_head.parameters():
            p.normal_(0.0, head_std)
        model.model.generation_embeddings.weight.normal_(0.0, 1.0)
        for name, p in model.model.language_model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.normal_(0.0, 0.3)
        model.get_input_embeddings().weight.normal_(0.0, 1.0)
    gc = model.generation_config
    gc.bos_token_id, gc.pad_token_id, gc.generation_kwargs = 1, 0, {"boi_token_id": 7}
    return model


def janus_prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """Two left-padded prompts (BOS .. <begin_of_image>=7) of different lengths, T = 7."""
    ids = torch.tensor([[0, 0, 1, 10, 11, 12, 7], [1, 13, 14, 15, 16, 17, 7]])
    return ids, ids != 0


@pytest.fixture
def make_janus():
    """Factory fixture: ``make_janus(seed=..., num_embeddings=..., image_size=...)``."""
    return tiny_janus


@pytest.fixture
def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """Two left-padded Janus prompts and their mask (see :func:`janus_prompts`)."""
    return janus_prompts()
