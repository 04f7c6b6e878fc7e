"""Prompts -> left-padded prompt ids for the adapters, and the VQ decoder as a pipeline tokenizer."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["AdapterImageDecoder", "PromptEncoder", "left_pad"]


def left_pad(seqs: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad id lists to ``length``: ids ``[B, length]`` and mask ``[B, length]`` (True at real ids).

    Raises:
        ValueError: a sequence is longer than ``length`` (truncating would cut the image prefix).
    """
    too_long = [len(s) for s in seqs if len(s) > length]
    if too_long:
        raise ValueError(
            f"a prompt has {max(too_long)} tokens but the adapter's prompt_length is {length}: "
            "shorten the prompt or load the adapter with a larger prompt_length"
        )
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), length, dtype=torch.bool)
    for b, s in enumerate(seqs):
        if len(s):
            ids[b, length - len(s) :] = torch.tensor(list(s), dtype=torch.long)
            mask[b, length - len(s) :] = True
    return ids, mask


class PromptEncoder:
    """The pipeline's text encoder for an adapter: prompts -> (ids ``[B, T]``, mask ``[B, T]``).

    Args:
        to_ids: one prompt -> its token ids, image prefix included (the family's processor call).
        length: ``T``, the adapter's ``prompt_length``.
        pad_id: the id placed at padded slots.
    """

    def __init__(self, to_ids: Callable[[str], list[int]], length: int, pad_id: int) -> None:
        self.to_ids, self.max_length, self.pad_id = to_ids, int(length), int(pad_id)

    def __call__(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be a list of strings")
        return left_pad([self.to_ids(p) for p in prompts], self.max_length, self.pad_id)


class AdapterImageDecoder(nn.Module):
    """The adapter's VQ decoder in the shape pipelines expect of a tokenizer.

    ``codebook_size`` is the adapter's image vocabulary; :meth:`decode` maps image codes
    ``[B, H, W]`` to images ``[B, 3, h, w]`` in ``[-1, 1]`` through the model's own VQ decoder.
    """

    def __init__(self, adapter: nn.Module) -> None:
        super().__init__()
        self._adapter = [adapter]  # not a submodule: the pipeline owns the adapter once
        self.codebook_size = adapter.vocab_size

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        return self._adapter[0].decode_images(tokens)
