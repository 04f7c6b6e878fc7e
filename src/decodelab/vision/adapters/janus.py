"""Janus / Janus-Pro (transformers' ``JanusForConditionalGeneration``) as a TokenModel.

Chen et al., "Janus-Pro: Unified Multimodal Understanding and Generation with Data and Model Scaling",
arXiv:2501.17811; transformers ``models/janus`` (read for facts, not copied).

How the model generates an image (``generate(generation_mode="image")`` in transformers):

- the prompt is the chat template's user turn with the generation prompt, ending in
  ``<begin_of_image>``; a batch is left-padded with a padding mask;
- image tokens are codes of the VQ codebook (16384 for Janus-Pro), predicted by a separate
  ``generation_head`` on the language model's hidden states; the next input is the code's
  ``prepare_embeddings_for_image_generation`` embedding (``generation_embeddings`` + aligner MLP);
- 24 x 24 = 576 codes in raster order, no structural tokens inside the image;
- CFG doubles the batch: the unconditional prompt is the prompt with every id except BOS and
  ``<begin_of_image>`` replaced by the pad id (same padding mask), and logits are mixed as
  ``u + s (c - u)`` (``ClassifierFreeGuidanceLogitsProcessor``), exactly ``sampling.cfg_mix``;
- rotary positions are sequence slots (padding included).

So the adapter's image vocabulary is the codebook itself, and the TokenModel contract maps one to one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from decodelab.vision.adapters.base import ImageSequenceAdapter
from decodelab.vision.adapters.loading import resolve_weights
from decodelab.vision.adapters.prompts import PromptEncoder

__all__ = ["JanusAdapter", "janus_prompt_encoder", "load_janus", "JANUS_HUB_IDS"]

JANUS_HUB_IDS = {"janus_pro_1b": "deepseek-community/Janus-Pro-1B", "janus_pro_7b": "deepseek-community/Janus-Pro-7B"}
# Janus-Pro's published sampling settings (deepseek-ai/Janus generation_inference.py): cfg 5, temperature 1.
JANUS_DEFAULTS = {"cfg_scale": 5.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0}


class JanusAdapter(ImageSequenceAdapter):
    """A ``JanusForConditionalGeneration`` as a TokenModel over its VQ codes.

    Args:
        model: the transformers model (eval mode).
        prompt_length: prompt positions ``T`` (prompts are left-padded to it).
        bos_token_id, boi_token_id, pad_token_id: default to the model's generation config
            (``generation_kwargs["boi_token_id"]`` for ``<begin_of_image>``).
    """

    def __init__(
        self,
        model,
        prompt_length: int = 64,
        bos_token_id: int | None = None,
        boi_token_id: int | None = None,
        pad_token_id: int | None = None,
    ) -> None:
        gc = model.generation_config
        self.bos_token_id = _pick(bos_token_id, gc.bos_token_id, "bos_token_id")
        self.boi_token_id = _pick(
            boi_token_id, (getattr(gc, "generation_kwargs", None) or {}).get("boi_token_id"), "boi_token_id"
        )
        self.pad_token_id = _pick(pad_token_id, gc.pad_token_id, "pad_token_id")
        vq = model.model.vqmodel
        grid = tuple(int(d) for d in vq.quantize.quant_state_dims)
        super().__init__(model, model.model.language_model, grid, vq.config.num_embeddings, prompt_length, eol=False)

    def embed_prompt(self, ids: Tensor) -> Tensor:
        return self.hf.get_input_embeddings()(ids)

    def embed_image(self, tokens: Tensor) -> Tensor:
        return self.hf.prepare_embeddings_for_image_generation(tokens)

    def image_logits(self, hidden: Tensor) -> Tensor:
        return self.hf.model.generation_head(hidden).float()

    def null_condition(self, cond: Tensor) -> Tensor:
        """Every id except BOS and ``<begin_of_image>`` replaced by the pad id (Janus's unconditional prompt)."""
        keep = (cond == self.bos_token_id) | (cond == self.boi_token_id)
        return torch.where(keep, cond, torch.full_like(cond, self.pad_token_id))

    def token_embeddings(self) -> Tensor:
        """The codes' input embeddings ``[V, D]`` (for relaxed acceptance)."""
        return self.hf.prepare_embeddings_for_image_generation(torch.arange(self.vocab_size, device=self.device))

    @torch.no_grad()
    def decode_images(self, tokens: Tensor) -> Tensor:
        """Codes ``[B, H, W]`` -> images ``[B, 3, h, w]`` in ``[-1, 1]`` through Janus's VQ decoder."""
        pixels = self.hf.model.vqmodel.decode(tokens.reshape(tokens.shape[0], -1).to(self.device))
        return pixels.float().clamp(-1, 1)

    def image_sequence(self, tokens: Tensor) -> Tensor:
        """What ``generate(generation_mode="image")`` returns for these codes: the codes, ``[B, N]``."""
        return tokens.reshape(tokens.shape[0], -1)


def _pick(given: int | None, default: int | None, name: str) -> int:
    if given is not None:
        return int(given)
    if default is None:
        raise ValueError(f"the model's generation config has no {name}: pass {name}= to the adapter")
    return int(default)


def janus_prompt_encoder(processor, adapter: JanusAdapter) -> PromptEncoder:
    """Prompts -> ids the way Janus's processor builds an image-generation prompt (chat template + BOI)."""

    def to_ids(prompt: str) -> list[int]:
        messages = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        ids = processor(text=text, generation_mode="image", return_tensors="pt")["input_ids"]
        return [int(i) for i in torch.as_tensor(ids).reshape(-1)]

    return PromptEncoder(to_ids, adapter.num_cond_tokens, adapter.pad_token_id)


def load_janus(
    name: str = "janus_pro_1b",
    weights: str | Path | None = None,
    *,
    prompt_length: int = 64,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> tuple[JanusAdapter, PromptEncoder]:
    """Load a Janus-Pro checkpoint offline: the adapter and its prompt encoder.

    Args:
        name: ``janus_pro_1b`` or ``janus_pro_7b`` (names the hub id in errors and the cache lookup).
        weights: a local checkpoint directory; ``None`` looks the hub id up in the local HF cache.
        prompt_length: prompt positions ``T``.
        dtype: e.g. ``torch.bfloat16`` (default: the checkpoint's).
        device: where the model runs.
    """
    from transformers import JanusForConditionalGeneration, JanusProcessor

    hub_id = JANUS_HUB_IDS.get(name.replace("-", "_"), name)
    path = resolve_weights(weights, hub_id, extra_files=("tokenizer_config.json",))
    model = JanusForConditionalGeneration.from_pretrained(str(path), local_files_only=True, dtype=dtype or "auto")
    processor = JanusProcessor.from_pretrained(str(path), local_files_only=True)
    tok = processor.tokenizer
    gc = model.generation_config
    # the processor's tokenizer knows <begin_of_image> and the pad id when the generation config does not
    boi = None if (getattr(gc, "generation_kwargs", None) or {}).get("boi_token_id") is not None else tok.boi_token_id
    pad = None if gc.pad_token_id is not None else tok.pad_token_id
    bos = None if gc.bos_token_id is not None else tok.bos_token_id
    adapter = JanusAdapter(
        model.to(device).eval(), prompt_length=prompt_length, bos_token_id=bos, boi_token_id=boi, pad_token_id=pad
    )
    return adapter, janus_prompt_encoder(processor, adapter)
