"""Speculative Jacobi Decoding (``sjd``) and greedy Jacobi decoding (``jacobi``).

Teng et al., "Accelerating Auto-regressive Text-to-Image Generation with Training-free Speculative
Jacobi Decoding", ICLR 2025 (arXiv:2410.01699; github.com/tyshiwo1/Accelerating-T2I-AR-with-SJD).

One forward verifies a window of ``L`` draft tokens through the static KV cache. For row ``b``
with ``n`` fixed tokens the forward's inputs are the last fixed token and the first ``L - 1``
drafts, at image positions ``n - 1 .. n + L - 2``; its outputs are the target distributions ``p``
for positions ``n .. n + L - 1``, against which all ``L`` drafts are checked left to right.

- ``sjd``: accept draft ``x`` (drawn from ``q``) while ``u < min(1, p(x) / q(x))``; at the first
  rejection resample from ``norm(max(0, p - q))``. Every forward therefore fixes at least one
  token, and each fixed token is an exact sample from ``ar``'s distribution. Drafts after the
  rejection are re-drafted from this forward's distributions (the Jacobi update) and keep those
  distributions as their ``q``; fresh drafts (beyond the old window) are initialised by copying a
  neighbour (``horizontal``: the token to the left; ``vertical``: the token above) or uniformly
  (``random``), with a one-hot ``q``.
- ``jacobi``: the deterministic criterion, draft == argmax(p). Equals greedy ``ar`` token for token.

Beyond the paper, each behind a flag:

- ``ragged=True`` (default): every row advances by its own accepted count; the forward stays
  batched, with each row at its own positions (``ragged=False`` advances the whole batch by the
  batch minimum, as the public code does). Rows draw from their own generators, so a row's output
  equals running it alone.
- ``refill=True`` (default; with ``ragged``): continuous batching. Called with ``max_batch`` rows
  for more images than that, a row that finishes takes the next image at once: its prefill is
  folded into the next batched forward (``GPT.refill_step``), so no forward waits for the slowest
  row of a fixed batch and no extra forward is spent on prefills. Images keep their own generator
  streams, so each image's tokens are still exactly those of running it alone.
- ``redraft="coupled"`` (lossless; decoder ``sjd_coupled``): re-drafting a position keeps the old
  draft with probability ``min(1, p_new(x) / q_old(x))`` and otherwise samples
  ``norm(max(0, p_new - q_old))`` — a maximal coupling, so the new draft is still distributed
  exactly as ``p_new`` (its declared ``q``) while changing as little as possible between
  iterations. Stable drafts keep the context stable, so the stale tail after a rejection keeps
  being verified instead of being re-rolled (the idea behind coupled / proactive SJD variants).
- ``relax_k > 0`` (lossy, ``lossless=False``): LANTERN-style relaxed acceptance, where the target
  mass of a draft is pooled with its ``relax_k`` nearest tokens in the model's token-embedding
  space, capped at ``relax_delta``.
- ``accept="threshold"`` (lossy): MuLo-SD's test (arXiv:2601.05149) instead of the ratio test: a
  draft is accepted iff the target mass pooled over its ``tau_k`` nearest tokens (itself included;
  cosine in the model's token-embedding space, as the Jacobi decoders have no tokenizer) is at
  least ``tau``; a rejected slot is resampled from ``p`` (there is no draft distribution to
  subtract). ``tau = 1, tau_k = 1`` accepts only drafts the target is certain of.
- ``local = l >= 0`` (with ``accept="threshold"``): MuLo-SD's local resampling in Jacobi form.
  Every draft of the window is tested; after the first rejection only the drafts inside the
  Chebyshev radius-``l`` neighbourhoods of rejected positions (at or after the first rejection)
  are re-drafted from this forward; the other drafts are kept as they are and tested again in the
  next forward (instead of all being re-drafted). Tokens are still fixed only as a verified prefix,
  so greedy decoding keeps equalling ``ar``. Islands need no separate schedule here: every
  re-drafted position is re-drafted in the same forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from decodelab.registry import register_decoder
from decodelab.speculative.base import DecodeContext, Decoder
from decodelab.speculative.contract import SupportsRefill, SupportsTokenEmbeddings
from decodelab.speculative.sampling import knn_table, pooled_mass, resample_region, residual_distribution

INITS = ("horizontal", "vertical", "random")
REDRAFTS = ("sample", "coupled")
ACCEPTS = ("ratio", "threshold")


def _sample_one(probs: Tensor, gen: torch.Generator) -> int:
    """One token from ``probs [V]`` using ``gen``."""
    return int(torch.multinomial(probs, 1, generator=gen))


class JacobiFamilyDecoder(Decoder):
    """Shared loop of ``jacobi`` / ``sjd`` / ``sjd_coupled`` (see the module docstring)."""

    name = "sjd"
    greedy = False

    def __init__(
        self,
        window: int = 16,
        init: str = "horizontal",
        ragged: bool = True,
        redraft: str = "sample",
        relax_k: int = 0,
        relax_delta: float = 0.1,
        refill: bool = True,
        accept: str = "ratio",
        tau: float = 0.1,
        tau_k: int = 1,
        local: int = -1,
    ) -> None:
        if accept not in ACCEPTS:
            raise ValueError(f"accept must be one of {ACCEPTS}, got {accept!r}")
        if not 0.0 <= tau <= 1.0 or tau_k < 1:
            raise ValueError(f"tau must be in [0, 1] and tau_k >= 1, got tau={tau}, tau_k={tau_k}")
        if local >= 0 and accept != "threshold":
            raise ValueError("local resampling tests every draft of the window: it needs accept='threshold'")
        if accept == "threshold" and relax_k:
            raise ValueError("relax_k relaxes the ratio test; the threshold test pools over tau_k neighbours instead")
        if self.greedy and (accept != "ratio" or local >= 0):
            raise ValueError("jacobi is the exact greedy criterion: accept and local do not apply")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if redraft not in REDRAFTS:
            raise ValueError(f"redraft must be one of {REDRAFTS}, got {redraft!r}")
        if relax_k < 0 or relax_delta < 0:
            raise ValueError("relax_k and relax_delta must be >= 0")
        if self.greedy and (relax_k or redraft != "sample"):
            raise ValueError("jacobi is the exact greedy criterion: relax_k and redraft do not apply")
        self.window, self.init, self.ragged, self.redraft = window, init, ragged, redraft
        self.relax_k, self.relax_delta = relax_k, relax_delta
        self.refill = refill
        self.accept, self.tau, self.tau_k, self.local = accept, float(tau), tau_k, local
        self._neighbors: tuple[int, Tensor] | None = None

    @property
    def expectation(self) -> str:  # type: ignore[override]
        if self.greedy:
            return "greedy_equals_ar"
        return "lossless" if self.relax_k == 0 and self.accept == "ratio" else "lossy"

    def window_for(self, num_tokens: int) -> int:
        """The window used for an image of ``num_tokens`` tokens: ``window`` clamped to ``num_tokens``.

        A window longer than the image would only verify padding, while the draft distributions
        (``[batch, window, vocab]``) and every forward grow with it.
        """
        return max(1, min(self.window, num_tokens))

    def can_refill(self, model) -> bool:
        """Continuous batching needs ragged rows, a :class:`SupportsRefill` model and ``window >= T``."""
        return (
            self.ragged and self.refill and isinstance(model, SupportsRefill)
            and self.window_for(model.num_tokens) >= model.num_cond_tokens
        )  # fmt: skip

    # ------------------------------------------------------------------ drafting
    def _fresh(self, cur: Tensor, pos: int, grid: int, vocab: int, gen: torch.Generator) -> int:
        """A fresh draft for ``pos`` from the row's tokens (fixed + drafts) ``cur [N]``; ``grid`` is the row width."""
        if self.init == "random":
            return int(torch.randint(vocab, (1,), generator=gen))
        if self.init == "vertical" and pos >= grid:
            return int(cur[pos - grid])
        if self.init == "horizontal" and pos % grid == 0 and pos >= grid:
            return int(cur[pos - grid])  # a row start copies the token above
        return int(cur[pos - 1])

    def _redraft(self, old: Tensor, q_old: Tensor, p_new: Tensor, reusable: Tensor, gen: torch.Generator) -> Tensor:
        """New drafts ``[r]`` for ``r`` slots, each distributed exactly as its row of ``p_new [r, V]``.

        With ``redraft="coupled"`` a *reusable* old draft (``old ~ q_old``, never tested) is kept
        with probability ``min(1, p_new(old) / q_old(old))``, else the draft comes from
        ``norm(max(0, p_new - q_old))``: a maximal coupling whose marginal is still ``p_new``.
        """
        if self.greedy:
            return p_new.argmax(-1)
        if self.redraft == "coupled":
            idx = torch.arange(old.shape[0])
            u = torch.rand(old.shape[0], generator=gen)
            keep = reusable & (u < (p_new[idx, old] / q_old[idx, old].clamp_min(1e-30)).clamp_max(1.0))
            resid = torch.where(reusable[:, None], residual_distribution(p_new, q_old), p_new)
            fresh = torch.multinomial(resid, 1, generator=gen)[:, 0]
            return torch.where(keep, old, fresh)
        return torch.multinomial(p_new, 1, generator=gen)[:, 0]

    def _neighbor_table(self, model) -> Tensor | None:
        """``relax_k`` nearest other tokens (ratio test), or ``tau_k`` nearest including itself (threshold)."""
        if self.accept == "threshold" and self.tau_k == 1:
            return None
        if not isinstance(model, SupportsTokenEmbeddings):
            what = "relax_k" if self.accept == "ratio" else "tau_k > 1"
            raise ValueError(f"{what} needs a model with token embeddings; {type(model).__name__} has none")
        if self._neighbors is None or self._neighbors[0] != id(model):
            emb = F.normalize(model.token_embeddings().detach().float(), dim=-1)
            if self.accept == "threshold":
                table = knn_table(emb, self.tau_k)
            else:
                sim = emb @ emb.T
                sim.fill_diagonal_(-2.0)
                table = sim.topk(self.relax_k, dim=-1).indices.cpu()
            self._neighbors = (id(model), table)
        return self._neighbors[1]

    # ------------------------------------------------------------------ verification of one row
    def _verify_row(
        self, drafts: Tensor, q: Tensor, p: Tensor, gen: torch.Generator, nbrs: Tensor | None
    ) -> tuple[int, int]:
        """Check ``m`` drafts against ``p [m, V]``; return (accepted drafts k, token at slot k or -1)."""
        m = drafts.shape[0]
        idx = torch.arange(m)
        if self.greedy:
            target = p.argmax(-1)
            ok = drafts == target
            k = int(ok.long().cumprod(0).sum())
            return k, (int(target[k]) if k < m else -1)
        if self.accept == "threshold":  # MuLo-SD: pooled mass >= tau; a rejected slot is drawn from p
            k = int((pooled_mass(p, drafts, nbrs) >= self.tau).long().cumprod(0).sum())
            return (k, -1) if k == m else (k, _sample_one(p[k], gen))
        px = p[idx, drafts]
        if nbrs is not None:  # lossy pooled target mass (LANTERN-style)
            pooled = p.gather(1, nbrs[drafts]).sum(-1)
            px = px + pooled.clamp_max(self.relax_delta)
        ratio = px / q[idx, drafts].clamp_min(1e-30)
        u = torch.rand(m, generator=gen)
        ok = u < ratio.clamp_max(1.0)
        k = int(ok.long().cumprod(0).sum())
        if k == m:
            return k, -1
        return k, _sample_one(residual_distribution(p[k], q[k]), gen)

    def _kept(self, drafts: Tensor, p: Tensor, nbrs: Tensor | None, start: int, grid: tuple[int, int]) -> Tensor:
        """Bool ``[m]``: window slots outside the radius-``local`` neighbourhoods of the rejected drafts."""
        H, W = grid
        rejected = torch.zeros(H * W, dtype=torch.bool)
        rejected[start : start + drafts.shape[0]] = pooled_mass(p, drafts, nbrs) < self.tau
        region = resample_region(rejected.view(H, W), self.local, end=start + drafts.shape[0]).flatten()
        return ~region[start : start + drafts.shape[0]]

    # ------------------------------------------------------------------ main loop
    def _start(self, cur: Tensor, q: Tensor, p0: Tensor, gen: torch.Generator, G: int) -> None:
        """Fix token 0 of a row from ``p0 [V]`` and draft its first window (fresh, one-hot ``q``)."""
        N, V = cur.shape[0], p0.shape[0]
        cur.zero_()
        q.zero_()
        cur[0] = p0.argmax() if self.greedy else _sample_one(p0, gen)
        for j in range(min(self.window, N - 1)):
            cur[1 + j] = self._fresh(cur, 1 + j, G, V, gen)
            q[j] = F.one_hot(cur[1 + j], V).float()

    def _decode(self, ctx: DecodeContext) -> tuple[Tensor, list[Tensor], dict[str, Any]]:
        model, B, M, N = ctx.model, ctx.batch, ctx.num_images, ctx.num_tokens
        L = self.window_for(N)  # never longer than the image: memory and forwards stay bounded by N
        G, V, dev = ctx.grid[1], model.vocab_size, ctx.device  # G: row width (the token above is pos - G)
        T = model.num_cond_tokens
        if B < M and L < T:
            raise ValueError(f"continuous batching folds a {T}-token prefill into a window of {L}: use window >= {T}")
        lossy_test = self.relax_k or self.accept == "threshold"
        nbrs = self._neighbor_table(model) if lossy_test and not self.greedy else None
        gens = ctx.image_gens
        out = torch.zeros(M, N, dtype=torch.long)
        cur = torch.zeros(B, N, dtype=torch.long)  # per row: fixed tokens, then its drafts
        q = torch.zeros(B, L, V)  # draft distributions for positions n .. n + L - 1
        n = [1] * B  # fixed tokens per row
        img = list(range(B))  # image decoded in each row (-1: idle)
        next_img = B
        p0 = ctx.prefill().cpu()
        for b in range(B):
            self._start(cur[b], q[b], p0[b], gens[b], G)
        first = torch.zeros(M, dtype=torch.long)
        first[:B] = 1
        accepted = [first]
        offs = torch.arange(L)
        refill: dict[int, int] = {}

        def finish_rows() -> None:
            nonlocal next_img
            for b in range(B):
                if img[b] >= 0 and n[b] >= N and b not in refill:
                    out[img[b]] = cur[b]
                    if next_img < M and B < M:
                        refill[b], img[b] = next_img, next_img
                        next_img += 1
                    else:
                        img[b] = -1

        finish_rows()
        while any(i >= 0 for i in img):
            n_t = torch.tensor(n)
            pos = (n_t[:, None] - 1 + offs[None]).clamp(0, N - 1)  # [B, L] input positions
            inp = cur.gather(1, pos)
            p = ctx.forward(inp.to(dev), pos.to(dev), refill=refill or None).cpu()  # [B, L, V]: slot j -> n + j
            step = torch.zeros(M, dtype=torch.long)
            for b, i in refill.items():  # rows that started a new image in this forward
                self._start(cur[b], q[b], p[b, T - 1], gens[i], G)
                n[b], step[i] = 1, 1
            outcome = []
            kept: dict[int, Tensor] = {}
            for b in range(B):
                if img[b] < 0 or n[b] >= N or b in refill:
                    outcome.append((0, 0, -1))
                    continue
                m = min(L, N - n[b])
                k, tok = self._verify_row(cur[b, n[b] : n[b] + m], q[b, :m], p[b, :m], gens[img[b]], nbrs)
                outcome.append((m, k, tok))
                if self.local >= 0 and k < m:  # which drafts lie outside the rejection neighbourhoods
                    kept[b] = self._kept(cur[b, n[b] : n[b] + m], p[b, :m], nbrs, n[b], ctx.grid)
            if self.ragged:
                advance = [min(k + 1, m) if m else 0 for m, k, _ in outcome]
            else:
                a = min((min(k + 1, m) for m, k, _ in outcome if m), default=0)
                advance = [min(a, m) if m else 0 for m, _, _ in outcome]
            refill = {}
            for b, ((m, k, tok), a) in enumerate(zip(outcome, advance)):
                if not m:
                    continue
                gen, s = gens[img[b]], n[b]
                if a == k + 1 and tok >= 0:
                    cur[b, s + k] = tok  # the resampled (or greedy-corrected) token
                # slots a .. m-1 are re-drafted from this forward; later positions are fresh
                new_q = torch.zeros(L, V)
                if a < m:
                    # drafts at or before a rejection were tested, so they carry information: only
                    # untested drafts (after the rejection) may be reused by the coupling
                    reusable = torch.arange(a, m) > k
                    old = cur[b, s + a : s + m].clone()
                    cur[b, s + a : s + m] = self._redraft(old, q[b, a:m], p[b, a:m], reusable, gen)
                    new_q[: m - a] = p[b, a:m]
                    if b in kept:  # local resampling: drafts outside the rejection neighbourhoods stay
                        keep = kept[b][a:] & reusable
                        cur[b, s + a : s + m][keep] = old[keep]
                        new_q[: m - a][keep] = q[b, a:m][keep]
                for j in range(m - a, min(L, N - s - a)):
                    t = s + a + j
                    cur[b, t] = self._fresh(cur[b], t, G, V, gen)
                    new_q[j] = F.one_hot(cur[b, t], V).float()
                q[b] = new_q
                n[b] = s + a
                step[img[b]] = a
            accepted.append(step)
            finish_rows()
        return out.to(dev), accepted, {}


@register_decoder("sjd", kind="speculative")
class SJDDecoder(JacobiFamilyDecoder):
    """Speculative Jacobi Decoding: probabilistic acceptance, exactly ``ar``'s distribution."""

    name = "sjd"


@register_decoder("sjd_coupled", kind="speculative")
def sjd_coupled(**kwargs: Any) -> SJDDecoder:
    """SJD with coupled (maximal-coupling) re-drafting: lossless, more stable drafts."""
    dec = SJDDecoder(**{"redraft": "coupled", **kwargs})
    dec.name = "sjd_coupled"
    return dec


@register_decoder("jacobi", kind="speculative")
class GreedyJacobiDecoder(JacobiFamilyDecoder):
    """Greedy Jacobi decoding: accept drafts equal to the argmax; equals greedy ``ar``."""

    name = "jacobi"
    greedy = True
