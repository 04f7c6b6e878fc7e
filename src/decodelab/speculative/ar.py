"""``ar``: plain autoregressive decoding, one image token per forward — the reference decoder.

Every other decoder is judged against it: lossless decoders must reproduce its output
distribution, and speed-ups are measured relative to its forward count and wall time.
"""

from __future__ import annotations

import torch
from torch import Tensor

from decodelab.registry import register_decoder
from decodelab.speculative.base import DecodeContext, Decoder
from decodelab.speculative.sampling import sample_rows


@register_decoder("ar", kind="reference")
class ARDecoder(Decoder):
    """Next-token sampling with the static KV cache: N forwards for N image tokens."""

    name = "ar"
    expectation = "reference"

    def _decode(self, ctx: DecodeContext) -> tuple[Tensor, list[Tensor], dict]:
        B, N = ctx.batch, ctx.num_tokens
        tokens = torch.empty(B, N, dtype=torch.long, device=ctx.device)
        ones = torch.ones(B, dtype=torch.long)
        tokens[:, 0] = sample_rows(ctx.prefill(), ctx.gens)  # [B]
        accepted = [ones]
        for i in range(1, N):
            pos = torch.tensor([i - 1], device=ctx.device)
            probs = ctx.forward(tokens[:, i - 1 : i], pos)  # [B, 1, V] for position i
            tokens[:, i] = sample_rows(probs[:, 0], ctx.gens)
            accepted.append(ones)
        return tokens, accepted, {}
