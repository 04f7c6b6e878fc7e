"""LlamaGen text-to-image: decodelab's own GPT (already a TokenModel) + FLAN-T5 caption features.

Sun et al., arXiv:2406.06525; LlamaGen's ``autoregressive/sample/sample_t2i.py`` and
``language/t5.py`` were read for facts, not copied. The GPT needs no adapter (``model_type="t2i"``,
``cls_token_num=120``, ``caption_dim=2048`` is LlamaGen's own layout and its upstream checkpoints load
strictly with :func:`~decodelab.vision.models.gpt.import_llamagen_gpt`); what is external is the text
encoder:

- FLAN-T5-XL's *encoder* (``T5EncoderModel``), last hidden states, at most 120 tokens;
- the caption is padded to 120 and the padding is moved to the left (LlamaGen trains with the
  caption right-aligned), with a mask marking the real tokens; the GPT's null condition is its learned
  ``uncond_embedding`` under the same mask.

The generic :class:`~decodelab.vision.text_encoder.TextEncoder` loads ``AutoModel``, which for a T5
directory is the encoder-decoder and cannot run on captions alone; :class:`T5CaptionEncoder` loads
the encoder only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

__all__ = ["LLAMAGEN_T2I_FILES", "T5CaptionEncoder", "load_llamagen_t2i"]

# The files of a LlamaGen t2i weights directory, as published (peizesun/llamagen_t2i, google/flan-t5-xl).
LLAMAGEN_T2I_FILES = {
    256: ("t2i_XL_stage1_256.pt", "vq_ds16_t2i.pt", "flan-t5-xl"),
    512: ("t2i_XL_stage2_512.pt", "vq_ds16_t2i.pt", "flan-t5-xl"),
}
LLAMAGEN_T2I_HUB = "peizesun/llamagen_t2i (GPT + VQ) and google/flan-t5-xl (text encoder)"
# LlamaGen's sample_t2i.py defaults: cfg 7.5, top-k 1000, temperature 1.
LLAMAGEN_T2I_DEFAULTS = {"cfg_scale": 7.5, "temperature": 1.0, "top_k": 1000, "top_p": 1.0}


class T5CaptionEncoder:
    """Captions -> (T5 encoder states ``[B, T, C]`` left-aligned to ``max_length``, mask ``[B, T]``).

    Args:
        path: a transformers T5 (or FLAN-T5) directory with its tokenizer.
        max_length: caption positions ``T`` (LlamaGen: 120).
        device: where the encoder runs.
        dtype: encoder dtype (default float32; FLAN-T5-XL also runs in bfloat16).
    """

    def __init__(
        self, path: str | Path, max_length: int = 120, device: str = "cpu", dtype: torch.dtype | None = None
    ) -> None:
        from transformers import AutoTokenizer, T5EncoderModel

        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(
                f"no T5 model at {self.path} (config.json missing): download google/flan-t5-xl on a connected "
                "machine and pass its directory"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = T5EncoderModel.from_pretrained(str(self.path), local_files_only=True, dtype=dtype or torch.float32)
        self.model = self.model.eval().to(device)
        self.max_length, self.device = int(max_length), device
        self.dim = int(self.model.config.d_model)

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be a list of strings")
        enc = self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        mask = enc["attention_mask"].bool()
        n = mask.sum(1)  # real tokens per caption (right-padded by the tokenizer)
        # move each caption's n real states to the end: output slot j reads input slot j - (T - n)
        T = self.max_length
        src = (torch.arange(T, device=hidden.device)[None] - (T - n)[:, None]).clamp_min(0)
        left = torch.arange(T, device=hidden.device)[None] >= (T - n)[:, None]
        emb = hidden.gather(1, src[..., None].expand(-1, -1, hidden.shape[-1])) * left[..., None]
        return emb.float(), left


def load_llamagen_t2i(
    weights: str | Path,
    *,
    image_size: int = 512,
    gpt_preset: str = "llamagen_gpt_xl",
    vq_preset: str = "llamagen_vq_16",
    cls_token_num: int = 120,
    caption_dim: int = 2048,
    block_size: int | None = None,
    device: str = "cpu",
):
    """LlamaGen t2i from a local directory: ``(gpt, vq, text_encoder)``.

    ``weights`` holds the files of :data:`LLAMAGEN_T2I_FILES` for ``image_size`` (the GPT and VQ
    ``.pt`` files as published, and the FLAN-T5-XL directory). ``gpt_preset`` / ``vq_preset`` /
    ``cls_token_num`` / ``caption_dim`` / ``block_size`` (default ``(image_size / 16)^2``) select
    other (e.g. test) sizes.

    Raises:
        FileNotFoundError: naming every missing file and where to get it.
    """
    from decodelab.vision.models.gpt import import_llamagen_gpt
    from decodelab.vision.tokenizers.vq import import_llamagen_vq

    if image_size not in LLAMAGEN_T2I_FILES:
        raise ValueError(f"image_size must be one of {sorted(LLAMAGEN_T2I_FILES)}, got {image_size}")
    root = Path(weights).expanduser()
    gpt_file, vq_file, t5_dir = LLAMAGEN_T2I_FILES[image_size]
    missing = [f for f in (gpt_file, vq_file) if not (root / f).is_file()]
    missing += [] if (root / t5_dir / "config.json").is_file() else [f"{t5_dir}/ (a transformers T5 directory)"]
    if missing:
        raise FileNotFoundError(f"{root} lacks {', '.join(missing)}: download {LLAMAGEN_T2I_HUB} into it")
    block_size = block_size or (image_size // 16) ** 2
    gpt = import_llamagen_gpt(root / gpt_file, gpt_preset, model_type="t2i", cls_token_num=cls_token_num,
                              caption_dim=caption_dim, block_size=block_size)  # fmt: skip
    vq = import_llamagen_vq(root / vq_file, vq_preset)
    encoder = T5CaptionEncoder(root / t5_dir, max_length=cls_token_num, device=device)
    return gpt.to(device), vq.to(device), encoder
