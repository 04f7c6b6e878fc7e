"""Chameleon-backbone generators as TokenModels: Anole and Lumina-mGPT's image layout.

Chameleon Team, "Chameleon: Mixed-Modal Early-Fusion Foundation Models", arXiv:2405.09818; Anole
(GAIR-NLP, arXiv:2407.06135); Lumina-mGPT (Liu et al., arXiv:2408.02657). transformers
``models/chameleon`` and Lumina-mGPT's inference code were read for facts, not copied.

- transformers' ``ChameleonForConditionalGeneration.forward`` sets every image token's logit to
  the dtype minimum ("image generation is not released"), so ``generate`` can never emit one. The
  adapter therefore runs the backbone (``model.model``) and the ``lm_head`` rows of the image tokens
  itself; the 8192 codes are the ``IMGIMG*`` ids of the vocabulary map (ids 4..8195 in Chameleon's
  tokenizer).
- Layout ``"anole"``: prompt ... ``<racm3:break>`` (image start, 8197), ``H*W`` codes in raster
  order, ``<eoss>`` (8196). 512 px -> 32 x 32.
- Layout ``"lumina_mgpt"``: prompt ... ``<racm3:break>``, a height token and a width token
  (``8804 + H/2``, ``8804 + W/2``), then ``H`` rows of ``W`` codes each closed by the end-of-line
  token 8803, then 8196. 768 px -> 48 x 48 + 48 EOL. Lumina-mGPT lets the model emit the start,
  height and width tokens; the adapter takes them as the prompt's last three ids (they are fixed by
  the requested resolution).
- CFG (Lumina-mGPT's ``LLMImageStartTriggeredUnbatchedClassifierFreeGuidanceLogitsProcessor``): the
  unconditional branch sees only the tokens from the image start on (start, height, width and the
  generated codes) and logits are mixed as ``u + s (c - u)``: here the null condition is the image
  prefix alone, left-padded. Anole uses the same convention in this adapter (its own inference code
  is not in transformers).
- transformers 5.24 ships Chameleon's VQ *encoder* only (``ChameleonVQVAE`` has no decoder), so
  images need the original VQGAN decoder: :func:`load_chameleon` reads the release's
  ``vqgan.ckpt`` (+ ``vqgan.yaml``) from the weights directory or its ``tokenizer/`` folder into
  :class:`~decodelab.vision.adapters.chameleon_vq.ChameleonVQDecoder` (16 px per code: 32 x 32 ->
  512 px, 48 x 48 -> 768 px); or pass ``vq_decoder`` (codes ``[B, H, W]`` -> images in ``[-1, 1]``).
  Without one, :meth:`ChameleonAdapter.decode_images` raises.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from decodelab.vision.adapters.base import VocabularyImageAdapter

__all__ = ["CHAMELEON_DEFAULTS", "CHAMELEON_HUB_IDS", "LAYOUTS", "ChameleonAdapter", "load_chameleon"]

LAYOUTS = ("anole", "lumina_mgpt")
# Anole's transformers-format weights; Lumina-mGPT's are published in its own (xllmx) format and need a
# conversion to ChameleonForConditionalGeneration's layout first.
CHAMELEON_HUB_IDS = {"anole_7b": "leloy/Anole-7b-v0.1-hf", "lumina_mgpt_7b_768": "Alpha-VLLM/Lumina-mGPT-7B-768"}
# SJD's Lumina-mGPT setting (test_lumina_mgpt.py): CFG 3.0, image top-k 2000, temperature 1.
CHAMELEON_DEFAULTS = {"cfg_scale": 3.0, "temperature": 1.0, "top_k": 2000, "top_p": 1.0}
LUMINA_TEMPLATE = "Generate an image of {w}x{h} according to the following prompt:\n{prompt}"
IMAGE_START, IMAGE_END, LUMINA_EOL, LUMINA_SIZE_BASE = 8197, 8196, 8803, 8804


class ChameleonAdapter(VocabularyImageAdapter):
    """A ``ChameleonForConditionalGeneration`` (Anole, Lumina-mGPT weights) as a TokenModel over its codes.

    Args:
        model: the transformers model (eval mode).
        grid: ``(H, W)`` codes (Anole 512 px: 32 x 32; Lumina-mGPT 768 px: 48 x 48).
        layout: ``"anole"`` or ``"lumina_mgpt"`` (see the module docstring).
        prompt_length: prompt positions ``T``; the prompt must end with :meth:`image_prefix`.
        pad_token_id: the left-padding id (default: the config's ``pad_token_id``).
        image_start_id, image_end_id, eol_id, size_token_base: Chameleon's token ids.
        vq_decoder: codes ``[B, H, W]`` -> images ``[B, 3, h, w]`` (Chameleon's VQGAN decoder).
    """

    def __init__(
        self,
        model,
        grid: tuple[int, int] = (32, 32),
        layout: str = "anole",
        prompt_length: int = 64,
        pad_token_id: int | None = None,
        image_start_id: int = IMAGE_START,
        image_end_id: int = IMAGE_END,
        eol_id: int = LUMINA_EOL,
        size_token_base: int = LUMINA_SIZE_BASE,
        vq_decoder: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if layout == "lumina_mgpt" and (grid[0] % 2 or grid[1] % 2):
            raise ValueError(f"Lumina-mGPT's size tokens count pairs of codes: the grid must be even, got {grid}")
        pad = model.config.pad_token_id if pad_token_id is None else pad_token_id
        if pad is None:
            raise ValueError("the model config has no pad_token_id: pass pad_token_id= (Chameleon's <pad>)")
        img2bpe = model.model.vocabulary_mapping.img2bpe
        codes = sorted(img2bpe)
        if not codes or codes != list(range(len(codes))):
            raise ValueError("the model's vocabulary map must name image tokens IMGIMG* for codes 0..V-1")
        code_to_id = torch.tensor([img2bpe[c] for c in codes])
        eol = eol_id if layout == "lumina_mgpt" else None
        super().__init__(model, model.model, grid, prompt_length, code_to_id, pad, eol)
        self.layout = layout
        self.image_start_id, self.image_end_id = int(image_start_id), int(image_end_id)
        self.size_token_base = int(size_token_base)
        self._vq_decoder = vq_decoder

    def image_prefix(self) -> list[int]:
        """The ids a prompt ends with: the image start (and, for Lumina-mGPT, the height and width tokens)."""
        if self.layout == "anole":
            return [self.image_start_id]
        H, W = self.grid
        return [self.image_start_id, self.size_token_base + H // 2, self.size_token_base + W // 2]

    def check_condition(self, cond: Tensor) -> None:
        super().check_condition(cond)
        prefix = torch.tensor(self.image_prefix(), device=cond.device)
        if cond.shape[0] and not bool((cond[:, -len(prefix) :] == prefix).all()):
            raise ValueError(
                f"every prompt must end with the image prefix {prefix.tolist()} "
                f"({self.layout} layout, grid {self.grid}); the adapter's prompt encoder appends it"
            )

    def null_condition(self, cond: Tensor) -> Tensor:
        """The image prefix alone, left-padded (the unconditional branch starts at the image start token)."""
        null = torch.full_like(cond, self.pad_token_id)
        prefix = self.image_prefix()
        null[:, -len(prefix) :] = torch.tensor(prefix, dtype=cond.dtype, device=cond.device)
        return null

    def image_sequence(self, tokens: Tensor) -> Tensor:
        """The generated ids after the prompt: the codes' ids (rows + EOL for Lumina-mGPT), then ``<eoss>``."""
        ids = self.image_ids(tokens)
        end = torch.full((ids.shape[0], 1), self.image_end_id, dtype=ids.dtype, device=ids.device)
        return torch.cat([ids, end], 1)

    @torch.no_grad()
    def decode_images(self, tokens: Tensor) -> Tensor:
        if self._vq_decoder is None:
            raise NotImplementedError(
                "transformers' ChameleonVQVAE has no decoder: put Chameleon's tokenizer/vqgan.ckpt (+ vqgan.yaml) in "
                "the weights directory, or pass vq_decoder= (e.g. decodelab.vision.adapters.import_chameleon_vq(FILE): "
                "codes [B, H, W] -> images in [-1, 1]) to decode images"
            )
        return self._vq_decoder(tokens.reshape(-1, *self.grid).to(self.device)).float().clamp(-1, 1)


def load_chameleon(
    name: str = "anole_7b",
    weights: str | Path | None = None,
    *,
    layout: str | None = None,
    grid: tuple[int, int] | None = None,
    prompt_length: int = 96,
    vq_decoder: Callable[[Tensor], Tensor] | None = None,
    vq_checkpoint: str | Path | None = None,
    require_vq: bool = False,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
):
    """Load a Chameleon-backbone checkpoint in transformers' layout offline: ``(adapter, prompt_encoder)``.

    Args:
        name: ``anole_7b`` (layout ``anole``, 32 x 32) or ``lumina_mgpt_7b_768`` (``lumina_mgpt``, 48 x 48).
        weights: local directory (``None``: the hub id in the local HF cache).
        layout, grid: override the name's defaults.
        prompt_length: prompt positions ``T``.
        vq_decoder: Chameleon's VQGAN decoder; by default it is read from ``vq_checkpoint``.
        vq_checkpoint: the release's ``vqgan.ckpt`` (default: ``vqgan.ckpt`` in the weights directory
            or its ``tokenizer/`` folder, with ``vqgan.yaml`` beside it when present); see
            :func:`~decodelab.vision.adapters.chameleon_vq.import_chameleon_vq`.
        require_vq: raise ``FileNotFoundError`` (naming the file and where it goes) when no VQ
            checkpoint is found; otherwise the adapter decodes tokens only.

    Raises:
        FileNotFoundError: missing checkpoint files (the VQ-GAN's only with ``require_vq``).
    """
    from transformers import AutoTokenizer, ChameleonForConditionalGeneration

    from decodelab.vision.adapters.chameleon_vq import VQ_CHECKPOINT, find_chameleon_vq, import_chameleon_vq
    from decodelab.vision.adapters.loading import resolve_weights
    from decodelab.vision.adapters.prompts import PromptEncoder

    key = name.replace("-", "_")
    hub_id = CHAMELEON_HUB_IDS.get(key, name)
    layout = layout or ("lumina_mgpt" if key.startswith("lumina") else "anole")
    grid = grid or ((48, 48) if layout == "lumina_mgpt" else (32, 32))
    path = resolve_weights(weights, hub_id, extra_files=("tokenizer_config.json",))
    if vq_decoder is None:
        vq_path = Path(vq_checkpoint) if vq_checkpoint is not None else find_chameleon_vq(path)
        if vq_path is not None:
            vq_decoder = import_chameleon_vq(vq_path).to(device)
        elif require_vq:
            raise FileNotFoundError(
                f"{name} decodes images with Chameleon's VQ-GAN, which transformers does not ship, and {path} has no "
                f"{VQ_CHECKPOINT} (looked in {path} and {path / 'tokenizer'}): copy tokenizer/{VQ_CHECKPOINT} and "
                "tokenizer/vqgan.yaml of the Chameleon release (facebook/chameleon; Lumina-mGPT keeps them in "
                "ckpts/chameleon/tokenizer/) into that directory, or pass vq_checkpoint=FILE"
            )
    model = ChameleonForConditionalGeneration.from_pretrained(str(path), local_files_only=True, dtype=dtype or "auto")
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else tokenizer.pad_token_id
    adapter = ChameleonAdapter(model.to(device).eval(), grid, layout, prompt_length, pad_token_id=pad,
                               vq_decoder=vq_decoder)  # fmt: skip
    H, W = grid
    px = 16 * H, 16 * W

    def to_ids(prompt: str) -> list[int]:
        text = LUMINA_TEMPLATE.format(w=px[1], h=px[0], prompt=prompt) if layout == "lumina_mgpt" else prompt
        return list(tokenizer(text)["input_ids"]) + adapter.image_prefix()

    return adapter, PromptEncoder(to_ids, prompt_length, adapter.pad_token_id)
