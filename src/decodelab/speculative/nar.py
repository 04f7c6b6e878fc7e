"""``nar``: next-neighbour decoding — one anti-diagonal of the grid per forward (NAR, arXiv:2503.10696).

A NAR model (:class:`decodelab.vision.models.nar.NAR`) factorises an image along its
anti-diagonals: the tokens ``(i, j)`` with ``i + j = c`` are conditionally independent given the
anti-diagonals before ``c``, each drawn from the mean (in logit space) of the horizontal head at
its left neighbour and the vertical head at its upper neighbour. Decoding is therefore:

1. prefill (the condition) -> token ``(0, 0)``;
2. for ``c = 1 .. H + W - 2``: one forward writes anti-diagonal ``c - 1`` into the cache and
   returns the distributions of every position on anti-diagonal ``c``; all of them are sampled at
   once, each row from its own generator.

An ``n x n`` grid takes ``2n - 1`` target forwards (the prefill included), and the tokens fixed by
step ``c`` are the anti-diagonal's length (``1, 2, ..., n, ..., 2, 1``). Sampling (temperature,
top-k, top-p, classifier-free guidance with its interval counted in generation steps) goes through
:class:`~decodelab.speculative.base.DecodeContext`, so it is the same maths as every other decoder.
Note that upstream's ``generate.py`` counts ``cfg_interval`` in generated *tokens* (guidance stops
once more than ``cfg_interval`` tokens exist); here, as for every decoder, it counts generation
steps (anti-diagonals: guidance for steps ``0..cfg_interval + 1``). With the default ``-1`` (guide
every step) the two agree.

Expectation: ``reference``. For a next-neighbour model this decoder *is* the reference: it draws
exactly from the model's own factorisation (there is no raster ``ar`` run of a NAR model to match —
``ar`` refuses next-neighbour models). It is tested against that factorisation directly: the
cached, step-by-step distributions equal the cache-free, teacher-forced forward's, and on a tiny
vocabulary the decoded samples follow the exact sequence probabilities.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from decodelab.registry import register_decoder
from decodelab.speculative.base import DecodeContext, Decoder
from decodelab.speculative.sampling import sample_rows


@register_decoder("nar", kind="reference")
class NARDecoder(Decoder):
    """Next-neighbour (anti-diagonal) sampling with the static KV cache: ``H + W - 1`` forwards."""

    name = "nar"
    expectation = "reference"
    orders = ("next_neighbor",)

    def check_models(self, models: dict[str, Any]) -> None:
        """The base checks, with a message that says what to do when the target is a raster model."""
        order = getattr(getattr(models.get("target"), "generation_order", None), "name", None)
        if order is not None and order not in self.orders:
            raise ValueError(
                f"decoder 'nar' needs a next-neighbour model (a NAR with the vertical head: nar_b ... nar_xxl, "
                f"test_nar, or import_nar(...)), but this model generates in {order!r} order; decode it with "
                "'ar' or 'sjd' instead"
            )
        super().check_models(models)

    def _decode(self, ctx: DecodeContext) -> tuple[Tensor, list[Tensor], dict]:
        B = ctx.batch
        steps = [p.to(ctx.device) for p in ctx.order.steps()]
        tokens = torch.zeros(B, ctx.num_tokens, dtype=torch.long, device=ctx.device)
        tokens[:, steps[0]] = sample_rows(ctx.prefill(), ctx.gens)[:, None]
        accepted = [torch.full((B,), len(steps[0]), dtype=torch.long)]
        for s in range(1, len(steps)):
            prev, cur = steps[s - 1], steps[s]
            probs = ctx.forward(tokens[:, prev], prev, query_pos=cur)  # [B, |cur|, V]
            tokens[:, cur] = sample_rows(probs, ctx.gens)
            accepted.append(torch.full((B,), len(cur), dtype=torch.long))
        return tokens, accepted, {"steps": len(steps)}
