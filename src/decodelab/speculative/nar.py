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
from decodelab.speculative.sampling import rand_rows, residual_distribution, sample_rows


class _NextNeighbourDecoder(Decoder):
    """Shared by the decoders of next-neighbour models: the model check and its message."""

    orders = ("next_neighbor",)

    def check_models(self, models: dict[str, Any]) -> None:
        """The base checks, with a message that says what to do when the target is a raster model."""
        order = getattr(getattr(models.get("target"), "generation_order", None), "name", None)
        if order is not None and order not in self.orders:
            raise ValueError(
                f"decoder {self.name!r} needs a next-neighbour model (a NAR with the vertical head: nar_b ... "
                f"nar_xxl, test_nar, or import_nar(...)), but this model generates in {order!r} order; decode it "
                "with 'ar' or 'sjd' instead"
            )
        super().check_models(models)


@register_decoder("nar", kind="reference")
class NARDecoder(_NextNeighbourDecoder):
    """Next-neighbour (anti-diagonal) sampling with the static KV cache: ``H + W - 1`` forwards."""

    name = "nar"
    expectation = "reference"

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


@register_decoder("nar_sjd", kind="lossless")
class NARSpeculativeDecoder(_NextNeighbourDecoder):
    """Speculative Jacobi decoding over anti-diagonals: ``nar``'s distribution in fewer forwards.

    decodelab's extension of NAR (not in the paper): SJD's draft-and-verify loop with whole
    anti-diagonals in place of single tokens. Each row keeps drafts (and the distributions ``q``
    they were drawn from) for the ``window`` anti-diagonals after its committed ones; drafts start
    as uniform random tokens (``q`` uniform, as SJD's random initialisation). One forward writes the
    last committed anti-diagonal and the drafts, and returns ``p`` for every anti-diagonal of the
    window (the proximity mask makes anti-diagonal ``c + 1``'s distribution depend only on
    anti-diagonals ``<= c``, so the first one is exact). Then, anti-diagonal by anti-diagonal:

    - every position is verified on its own (the tokens of one anti-diagonal are conditionally
      independent given the earlier ones): keep the draft ``x`` with probability
      ``min(1, p(x) / q(x))``, else draw from ``norm(max(0, p - q))``; the anti-diagonal is then an
      exact draw from ``p`` and is committed;
    - if every draft of it was kept, the next anti-diagonal's ``p`` was computed from exactly the
      committed tokens, so it is verified the same way; the first anti-diagonal with a replaced
      token ends the step, and the later ones are re-drafted from this forward's ``p``.

    So each forward commits at least one anti-diagonal (``nar``'s rate) and more when whole
    anti-diagonals are accepted; the samples follow ``nar``'s distribution exactly (tested by
    enumeration). It pays off where anti-diagonals are predictable (backgrounds, short corner
    diagonals); each forward is ``window + 1`` anti-diagonals wide.

    Args:
        window: anti-diagonals drafted ahead of the committed ones (``>= 1``).
    """

    name = "nar_sjd"
    expectation = "lossless"

    def __init__(self, window: int = 3) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an integer >= 1, got {window!r}")
        self.window = window

    def _decode(self, ctx: DecodeContext) -> tuple[Tensor, list[Tensor], dict]:
        B, N, dev = ctx.batch, ctx.num_tokens, ctx.device
        V = ctx.model.vocab_size
        steps = [p.to(dev) for p in ctx.order.steps()]
        S = len(steps)
        tokens = torch.stack([torch.randint(V, (N,), generator=g, device=g.device) for g in ctx.gens]).to(dev)
        q = torch.full((B, N, V), 1.0 / V, device=dev)  # the distribution each draft was drawn from
        tokens[:, steps[0]] = sample_rows(ctx.prefill(), ctx.gens)[:, None]
        accepted = [torch.full((B,), len(steps[0]), dtype=torch.long)]
        done = [1] * B  # committed anti-diagonals per row
        while min(done) < S:
            ins, outs = [], []
            for b in range(B):
                c = done[b] if done[b] < S else S - 1  # a finished row repeats its last step (ignored)
                last = min(c + self.window, S) - 1
                ins.append(torch.cat(steps[c - 1 : last]))
                outs.append(torch.cat(steps[c : last + 1]))
            pos_in, pos_q = _pad_rows(ins), _pad_rows(outs)
            probs = ctx.forward(tokens.gather(1, pos_in), pos_in, query_pos=pos_q)  # [B, Q, V]
            fixed = torch.zeros(B, dtype=torch.long)
            for b in range(B):
                if done[b] >= S:
                    continue
                offset, verifying, committed = 0, True, done[b]
                for c in range(done[b], min(done[b] + self.window, S)):
                    pos = steps[c]
                    p = probs[b, offset : offset + len(pos)]  # [|pos|, V]
                    offset += len(pos)
                    gen = ctx.gens[b : b + 1]
                    if not verifying:  # an earlier anti-diagonal was corrected: re-draft this one from p
                        tokens[b, pos] = sample_rows(p[None], gen)[0]
                        q[b, pos] = p
                        continue
                    x, qb = tokens[b, pos][:, None], q[b, pos]
                    ratio = p.gather(1, x)[:, 0] / qb.gather(1, x)[:, 0].clamp_min(1e-30)
                    keep = rand_rows(gen, len(pos), device=gen[0].device)[0].to(dev) < ratio
                    if not bool(keep.all()):
                        bad = (~keep).nonzero()[:, 0]
                        tokens[b, pos[bad]] = sample_rows(residual_distribution(p[bad], qb[bad])[None], gen)[0]
                        verifying = False
                    committed = c + 1
                    fixed[b] += len(pos)
                done[b] = committed
            accepted.append(fixed)
        return tokens, accepted, {"steps": S, "window": self.window}


def _pad_rows(rows: list[Tensor]) -> Tensor:
    """Stack ragged position lists ``[B, max]``, padding a row by repeating its first entry (a repeated
    input rewrites the same token at the same place; a repeated query is ignored)."""
    n = max(len(r) for r in rows)
    return torch.stack([torch.cat([r, r[:1].expand(n - len(r))]) for r in rows])
