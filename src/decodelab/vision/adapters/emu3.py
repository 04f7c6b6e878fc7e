"""Emu3-Gen (transformers' ``Emu3ForConditionalGeneration``) as a TokenModel.

Wang et al., "Emu3: Next-Token Prediction is All You Need", arXiv:2409.18869; transformers
``models/emu3`` and its documented image-generation recipe (read for facts, not copied).

How the model generates an image (``generate`` with a ``prefix_allowed_tokens_fn``):

- the prompt ends in ``<|image start|>{H}*{W}<|image token|>`` (``Emu3Processor(...,
  return_for_image_generation=True)``), left-padded with the pad id;
- the image is ``H`` rows of ``W`` visual tokens, each row closed by the end-of-line token
  ``<|extra_200|>``, then ``<|extra_201|>`` (EOF), ``<|image end|>`` and EOS. Every structural token
  is forced; visual tokens are the ``<|visual token NNNNNN|>`` ids, code ``NNNNNN`` of the VQ codebook;
- CFG is transformers' ``UnbatchedClassifierFreeGuidanceLogitsProcessor``: a separate
  unconditional pass over a negative prompt (or, without one, the prompt's last token only) plus
  the generated tokens, mixed as ``u + s (c - u)`` on log-probabilities over the whole vocabulary.
  Restricted to visual tokens that is the same distribution as :func:`cfg_mix` on raw logits (the
  log-normalisers are constants per row), so batch doubling with the negative prompt as the null
  condition reproduces it;
- rotary positions count real tokens only (``attention_mask.cumsum - 1``), so a left-padded row
  is shifted by its padding.

The adapter samples over the ``V`` visual codes only (``lm_head`` rows of the visual tokens), and
inserts every row's EOL itself (see :mod:`decodelab.vision.adapters.base`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from decodelab.vision.adapters.base import VocabularyImageAdapter
from decodelab.vision.adapters.loading import resolve_weights
from decodelab.vision.adapters.prompts import PromptEncoder, left_pad

__all__ = ["EMU3_HUB_ID", "Emu3Adapter", "emu3_prompt_encoder", "load_emu3"]

EMU3_HUB_ID = "BAAI/Emu3-Gen-hf"
# Emu3-Gen's published sampling (transformers' Emu3 recipe / BAAI's demo): CFG 3.0, top-k 2048, 720 px -> 90 x 90.
EMU3_DEFAULTS = {"cfg_scale": 3.0, "temperature": 1.0, "top_k": 2048, "top_p": 1.0}
EMU3_NEGATIVE_PROMPT = (
    "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, worst quality, "
    "low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry."
)


class Emu3Adapter(VocabularyImageAdapter):
    """An ``Emu3ForConditionalGeneration`` as a TokenModel over its VQ codes.

    Args:
        model: the transformers model (eval mode).
        grid: ``(H, W)`` visual tokens (the ``H*W`` written in the prompt).
        prompt_length: prompt positions ``T``.
        negative_prompt_ids: the unconditional prompt's ids (unpadded); ``None``: transformers'
            default, the prompt's last token alone.
        pad_token_id: the left-padding id (default: the text config's).
    """

    def __init__(
        self,
        model,
        grid: tuple[int, int],
        prompt_length: int = 96,
        negative_prompt_ids: list[int] | None = None,
        pad_token_id: int | None = None,
    ) -> None:
        mapping = model.vocabulary_mapping
        if mapping.eol_token_id is None:
            raise ValueError("the model's vocabulary map has no <|extra_200|> (end-of-line) token")
        codes = sorted(mapping.img2bpe)
        if codes != list(range(len(codes))):
            raise ValueError("the model's visual tokens must cover codes 0..V-1")
        pad = model.config.text_config.pad_token_id if pad_token_id is None else pad_token_id
        code_to_id = torch.tensor([mapping.img2bpe[c] for c in codes])
        super().__init__(model, model.model.text_model, grid, prompt_length, code_to_id, pad, mapping.eol_token_id)
        vocab_map = model.config.vocabulary_map
        self.eof_token_id = vocab_map.get("<|extra_201|>")
        self.eoi_token_id = vocab_map.get("<|image end|>")
        self.eos_token_id = model.config.text_config.eos_token_id
        if negative_prompt_ids is not None:
            negative_prompt_ids = [int(i) for i in negative_prompt_ids]
            left_pad([negative_prompt_ids], prompt_length, self.pad_token_id)  # checks the length
        self.negative_prompt_ids = negative_prompt_ids

    def null_condition(self, cond: Tensor) -> Tensor:
        """The negative prompt, left-padded (or, without one, the prompt's last token alone) for every row."""
        B, T = cond.shape
        if self.negative_prompt_ids is None:
            null = torch.full_like(cond, self.pad_token_id)
            null[:, -1] = cond[:, -1]
            return null
        ids, _ = left_pad([self.negative_prompt_ids], T, self.pad_token_id)
        return ids.to(cond.device).expand(B, T).clone()

    def image_sequence(self, tokens: Tensor) -> Tensor:
        """The ids ``generate`` returns after the prompt: rows + EOL each, EOF, EOI, EOS, ``[B, H*(W+1)+3]``."""
        ids = self.image_ids(tokens)
        tail = torch.tensor([self.eof_token_id, self.eoi_token_id, self.eos_token_id], device=ids.device)
        return torch.cat([ids, tail.expand(ids.shape[0], 3)], 1)

    @torch.no_grad()
    def decode_images(self, tokens: Tensor) -> Tensor:
        """Codes ``[B, H, W]`` -> images ``[B, 3, h, w]`` in ``[-1, 1]`` through Emu3's VQ decoder."""
        H, W = self.grid
        pixels = self.hf.model.vqmodel.decode(tokens.reshape(-1, H, W).to(self.device))
        return pixels.float().clamp(-1, 1)


def emu3_prompt_encoder(processor, adapter: Emu3Adapter, image_area: int | None = None) -> PromptEncoder:
    """Prompts -> ids as ``Emu3Processor(..., return_for_image_generation=True)`` builds them (grid checked)."""
    H, W = adapter.grid

    def to_ids(prompt: str) -> list[int]:
        area = {} if image_area is None else {"image_area": image_area}
        out = processor(text=[prompt], return_for_image_generation=True, return_tensors="pt", **area)
        size = [int(s) for s in torch.as_tensor(out["image_sizes"]).reshape(-1)[:2]]
        if size != [H, W]:
            raise ValueError(f"the processor asks for a {size[0]}x{size[1]} token grid, the adapter decodes {H}x{W}")
        return [int(i) for i in out["input_ids"].reshape(-1)]

    return PromptEncoder(to_ids, adapter.num_cond_tokens, adapter.pad_token_id)


def load_emu3(
    name: str = "emu3_gen",
    weights: str | Path | None = None,
    *,
    prompt_length: int = 96,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    negative_prompt: str | None = EMU3_NEGATIVE_PROMPT,
    image_area: int | None = None,
) -> tuple[Emu3Adapter, PromptEncoder]:
    """Load Emu3-Gen offline: the adapter and its prompt encoder.

    The grid is what the processor asks for at ``image_area`` pixels (default: the processor's,
    720 x 720 -> 90 x 90 tokens); ``negative_prompt`` is the unconditional prompt (``None``:
    transformers' default, the prompt's last token alone).
    """
    from transformers import Emu3ForConditionalGeneration, Emu3Processor

    path = resolve_weights(weights, EMU3_HUB_ID, extra_files=("tokenizer_config.json",))
    model = Emu3ForConditionalGeneration.from_pretrained(str(path), local_files_only=True, dtype=dtype or "auto")
    processor = Emu3Processor.from_pretrained(str(path), local_files_only=True)
    area = {} if image_area is None else {"image_area": image_area}
    probe = processor(text=["a"], return_for_image_generation=True, return_tensors="pt", **area)
    H, W = (int(s) for s in torch.as_tensor(probe["image_sizes"]).reshape(-1)[:2])
    neg = None
    if negative_prompt is not None:
        neg = [int(i) for i in processor(text=[negative_prompt], return_tensors="pt")["input_ids"].reshape(-1)]
    adapter = Emu3Adapter(model.to(device).eval(), (H, W), prompt_length=prompt_length, negative_prompt_ids=neg)
    return adapter, emu3_prompt_encoder(processor, adapter, image_area)
