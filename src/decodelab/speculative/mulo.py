"""``mulo``: Multi-Scale Local Speculative Decoding (MuLo-SD).

Peruzzo, Sautière, Habibian, "Multi-Scale Local Speculative Decoding for Image Generation",
CVPR 2026 (arXiv:2601.05149; Qualcomm AI Research; no public code). Written from the paper's
abstract and a second-hand summary of its method (the full text could not be read when this was
written); where those are silent the choice made here is marked *(choice)*.

One round, for every image row of the batch (rows run in lock-step, each at its own positions):

1. **Drafter prefix.** The drafter is the same kind of token model on a grid ``r`` times smaller
   (``r = 2``: an 8x8-token drafter for a 16x16-token target). Its prefix is the target's fixed
   prefix down-sampled by the up-sampler's :meth:`Upsampler.downsample` (``D_r``), keeping the
   low-resolution rows whose ``r`` target rows are all fixed *(choice: whole rows only, so a prefix
   never mixes fixed and draft content)*. Only the drafter cache entries whose token changed are
   rewritten (first changed position onwards; the static cache makes the rest free).
2. **Drafting.** The drafter samples ``draft_rows`` low-resolution rows token by token (one drafter
   forward per token; the paper drafts whole rows; ``draft_rows = 1`` by default *(choice)*).
3. **Up-sampling.** :meth:`Upsampler.upsample` maps the low-resolution grid to the target grid
   (the pixel path decodes, resizes bicubically and re-encodes: :mod:`decodelab.vision.upsample`).
   Rows not drafted yet are filled by repeating the last drafted row *(choice)*; the ``r *
   draft_rows`` target rows under the drafted rows become drafts for every not-yet-fixed position.
4. **Verification.** One target forward gives the final sampling distribution ``p_i`` (after CFG,
   temperature, top-k/top-p, as for every decoder here) at every draft position; draft ``x_i`` is
   accepted iff ``sum_{y in B_k(x_i)} p_i(y) >= tau``, ``B_k(x)`` being the ``k`` nearest codebook
   entries to ``x`` *including x itself* *(choice: k = 1 is the plain threshold p_i(x_i) >= tau)*.
   Neighbours are Euclidean in the target tokenizer's lookup space when the up-sampler exposes it
   (:class:`SupportsCodebook`), else cosine in the target's token-embedding space.
   Every draft is tested, not only up to the first rejection.
5. **Local resampling.** With ``t0`` the first rejected position, the region to resample is the union
   of the ``(2l + 1)^2`` (Chebyshev radius ``l``) neighbourhoods of the rejected positions,
   restricted to positions ``>= t0`` and to the drafted block; every other draft is kept. The
   region's 8-connected components ("rejection islands") are resampled concurrently: each target
   forward resamples the next position (raster order inside an island *(choice)*) of every island;
   an island's first position is drawn from the verification forward itself *(choice: no extra
   forward; for islands after the first its context holds the other islands' rejected drafts)*.
   Resampling draws from ``p`` *(choice: not a residual — a threshold test has no draft
   distribution — and the rejected draft is not excluded, which keeps tau = 1 exact)*, given the current
   tokens, so a position of a later island may see stale drafts of an earlier island that is still
   being resampled — the paper's approximation, and why the decoder is lossy.
   ``islands=False`` resamples the whole region as one island (raster order, one position per forward);
   ``local=False`` is raster-scan speculative decoding: keep the drafts before ``t0``, resample
   ``t0`` from the verification forward, discard the rest (the next round re-drafts from there).
6. The fixed prefix grows to the end of the block (``t0 + 1`` without local resampling); repeat.

Position 0 is sampled from the target's prefill, as ``ar`` does. The target's cache is rewritten
from the first position whose token changed since it was written, so every distribution the target
returns is its exact distribution given the current tokens before that position (``refresh=False``
trades this for shorter forwards: only changed entries are rewritten).

Expectation: ``lossy``. With ``tau = 1`` and ``k = 1`` a draft is accepted only when the target
would sample it with certainty, and every other position is drawn from ``p`` given the tokens it
was verified or resampled with (tested in ``tests/speculative/test_mulo.py``).

Ablations: ``islands=False``, ``local=False``, ``l`` at least the grid width (the whole drafted
suffix after ``t0`` resampled position by position), another :class:`Upsampler` (e.g.
``PixelUpsampler(..., method="bilinear")`` or a learned super-resolution callable), and, without the
drafter, the same threshold test and local re-drafting in the Jacobi decoders
(``sjd`` with ``accept="threshold"``, ``tau``, ``tau_k``, ``local``; see :mod:`.sjd`).

Counts: ``DecodeOutput.nfe`` and ``nfe_by_model["target"]`` are target forwards,
``nfe_by_model["drafter"]`` drafter forwards (each prefill included); the wall time includes the
drafter and the up-sampler; extras break the time down and give tokens per target forward.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from decodelab.registry import register_decoder
from decodelab.speculative.base import DecodeContext, Decoder, create_decoder
from decodelab.speculative.contract import SupportsTokenEmbeddings, TokenModel
from decodelab.speculative.sampling import knn_table, pooled_mass, rejection_islands, resample_region

__all__ = [
    "MuLoDecoder",
    "NearestTokenUpsampler",
    "SupportsCodebook",
    "Upsampler",
    "drafter_prefix_length",
    "knn_table",
    "pooled_mass",
    "rejection_islands",
    "resample_region",
]


# ---------------------------------------------------------------------------------------- protocols
@runtime_checkable
class Upsampler(Protocol):
    """Maps a drafter's token grid to the target's and the target's fixed prefix back (``U_r``, ``D_r``)."""

    def upsample(self, low: Tensor, grid: tuple[int, int]) -> Tensor:
        """Drafter tokens ``[B, h, w]`` -> target draft tokens ``[B, H, W]`` (``grid = (H, W)``)."""

    def downsample(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """Target tokens ``[B, H, W]`` -> drafter tokens ``[B, h, w]`` (``grid = (h, w)``)."""


@runtime_checkable
class SupportsCodebook(Protocol):
    """An up-sampler that knows the target tokenizer's code vectors ``[V, D]`` (for ``k > 1``)."""

    def codebook_vectors(self) -> Tensor: ...


class NearestTokenUpsampler:
    """Token-space ``U_r`` for a drafter and a target that share one tokenizer (and tests).

    Up: each drafter token covers an ``r x r`` block. Down: the top-left token of each block.
    """

    def upsample(self, low: Tensor, grid: tuple[int, int]) -> Tensor:
        H, W = grid
        h, w = low.shape[-2:]
        if H % h or W % w:
            raise ValueError(f"target grid {H}x{W} is not a multiple of the drafter grid {h}x{w}")
        return low.repeat_interleave(H // h, dim=-2).repeat_interleave(W // w, dim=-1)

    def downsample(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        h, w = grid
        H, W = tokens.shape[-2:]
        if H % h or W % w:
            raise ValueError(f"target grid {H}x{W} is not a multiple of the drafter grid {h}x{w}")
        return tokens[..., :: H // h, :: W // w]


# ---------------------------------------------------------------------------------------- helpers
def drafter_prefix_length(n: int, grid: tuple[int, int], low_grid: tuple[int, int]) -> int:
    """Drafter tokens covered by ``n`` fixed target tokens: whole low-resolution rows whose target rows are fixed."""
    (H, W), (h, w) = grid, low_grid
    r = H // h
    return (n // (W * r)) * w


def _sample(probs: Tensor, gen: torch.Generator) -> int:
    return int(torch.multinomial(probs, 1, generator=gen))


class _Rejection(NamedTuple):
    """What one verification forward decided about one row's tested positions ``[a, e)`` (see ``_reject``)."""

    ok: Tensor  # bool [e - a]: the tokens that passed the relaxed test
    decided: int  # positions this forward fixes under local resampling: passed tokens outside the islands, and
    #               each island's first (local=False keeps only the positions before `first`)
    queue: list[list[int]]  # each island's remaining positions, in raster order (resampled by later forwards)
    first: int  # one past the first resampled position; e when every token passed
    islands: int  # rejection islands (0 when every token passed)
    resampled: int  # positions in the islands


class _Stale:
    """Which cached positions of each row hold a token that changed since its cache entry was written.

    The default (exact) bookkeeping only needs ``valid`` (entries before it are consistent); the
    ``refresh=False`` mode also keeps the changed positions themselves (``dirty``) and how far each
    row's cache was ever written (``hi``), so a forward can rewrite just those entries.
    """

    def __init__(self, batch: int, sparse: bool) -> None:
        self.sparse = sparse
        self.dirty: list[set[int]] = [set() for _ in range(batch)]
        self.hi = [0] * batch


def _put(cur: Tensor, valid: list[int], b: int, pos: int, tok: int, stale: _Stale | None = None) -> None:
    """Write one token; the row's cache stays valid before ``pos`` if it changed."""
    if int(cur[b, pos]) != tok:
        cur[b, pos] = tok
        valid[b] = min(valid[b], pos)
        if stale is not None:
            stale.dirty[b].add(pos)


def _set(cur: Tensor, valid: list[int], b: int, start: int, new: Tensor, stale: _Stale | None = None) -> None:
    """Write ``new`` into ``cur[b, start:]``; the row's cache is valid only before the first change."""
    old = cur[b, start : start + new.shape[0]]
    diff = (old != new).nonzero()
    if diff.numel():
        valid[b] = min(valid[b], start + int(diff[0]))
        if stale is not None:
            stale.dirty[b].update((start + diff[:, 0]).tolist())
    cur[b, start : start + new.shape[0]] = new


def _forward(
    ctx: DecodeContext, cur: Tensor, valid: list[int], queries: dict[int, list[int]], stale: _Stale | None = None
) -> dict[int, Tensor]:
    """One batched forward: each row ``b`` in ``queries`` gets the distributions ``[Q_b, V]`` of its positions.

    A row writes ``cur[b]`` from its first stale cache entry up to the last queried position's
    predecessor; rows without queries rewrite one valid entry (the same value). Ragged rows are
    padded by repeating their last input and query. With a sparse ``stale`` a row writes only its
    changed entries before the last query, the entries never written up to it, and the queries'
    predecessors: the entries after a changed token keep what was computed from the old token.
    """
    B = cur.shape[0]
    feeds, qs = [], []
    for b in range(B):
        q = queries.get(b) or []
        if stale is not None and stale.sparse:
            if q:
                z = max(q) - 1
                feed = {p for p in stale.dirty[b] if p <= z} | set(range(stale.hi[b], z + 1)) | {x - 1 for x in q}
            else:  # rewrite entry 0, which depends on nothing that changes, so the row's cache stays as it was
                z = 0
                feed = {0}
                q = [1]
            stale.dirty[b] -= feed
            stale.hi[b] = max(stale.hi[b], z + 1)
            feeds.append(sorted(feed))
        else:
            if q:
                a, z = min(valid[b], min(q) - 1), max(q) - 1
            else:
                a = z = max(valid[b] - 1, 0)
                q = [a + 1]
            feeds.append(list(range(a, z + 1)))
        valid[b] = max(valid[b], z + 1)
        qs.append(q)
    S = max(len(f) for f in feeds)
    pos = torch.tensor([f + f[-1:] * (S - len(f)) for f in feeds])  # [B, S]
    Q = max(len(q) for q in qs)
    qpos = torch.tensor([q + q[-1:] * (Q - len(q)) for q in qs])  # [B, Q]
    tokens = cur.gather(1, pos)
    dev = ctx.device
    probs = ctx.forward(tokens.to(dev), pos.to(dev), query_pos=qpos.to(dev)).cpu()  # [B, Q, V]
    return {b: probs[b, : len(queries[b])] for b in queries if queries[b]}


# ---------------------------------------------------------------------------------------- the decoder
@register_decoder("mulo", kind="speculative")
class MuLoDecoder(Decoder):
    """Multi-scale drafting, relaxed threshold verification, local island-parallel resampling (lossy).

    Args:
        tau: acceptance threshold on the pooled target probability (``1`` with ``k = 1``: only certain tokens).
        k: codebook neighbours pooled per draft, the draft included (``1``: the draft alone).
        l: neighbourhood radius of local resampling (``(2l + 1)^2`` windows).
        islands: resample the 8-connected rejection islands concurrently (``False``: one position per forward).
        local: local resampling (``False``: raster-scan speculative decoding, discard after the first rejection).
        draft_rows: low-resolution rows the drafter samples per round.
        ratio: target grid / drafter grid (``r``), per side.
        drafter_decoder: a registered raster decoder (e.g. ``"sjd_coupled"``) that drafts the whole
            low-resolution image in the first round, which then verifies every target position at once;
            later rounds (only ``local=False`` has them) draft token by token. A lossless decoder keeps
            the drafter's own distribution and only spends fewer drafter forwards *(choice: the paper
            drafts autoregressively; on a CPU a 1-token forward costs nearly as much as a 16-token one)*.
        refresh: after resampled tokens change, recompute every later cache entry of the target from the
            first change (exact: each distribution is the target's given the current tokens). ``False``
            rewrites only the changed entries and the queries' predecessors, so the entries between keep
            what the old tokens gave them *(choice: on a GPU the full recompute is nearly free, on a CPU it
            makes every island forward as long as the rest of the image; the concurrent islands are
            already approximate)*; lossy even at ``tau = 1``.
        reverify: extra verification passes after local resampling *(decodelab's addition, not in the
            paper)*. A kept draft after a resampled position was tested against a context that has since
            changed (the resampled token sees only what precedes it in raster order, not the accepted
            drafts below and to the right of it). Each pass runs one target forward over every position
            after the first resampled one, tests the current tokens again with the same rule, and
            resamples the new rejection islands; it stops when a pass accepts everything or after
            ``reverify`` passes. The first tested position moves right by at least one per pass. ``0``
            (default): the paper's single verification. A position decided again by a pass counts again
            in ``DecodeOutput.accepted`` (its rows then sum past the image's token count);
            ``extras["retested"]`` counts the re-tested positions.
    """

    name = "mulo"
    expectation = "lossy"
    requires = ("drafter", "upsampler")
    orders = ("raster",)

    def __init__(
        self,
        tau: float = 0.1,
        k: int = 1,
        l: int = 1,  # noqa: E741  (the paper's name)
        islands: bool = True,
        local: bool = True,
        draft_rows: int = 1,
        ratio: int = 2,
        drafter_decoder: str | None = None,
        refresh: bool = True,
        reverify: int = 0,
    ) -> None:
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau must be in [0, 1], got {tau}")
        if k < 1:
            raise ValueError(f"k must be >= 1 (the draft itself), got {k}")
        if l < 0:
            raise ValueError(f"l must be >= 0, got {l}")
        if draft_rows < 1:
            raise ValueError(f"draft_rows must be >= 1, got {draft_rows}")
        if ratio < 1:
            raise ValueError(f"ratio must be >= 1, got {ratio}")
        if reverify < 0:
            raise ValueError(f"reverify must be >= 0 (extra verification passes), got {reverify}")
        if reverify and not local:
            raise ValueError("reverify re-tests the drafts kept by local resampling; local=False keeps none")
        self.tau, self.k, self.l = float(tau), k, l
        self.islands, self.local, self.draft_rows, self.ratio = islands, local, draft_rows, ratio
        self.drafter_decoder = drafter_decoder or None
        self.refresh = bool(refresh)
        self.reverify = int(reverify)
        self._sub: Decoder | None = None  # the drafter's own decoder (drafter_decoder), built once
        if self.drafter_decoder is not None:
            self._sub = sub = create_decoder(self.drafter_decoder)
            if sub.requires or "raster" not in sub.orders:
                raise ValueError(f"drafter_decoder must be a raster decoder of one model (ar, jacobi, sjd, "
                                 f"sjd_coupled), got {self.drafter_decoder!r}")  # fmt: skip
        self._table: tuple[int, Tensor] | None = None

    # ------------------------------------------------------------------ checks
    def check_models(self, models: dict[str, Any]) -> None:
        """The base checks; then a raster drafter at ``1/ratio`` of the target grid, same conditions, an Upsampler."""
        super().check_models(models)
        target, drafter, up = models["target"], models["drafter"], models["upsampler"]
        if not isinstance(drafter, TokenModel):
            raise ValueError(f"the drafter ({type(drafter).__name__}) is not a TokenModel (see speculative.contract)")
        if drafter.generation_order.name != "raster":
            raise ValueError(f"mulo drafts in raster order; the drafter generates in {drafter.generation_order.name!r}")
        (H, W), (h, w), r = target.grid, drafter.grid, self.ratio
        if (h * r, w * r) != (H, W):
            raise ValueError(
                f"the drafter's grid {h}x{w} is not the target's {H}x{W} divided by ratio={r}: MuLo-SD needs a "
                f"{H // r}x{W // r}-token drafter for this target (or set ratio to the grids' ratio)"
            )
        if drafter.condition_kind != target.condition_kind:
            raise ValueError(
                f"the drafter is conditioned on {drafter.condition_kind!r} but the target on "
                f"{target.condition_kind!r}: both must take the same conditions"
            )
        if target.condition_kind == "class" and drafter.num_classes != target.num_classes:
            raise ValueError(f"the drafter has {drafter.num_classes} classes, the target {target.num_classes}")
        if not isinstance(up, Upsampler):
            raise ValueError(
                f"the upsampler ({type(up).__name__}) must have upsample(low, grid) and downsample(tokens, grid), "
                "e.g. decodelab.vision.upsample.PixelUpsampler or mulo.NearestTokenUpsampler"
            )

    def _neighbors(self, target: Any, up: Any) -> Tensor | None:
        if self.k == 1:
            return None
        key = id(up) if isinstance(up, SupportsCodebook) else id(target)
        if self._table is None or self._table[0] != key:
            if isinstance(up, SupportsCodebook):
                vectors = up.codebook_vectors()
            elif isinstance(target, SupportsTokenEmbeddings):
                vectors = F.normalize(target.token_embeddings().detach().float(), dim=-1)
            else:
                raise ValueError("k > 1 needs the target's codebook (an up-sampler with codebook_vectors()) "
                                 "or a target with token embeddings")  # fmt: skip
            if vectors.shape[0] != target.vocab_size:
                raise ValueError(f"{vectors.shape[0]} code vectors for a target vocabulary of {target.vocab_size}")
            self._table = (key, knn_table(vectors, self.k))
        return self._table[1]

    # ------------------------------------------------------------------ one round's pieces
    def _draft(self, d: DecodeContext, low: Tensor, dvalid: list[int], dp0: Tensor, span: dict[int, tuple[int, int]]):
        """Sample drafter positions ``span[b] = [a, e)`` of each row, one drafter forward per token."""
        steps = max((e - a for a, e in span.values()), default=0)
        for j in range(steps):
            rows = {b: a + j for b, (a, e) in span.items() if a + j < e}
            queries = {b: [p] for b, p in rows.items() if p > 0}
            probs = _forward(d, low, dvalid, queries) if queries else {}
            for b, p in rows.items():
                dist = probs[b][0] if p > 0 else dp0[b]
                _put(low, dvalid, b, p, _sample(dist, d.gens[b]))

    def _verify(self, p: Tensor, drafts: Tensor, table: Tensor | None) -> Tensor:
        """Bool ``[m]``: drafts that pass the relaxed test against ``p [m, V]``."""
        return pooled_mass(p, drafts, table) >= self.tau

    def _groups(self, rejected: Tensor, n: int, e: int, grid: tuple[int, int]) -> list[Tensor]:
        """Positions to resample (``rejected``: bool over ``[n, e)``), as islands resampled concurrently."""
        H, W = grid
        mask = torch.zeros(H * W, dtype=torch.bool)
        mask[n:e] = rejected
        if not self.local:
            return [torch.tensor([n + int(rejected.nonzero()[0])])]
        region = resample_region(mask.view(H, W), self.l, end=e)
        if self.islands:
            return rejection_islands(region)
        return [region.flatten().nonzero()[:, 0]]

    def _reject(self, ctx: DecodeContext, cur: Tensor, tvalid: list[int], tstale: _Stale, table: Tensor | None,
                b: int, probs: Tensor, a: int, e: int) -> _Rejection:  # fmt: skip
        """Test row ``b``'s tokens ``cur[b, a:e]`` against ``probs [e - a, V]`` (one target forward over them).

        The rejected positions become islands (:meth:`_groups`); each island's first position is
        resampled from ``probs`` now, the rest is returned as a queue for :meth:`_islands`.
        """
        ok = self._verify(probs, cur[b, a:e], table)
        if bool(ok.all()):
            return _Rejection(ok, e - a, [], e, 0, 0)
        groups = self._groups(~ok, a, e, ctx.grid)
        for g in groups:  # every island's first position comes from this forward
            u = int(g[0])
            _put(cur, tvalid, b, u, _sample(probs[u - a], ctx.gens[b]), tstale)
        size = sum(len(g) for g in groups)
        queue = [g[1:].tolist() for g in groups if len(g) > 1]
        first = min(int(g[0]) for g in groups) + 1
        return _Rejection(ok, e - a - size + len(groups), queue, first, len(groups), size)

    def _islands(self, ctx: DecodeContext, cur: Tensor, tvalid: list[int], tstale: _Stale,
                 queues: dict[int, list[list[int]]], accepted: list[Tensor]) -> None:  # fmt: skip
        """Resample the queued islands concurrently: one position of every unfinished island per forward."""
        while any(queues.values()):
            queries = {b: [q[0] for q in qs if q] for b, qs in queues.items() if any(qs)}
            probs = _forward(ctx, cur, tvalid, queries, tstale)
            step = torch.zeros(ctx.batch, dtype=torch.long)
            for b, qpos in queries.items():
                for i, u in enumerate(qpos):
                    _put(cur, tvalid, b, u, _sample(probs[b][i], ctx.gens[b]), tstale)
                queues[b] = [q[1:] for q in queues[b] if len(q) > 1]
                step[b] = len(qpos)
            accepted.append(step)

    # ------------------------------------------------------------------ main loop
    def _decode(self, ctx: DecodeContext) -> tuple[Tensor, list[Tensor], dict[str, Any]]:
        d = ctx.for_model("drafter")
        up = ctx.models["upsampler"]
        B, N, (H, W), (h, w), r = ctx.batch, ctx.num_tokens, ctx.grid, d.grid, self.ratio
        table = self._neighbors(ctx.model, up)
        gens = ctx.gens
        cur = torch.zeros(B, N, dtype=torch.long)  # target tokens: fixed prefix, then drafts
        low = torch.zeros(B, h * w, dtype=torch.long)  # drafter tokens
        tvalid, dvalid = [0] * B, [0] * B  # cache entries consistent with cur / low, per row
        tstale = _Stale(B, sparse=not self.refresh)  # which target entries to rewrite (refresh=False)
        t_draft = t_up = 0.0
        tested = torch.zeros(B, dtype=torch.long)
        passed = torch.zeros(B, dtype=torch.long)
        resampled = torch.zeros(B, dtype=torch.long)
        num_islands = torch.zeros(B, dtype=torch.long)
        retested = torch.zeros(B, dtype=torch.long)
        p0 = ctx.prefill().cpu()
        for b in range(B):
            cur[b, 0] = _sample(p0[b], gens[b])
        dp0: Tensor | None = None  # the drafter's distribution of its position 0 (its prefill), when needed
        whole = self._sub is not None  # the first round drafts the whole low-resolution image
        n = [1] * B
        accepted = [torch.ones(B, dtype=torch.long)]
        rounds = 0
        while any(x < N for x in n):
            rounds += 1
            act = [b for b in range(B) if n[b] < N]
            # 1-2. drafter prefix (D_r of the fixed target prefix) and its continuation
            rows = torch.tensor(act)
            t = time.perf_counter()
            plen = {b: drafter_prefix_length(n[b], (H, W), (h, w)) for b in act}
            if any(plen.values()):
                lowfix = up.downsample(cur[rows].view(-1, H, W).to(ctx.device), (h, w)).reshape(len(act), -1).cpu()
                for i, b in enumerate(act):
                    _set(low, dvalid, b, 0, lowfix[i, : plen[b]])
            t_up += time.perf_counter() - t
            t = time.perf_counter()
            span = {b: (plen[b], min(plen[b] + self.draft_rows * w, h * w)) for b in act}
            if whole:  # every row is active with an empty drafter prefix in the first round
                whole = False
                self._sub.check_models({"target": d.model})  # type: ignore[union-attr]
                low[:] = self._sub._decode(d)[0].reshape(B, -1).cpu()  # type: ignore[union-attr]
                dvalid = [0] * B  # the sub-decoder's cache writes are not tracked: rewrite before reuse
                span = {b: (0, h * w) for b in act}
            else:
                if dp0 is None and any(a == 0 for a, _ in span.values()):
                    dp0 = d.prefill().cpu()  # (re)sets the drafter's caches
                    dvalid = [0] * B
                self._draft(d, low, dvalid, dp0, span)  # type: ignore[arg-type]
            t_draft += time.perf_counter() - t
            # 3. up-sample: undrafted low rows repeat the last drafted row
            t = time.perf_counter()
            full = low[rows].view(-1, h, w).clone()
            end = {}
            for i, b in enumerate(act):
                last = span[b][1] // w  # low rows drafted so far
                full[i, last:] = full[i, last - 1]
                end[b] = min(last * r, H) * W
            ups = up.upsample(full.to(ctx.device), (H, W)).reshape(len(act), -1).cpu()
            for i, b in enumerate(act):
                _set(cur, tvalid, b, n[b], ups[i, n[b] : end[b]], tstale)
            t_up += time.perf_counter() - t
            # 4. verification: one target forward over every draft
            probs = _forward(ctx, cur, tvalid, {b: list(range(n[b], end[b])) for b in act}, tstale)
            step = torch.zeros(B, dtype=torch.long)
            queues: dict[int, list[list[int]]] = {}
            again: dict[int, tuple[int, int]] = {}  # positions [first resampled + 1, block end) to re-verify
            for b in act:
                v = self._reject(ctx, cur, tvalid, tstale, table, b, probs[b], n[b], end[b])
                tested[b] += v.ok.numel()
                passed[b] += int(v.ok.sum())
                num_islands[b] += v.islands
                resampled[b] += v.resampled
                if self.local:
                    step[b] = v.decided
                    queues[b] = v.queue
                    if v.first < end[b]:
                        again[b] = (v.first, end[b])
                    n[b] = end[b]
                else:  # one island, the first rejection t0 (v.first = t0 + 1): the drafts after it are discarded
                    step[b] = v.first - n[b]
                    n[b] = v.first
            accepted.append(step)
            # 5. islands, concurrently: one position of every unfinished island per forward
            self._islands(ctx, cur, tvalid, tstale, queues, accepted)
            # 6. re-verification passes (reverify > 0): test every position after the first resampled one again
            for _ in range(self.reverify):
                if not again:
                    break
                probs = _forward(ctx, cur, tvalid, {b: list(range(a, e)) for b, (a, e) in again.items()}, tstale)
                step = torch.zeros(B, dtype=torch.long)
                queues, nxt = {}, {}
                for b, (a, e) in again.items():
                    v = self._reject(ctx, cur, tvalid, tstale, table, b, probs[b], a, e)
                    retested[b] += v.ok.numel()
                    num_islands[b] += v.islands
                    resampled[b] += v.resampled
                    step[b] = v.decided
                    queues[b] = v.queue
                    if v.first < e:
                        nxt[b] = (v.first, e)
                accepted.append(step)
                self._islands(ctx, cur, tvalid, tstale, queues, accepted)
                again = nxt
        acc = torch.stack(accepted)
        row_nfe = (acc > 0).sum(0).float()
        extras = {
            "nfe_target": ctx.nfe,
            "nfe_drafter": d.nfe,
            "rounds": rounds,
            "tokens_per_target_forward": float((N / row_nfe).mean()),
            "drafts_tested": tested,
            "drafts_accepted": passed,
            "draft_acceptance": float(passed.sum() / tested.sum().clamp_min(1)),
            "resampled": resampled,
            "retested": retested,
            "islands": num_islands,
            "drafter_time_s": t_draft,
            "upsampler_time_s": t_up,
            "drafter_tokens": low.clone(),
        }
        return cur.to(ctx.device), accepted, extras
