"""NAR: next-neighbour autoregressive image-token generation on LlamaGen's GPT.

NAR (He et al., "Neighboring Autoregressive Modeling for Efficient Visual Generation",
arXiv:2503.10696; github.com/ThisisBillhe/NAR, ``NAR-images/autoregressive/models/gpt.py``) keeps
LlamaGen's transformer and adds one more transformer block after the last layer with its own
RMSNorm and output head. The two heads predict two neighbours of every token:

- the **horizontal head** (the backbone's ``norm`` + ``output``, read after the last backbone
  layer) predicts the token to the right, ``(i, j) -> (i, j + 1)``;
- the **vertical head** (``layers[n_layer]`` + ``medusa_norm`` + ``medusa_output``, the extra block
  reading the backbone's last hidden states) predicts the token below, ``(i, j) -> (i + 1, j)``.

The logits of image position ``(i, j)`` are (upstream's ``forward``, training and inference alike)

- ``(0, 0)``: the mean of both heads at the last condition position;
- ``(0, j)``: the horizontal head at ``(0, j - 1)``;
- ``(i, 0)``: the vertical head at ``(i - 1, 0)``;
- otherwise the mean, in logit space, of the horizontal head at ``(i, j - 1)`` and the vertical
  head at ``(i - 1, j)``.

Generation follows the anti-diagonals (``GenerationOrder.next_neighbor``): step ``c`` fixes every
``(i, j)`` with ``i + j = c``, so an ``n x n`` grid takes ``2n - 1`` steps. Attention uses the
**proximity mask**: causal across anti-diagonals, bidirectional inside one (``attention_rank`` =
anti-diagonal index after the condition positions, which stay causal among themselves and are
visible to every image token). The key layout is upstream's (``layers.{n_layer}.*``,
``medusa_norm.weight``, ``medusa_output.weight`` beside LlamaGen's keys), so released checkpoints
load strictly with :func:`import_nar`.

Cached inference keeps the keys and values in generation order (the condition, then the image
anti-diagonal by anti-diagonal), not by sequence position: the keys an anti-diagonal may see are
then exactly the cache slots up to the end of its own, so attention reads those and no mask, where
the raster layout would read every position up to the anti-diagonal's lowest-left one (at
anti-diagonal ``c < n`` about ``n c`` keys for ``c^2 / 2`` visible ones). Attention is the same sum
over the same keys in another order, so logits agree with the raster layout to float rounding (on
``fmnist-nar`` 1e-6 of their scale, the size of the difference between one and two CPU threads).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decodelab.hub import load_state_dict_strict, read_torch_checkpoint
from decodelab.registry import MODELS, register_architecture, register_model
from decodelab.speculative.contract import GenerationOrder, anti_diagonal_rank
from decodelab.vision.models.gpt import _SMALL_C2I, _SMALL_T2I, GPT, RMSNorm, TransformerBlock, find_multiple

__all__ = ["NAR", "import_nar"]


@register_architecture
class NAR(GPT):
    """LlamaGen GPT + a vertical head (extra block, ``medusa_norm``, ``medusa_output``), proximity mask.

    Args:
        medusa_attention_num: extra transformer blocks before the vertical head (upstream: 1 in
            every released model).
        **kwargs: the :class:`~decodelab.vision.models.gpt.GPT` arguments (``dim``, ``n_layer``,
            ``n_head``, ``model_type``, ``cls_token_num``, ``block_size``, ...).
    """

    def __init__(self, medusa_attention_num: int = 1, **kwargs) -> None:
        if isinstance(medusa_attention_num, bool) or not isinstance(medusa_attention_num, int):
            raise ValueError(f"medusa_attention_num must be an integer >= 1, got {medusa_attention_num!r}")
        if medusa_attention_num < 1:
            raise ValueError(f"medusa_attention_num must be >= 1 (vertical-head blocks), got {medusa_attention_num}")
        super().__init__(**kwargs)
        c = self.config  # the GPT's full constructor arguments
        if c["n_layer"] < 1:
            raise ValueError(f"n_layer must be >= 1 (the horizontal head reads the last layer), got {c['n_layer']}")
        self.n_layer = c["n_layer"]
        self.medusa_attention_num = medusa_attention_num
        block_cfg = {k: c[k] for k in ("dim", "n_head", "n_kv_head", "multiple_of", "ffn_dim_multiplier",
                                         "norm_eps", "attn_dropout_p", "resid_dropout_p", "ffn_dropout_p")}  # fmt: skip
        for _ in range(medusa_attention_num):
            self.layers.append(TransformerBlock(block_cfg, 0.0))
        total = len(self.layers)
        for i, layer in enumerate(self.layers):  # upstream: linspace(0, rate) over all blocks
            layer.drop_path = c["drop_path_rate"] * i / max(total - 1, 1)
        self.medusa_norm = RMSNorm(c["dim"], c["norm_eps"])
        self.medusa_output = nn.Linear(c["dim"], self.vocab_size, bias=False)
        for m in [*self.layers[self.n_layer :].modules(), self.medusa_output]:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, c["initializer_range"])  # upstream zero-inits only `output`
        T = self.num_cond_tokens
        rank = torch.cat([torch.arange(T), T + anti_diagonal_rank(self.grid)])
        self.attention_rank.copy_(rank.to(self.attention_rank.device))
        # The cache holds sequence position p in slot cache_slot[p]: the condition, then the image in
        # generation order (anti-diagonal by anti-diagonal, raster order inside one), so the keys an
        # anti-diagonal may see are exactly the slots before the end of its own.
        order = torch.sort(rank, stable=True).indices
        slot = torch.empty_like(order)
        slot[order] = torch.arange(len(order))
        self.register_buffer("cache_order", order, persistent=False)  # slot -> sequence position
        self.register_buffer("cache_slot", slot, persistent=False)  # sequence position -> slot
        object.__setattr__(self, "config", {**c, "medusa_attention_num": medusa_attention_num})

    # ----------------------------------------------------------------------------- the contract
    @property
    def generation_order(self) -> GenerationOrder:
        """One anti-diagonal per step: ``H + W - 1`` steps."""
        return GenerationOrder.next_neighbor(self.grid)

    def proximity_mask(self) -> Tensor:
        """``[T + N, T + N]`` bool: may query (row) see key (column), without caption padding."""
        r = self.attention_rank
        return r[None, :] <= r[:, None]

    # ----------------------------------------------------------------------------- the two heads
    def _blocks(self, h: Tensor, freqs: Tensor, pos: Tensor | None, mask: Tensor | None, kv_len: int | None):
        """Run every block; return the horizontal and vertical heads' normed inputs."""
        for i, layer in enumerate(self.layers):
            h = layer(h, freqs, pos, mask, kv_len)
            if i == self.n_layer - 1:
                horizontal = h
        return self.norm(horizontal), self.medusa_norm(h)

    def _mix_grid(self, right: Tensor, below: Tensor, first: Tensor) -> Tensor:
        """Mixed logits ``[B, N, V]`` from head logits at every image position (``[B, N, V]`` each).

        ``right[:, p]`` is the horizontal head at ``p`` (predicts the right neighbour), ``below[:, p]``
        the vertical head at ``p``; ``first`` ``[B, V]`` is position 0's logits.
        """
        H, W = self.grid
        B, _, V = right.shape
        r, b = right.view(B, H, W, V), below.view(B, H, W, V)
        out = torch.empty_like(r)
        out[:, 0, 0] = first
        out[:, 0, 1:] = r[:, 0, :-1]
        out[:, 1:, 0] = b[:, :-1, 0]
        out[:, 1:, 1:] = (r[:, 1:, :-1] + b[:, :-1, 1:]) / 2
        return out.view(B, H * W, V)

    # ----------------------------------------------------------------------------- training
    def forward(self, tokens: Tensor, cond: Tensor, drop: Tensor | None = None, cond_mask: Tensor | None = None):
        """Teacher-forced mixed logits ``[B, N, V]`` (proximity mask); ``logits[:, i]`` predicts ``tokens[:, i]``.

        Unlike the raster GPT, every image token is an input (the last anti-diagonal's hidden
        states are computed and unused, as upstream).

        Args:
            tokens: image tokens ``[B, N]``.
            cond: class ids ``[B]`` or caption embeddings ``[B, T, caption_dim]``.
            drop: optional bool ``[B]``: rows whose condition is replaced by the null condition.
            cond_mask: optional bool ``[B, T]``: False at padded caption positions.
        """
        if tokens.dim() != 2 or tokens.shape[1] != self.num_tokens:
            raise ValueError(f"tokens must be [B, {self.num_tokens}] (a whole image), got {tuple(tokens.shape)}")
        if self.training and drop is None and self.class_dropout_prob > 0:
            drop = torch.rand(cond.shape[0], device=cond.device) < self.class_dropout_prob
        T, B = self.num_cond_tokens, tokens.shape[0]
        h = self.tok_dropout(torch.cat([self.embed_condition(cond, drop), self.tok_embeddings(tokens)], dim=1))
        L = h.shape[1]
        mask = self.proximity_mask().to(h.device)[None].expand(B, -1, -1)
        if cond_mask is not None:
            valid = torch.ones(B, L, dtype=torch.bool, device=h.device)
            valid[:, :T] = cond_mask
            mask = (mask & valid[:, None, :]) | torch.eye(L, dtype=torch.bool, device=h.device)[None]
        hr, hb = self._blocks(h, self.freqs_cis[:L].unsqueeze(0), None, mask[:, None], None)
        right, below = self.output(hr).float(), self.medusa_output(hb).float()
        first = (right[:, T - 1] + below[:, T - 1]) / 2
        return self._mix_grid(right[:, T:], below[:, T:], first)

    # ----------------------------------------------------------------------------- inference
    def setup_caches(self, max_batch_size: int, max_seq_length: int | None = None, dtype=None) -> None:
        """:meth:`GPT.setup_caches`; a cache that already has the asked shape is zeroed in place, not reallocated.

        Decoders set the caches up for every batch; on a CPU, first-touching freshly allocated
        caches costs about one NAR step at batch 16 (``fmnist-nar``), while zeroing the existing
        ones in place is cheap and leaves exactly the state a new allocation has.
        """
        length = find_multiple(max_seq_length or self.seq_len, 8)
        dtype = dtype or self.output.weight.dtype
        caches = [layer.attention.kv_cache for layer in self.layers]
        same = self._key_valid is not None and all(
            c is not None and c.k_cache.shape[0] == max_batch_size and c.k_cache.shape[2] == length
            and c.k_cache.dtype == dtype and c.k_cache.device == self.output.weight.device
            for c in caches
        )  # fmt: skip
        if not same:
            super().setup_caches(max_batch_size, max_seq_length, dtype)
            return
        for c in caches:
            c.k_cache.zero_()
            c.v_cache.zero_()
        self._key_valid.fill_(True)

    def _pair_cached(self, h: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        """The heads' normed inputs ``[B, S, dim]`` each, of a cached forward at sequence positions ``pos``.

        The keys and values are cached in generation order (``cache_slot``), not by sequence
        position: attention reads only the slots up to the last one written, which for a whole
        anti-diagonal are exactly the keys it may see (the raster layout would read every position
        up to the anti-diagonal's lowest-left one, most of them masked). RoPE still rotates by the
        sequence position.
        """
        B, S = h.shape[:2]
        if self._key_valid is None or B > self.max_batch_size:
            raise RuntimeError(f"call setup_caches(max_batch_size >= {B}) before cached inference")
        if int(pos.max()) >= self.seq_len:
            raise ValueError(f"position {int(pos.max())} is beyond the sequence length {self.seq_len}")
        slot = self.cache_slot[pos]
        kv_len = int(slot.max()) + 1
        if kv_len > self.max_seq_length:
            raise ValueError(f"cache slot {kv_len - 1} is beyond the cache length {self.max_seq_length}")
        pos2 = pos.expand(B, S) if pos.dim() == 1 else pos
        slot2 = slot.expand(B, S) if slot.dim() == 1 else slot
        keys = torch.arange(kv_len, device=h.device)
        rank = self.attention_rank[self.cache_order[:kv_len]]  # of each slot
        valid = self._key_valid[:B, self.cache_order[:kv_len]]
        mask = (rank[None, None, :] <= rank[slot2][:, :, None]) & valid[:, None, :]
        mask = mask | (keys[None, None, :] == slot2[:, :, None])  # a padded query still sees itself
        if self.training:  # dropout and drop-path live in the blocks' own forward
            return self._blocks(h, self.freqs_cis[pos2], slot, mask[:, None], kv_len)
        return self._blocks_cached(h, self.freqs_cis[pos2], slot, mask[:, None], kv_len)

    def _blocks_cached(self, h: Tensor, freqs: Tensor, pos: Tensor, mask: Tensor, kv_len: int):
        """:meth:`_blocks` of a cached forward in eval mode: the same arithmetic, with less work around it.

        Every value equals the blocks' own forward bit for bit (tested); what goes is the work a
        NAR step (small tensors, ``2n - 1`` steps) pays in every block around the arithmetic:
        queries and keys are rotated in one call, without the stack that interleaves the rotated
        pairs; the keys / values of a run of slots (a whole anti-diagonal) are written through a
        slice instead of an indexed write; the mask is made additive once per forward instead of
        once per block, and dropped when every cached slot is visible (a whole anti-diagonal).
        """
        cos, sin = freqs[:, :, None, :, 0], freqs[:, :, None, :, 1]  # [B, S, 1, D/2] each
        if bool(mask.all()):  # one whole anti-diagonal: every cached slot so far is visible
            mask = None
        else:  # the additive form attention turns a boolean mask into, once instead of once per block
            mask = torch.zeros(mask.shape, dtype=h.dtype, device=h.device).masked_fill_(~mask, float("-inf"))
        rows = _even_slice(pos)
        for i, layer in enumerate(self.layers):
            h = _cached_block(layer, h, cos, sin, pos, rows, mask, kv_len)
            if i == self.n_layer - 1:
                horizontal = h
        return self.norm(horizontal), self.medusa_norm(h)

    def _hidden_cached(self, h: Tensor, pos: Tensor) -> Tensor:
        """The horizontal head's input (every block runs, so the vertical head's cache is written too)."""
        return self._pair_cached(h, pos)[0]

    @torch.no_grad()
    def prefill(self, cond: Tensor, cond_mask: Tensor | None = None) -> Tensor:
        """Write the condition; return image token 0's logits ``[B, V]`` (mean of both heads, as upstream)."""
        self.check_condition(cond)
        B, T = cond.shape[0], self.num_cond_tokens
        if self._key_valid is None or B > self.max_batch_size:
            raise RuntimeError(f"call setup_caches(max_batch_size >= {B}) before prefill")
        self._key_valid[:B] = True
        if cond_mask is not None:
            if cond_mask.shape != (B, T):
                raise ValueError(f"cond_mask must be [B, {T}], got {tuple(cond_mask.shape)}")
            self._key_valid[:B, :T] = cond_mask.to(torch.bool)
        h = self.tok_dropout(self.embed_condition(cond))
        hr, hb = self._pair_cached(h, torch.arange(T, device=h.device))
        return (self.output(hr[:, -1]).float() + self.medusa_output(hb[:, -1]).float()) / 2

    def default_queries(self, token_pos: Tensor) -> Tensor:
        """``[B, Q]``: the positions whose every neighbour above/left is among ``token_pos`` (``[B, S]``).

        For a whole anti-diagonal that is the next anti-diagonal.
        """
        H, W = self.grid
        N = self.num_tokens
        B = token_pos.shape[0]
        written = torch.zeros(B, N, dtype=torch.bool, device=token_pos.device)
        written.scatter_(1, token_pos, True)
        g = written.view(B, H, W)
        left_ok = torch.ones_like(g)
        left_ok[:, :, 1:] = g[:, :, :-1]
        top_ok = torch.ones_like(g)
        top_ok[:, 1:, :] = g[:, :-1, :]
        ready = (left_ok & top_ok & ~g).view(B, N)
        ready[:, 0] = False  # position 0 comes from the condition (prefill)
        counts = ready.sum(1)
        if bool((counts != counts[0]).any()):
            raise ValueError("the rows' written positions give different numbers of queries; pass query_pos")
        return torch.nonzero(ready)[:, 1].view(B, -1)

    @torch.no_grad()
    def decode_step(self, tokens: Tensor, token_pos: Tensor, query_pos: Tensor | None = None) -> Tensor:
        """Write image tokens at ``token_pos``; return the mixed logits of ``query_pos``.

        Args:
            tokens: ``[B, S]`` image-token ids.
            token_pos: image positions ``[S]`` or ``[B, S]``.
            query_pos: image positions ``[Q]`` or ``[B, Q]``. Each ``(i, j)`` needs its left
                neighbour (when ``j > 0``) and its upper neighbour (when ``i > 0``) among the
                positions written in this forward (the heads read this forward's hidden states).
                ``None``: every position whose neighbours are written (after a whole anti-diagonal,
                the next one).

        Returns:
            logits ``[B, Q, V]`` (float32).
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, S], got {tuple(tokens.shape)}")
        if token_pos.shape[-1] != tokens.shape[1]:
            raise ValueError("token_pos must give one position per token")
        B, S = tokens.shape
        H, W = self.grid
        N = self.num_tokens
        written = (token_pos.expand(B, S) if token_pos.dim() == 1 else token_pos).to(tokens.device)
        if int(written.min()) < 0 or int(written.max()) >= N:
            raise ValueError(f"token_pos must be image positions 0..{N - 1}")
        hr, hb = self._pair_cached(self.tok_dropout(self.tok_embeddings(tokens)), token_pos + self.num_cond_tokens)
        q = self.default_queries(written) if query_pos is None else query_pos.to(tokens.device)
        q = q.expand(B, -1) if q.dim() == 1 else q
        if q.numel() and (int(q.min()) < 1 or int(q.max()) >= N):
            raise ValueError(f"query_pos must be image positions 1..{N - 1} (position 0 comes from prefill)")
        index = torch.full((B, N), -1, dtype=torch.long, device=tokens.device)
        index.scatter_(1, written, torch.arange(S, device=tokens.device).expand(B, S))
        i, j = q // W, q % W
        has_left, has_top = j > 0, i > 0
        left = torch.where(has_left, index.gather(1, (q - 1).clamp_min(0)), 0)
        top = torch.where(has_top, index.gather(1, (q - W).clamp_min(0)), 0)
        if bool(((left < 0) & has_left).any() | ((top < 0) & has_top).any()):
            raise ValueError(
                "query_pos asks for a position whose left or upper neighbour is not written in this forward "
                "(NAR reads both neighbours' hidden states: write the whole previous anti-diagonal)"
            )
        D = hr.shape[-1]
        right = self.output(hr.gather(1, left.clamp_min(0)[..., None].expand(-1, -1, D))).float()
        below = self.medusa_output(hb.gather(1, top.clamp_min(0)[..., None].expand(-1, -1, D))).float()
        both = (has_left & has_top)[..., None]
        return torch.where(both, (right + below) / 2, torch.where(has_left[..., None], right, below))

    # Every NAR row takes the same ``2n - 1`` steps, so rows never finish early and there is nothing to
    # refill: ``None`` makes ``isinstance(model, SupportsRefill)`` false (runtime protocols treat a
    # ``None`` method as absent).
    refill_step = None  # type: ignore[assignment]


def _even_slice(pos: Tensor) -> slice | None:
    """Shared cache slots ``[S]`` as a slice when they are increasing and evenly spaced, else ``None``."""
    if pos.dim() != 1:
        return None
    p = pos.tolist()
    step = p[1] - p[0] if len(p) > 1 else 1
    if step < 1 or any(b - a != step for a, b in zip(p, p[1:])):
        return None
    return slice(p[0], p[-1] + 1, step)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """:func:`~decodelab.vision.models.gpt.apply_rotary_emb` of ``x`` ``[B, S, H, D]``, bit for bit.

    The same products and sums (``x0 c - x1 s``, ``x1 c + x0 s``), written straight into the
    interleaved output instead of stacked afterwards (the stack was the costliest part).
    """
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    x0, x1 = xs[..., 0], xs[..., 1]
    out = torch.empty_like(xs)
    torch.sub(x0 * cos, x1 * sin, out=out[..., 0])
    torch.add(x1 * cos, x0 * sin, out=out[..., 1])
    return out.flatten(3).type_as(x)


def _cached_block(layer: TransformerBlock, x: Tensor, cos: Tensor, sin: Tensor, pos: Tensor,
                  rows: slice | None, mask: Tensor | None, kv_len: int) -> Tensor:  # fmt: skip
    """``layer(x, freqs, pos, mask, kv_len)`` in eval mode (no dropout, no drop-path), bit for bit.

    ``cos`` / ``sin``: the rotation table's halves ``[B, S, 1, D/2]``; ``rows``: ``pos`` as a slice
    (``None``: an indexed write); ``mask``: additive ``[B, 1, S, kv_len]`` or ``None`` (all visible).
    """
    a = layer.attention
    B, S, _ = x.shape
    nq, nkv, hd = a.n_head, a.n_kv_head, a.head_dim
    qk, v = a.wqkv(layer.attention_norm(x)).split([(nq + nkv) * hd, nkv * hd], dim=-1)
    qk = _rotate(qk.view(B, S, nq + nkv, hd), cos, sin)
    q, k = qk[:, :, :nq], qk[:, :, nq:]
    v = v.view(B, S, nkv, hd)
    cache = a.kv_cache
    if rows is None:
        keys, values = cache.update(pos, k, v)
    else:
        cache.k_cache[:B, :, rows] = k.transpose(1, 2).to(cache.k_cache.dtype)
        cache.v_cache[:B, :, rows] = v.transpose(1, 2).to(cache.v_cache.dtype)
        keys, values = cache.k_cache[:B], cache.v_cache[:B]
    keys, values = keys[:, :, :kv_len], values[:, :, :kv_len]
    if nkv != nq:
        keys = keys.repeat_interleave(nq // nkv, dim=1)
        values = values.repeat_interleave(nq // nkv, dim=1)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), keys.to(q.dtype), values.to(q.dtype), attn_mask=mask, is_causal=False
    )
    h = x + a.wo(out.transpose(1, 2).reshape(B, S, a.dim))
    return h + layer.feed_forward(layer.ffn_norm(h))


# --------------------------------------------------------------------------------- registered sizes
# Upstream NAR-images/autoregressive/models/gpt.py GPT_B/M/L/XL/XXL with medusa_attention_num=1;
# parameter counts (c2i, 16x16 tokens): B 130.6M, M 295.5M, L 372.5M, XL 816.0M, XXL 1464.5M
# (paper Table 1: 130M, 290M, 372M, 816M, 1.46B).
_SIZES = {
    "b": dict(n_layer=12, n_head=12, dim=768),
    "m": dict(n_layer=18, n_head=16, dim=1024),
    "l": dict(n_layer=24, n_head=16, dim=1024),
    "xl": dict(n_layer=36, n_head=20, dim=1280),
    "xxl": dict(n_layer=48, n_head=24, dim=1536),
}


def _make_size(size: str, preset: dict) -> None:
    def factory(**kwargs) -> NAR:
        return NAR(**{**preset, **kwargs})

    factory.__name__ = f"nar_{size}"
    factory.__doc__ = (
        f"NAR-{size.upper()} c2i ({preset['n_layer']}+1 layers, dim {preset['dim']}, {preset['n_head']} heads, "
        "16x16 tokens); pass block_size for other resolutions."
    )
    register_model(factory.__name__, kind="generator", family="nar")(factory)


for _size, _preset in _SIZES.items():
    _make_size(_size, _preset)


@register_model("nar_xl_t2i", kind="generator", family="nar")
def nar_xl_t2i(**kwargs) -> NAR:
    """NAR-XL text-to-image (FLAN-T5-XL captions, 120 tokens; 16x16 = stage 1, pass block_size=1024 for stage 2)."""
    return NAR(**{**_SIZES["xl"], "model_type": "t2i", "cls_token_num": 120, **kwargs})


# The small family's sizes are the GPT's (a NAR adds the extra block and the vertical head).


@register_model("embedded_nar", kind="generator", family="nar")
def embedded_nar(**kwargs) -> NAR:
    """Small class-conditional NAR of the embedded models (sized by the config; tiny by default)."""
    return NAR(**{**_SMALL_C2I, **kwargs})


@register_model("embedded_nar_t2i", kind="generator", family="nar")
def embedded_nar_t2i(**kwargs) -> NAR:
    """Small text-conditional NAR of the embedded models (sized by the config; tiny by default)."""
    return NAR(**{**_SMALL_T2I, **kwargs})


@register_model("test_nar", kind="generator", family="nar")
def test_nar(**kwargs) -> NAR:
    """Tiny class-conditional NAR for tests (dim 32, 2+1 layers, vocab 64, 4x4 tokens, 10 classes)."""
    return NAR(**{**_SMALL_C2I, **kwargs})


@register_model("test_nar_t2i", kind="generator", family="nar")
def test_nar_t2i(**kwargs) -> NAR:
    """Tiny text-conditional NAR for tests (caption 6 tokens x 24 dims, vocab 64, 4x4 tokens)."""
    return NAR(**{**_SMALL_T2I, **kwargs})


# Non-persistent upstream attributes some checkpoints may carry.
_UPSTREAM_IGNORED = ("freqs_cis", "causal_mask", "proximity_mask")


def import_nar(path: str | Path, name: str = "nar_b", weights: str = "model", **kwargs) -> NAR:
    """Build the registered NAR ``name`` (with ``kwargs``) and load an upstream NAR ``.pt`` strictly.

    Reads released files (``last_version.pt``: a raw state dict) and training checkpoints
    (``model`` / ``module`` / ``state_dict`` wrappers) with ``weights_only=True``. Upstream's
    sampling scripts load with ``strict=False``; here any missing, unexpected or mis-shaped key
    raises :class:`~decodelab.hub.CheckpointMismatchError` naming it (e.g. a LlamaGen GPT without
    the vertical head, or the wrong size).

    Args:
        path: the ``.pt`` file.
        name: registered NAR preset (``nar_b`` ... ``nar_xxl``, ``nar_xl_t2i``).
        weights: ``"model"`` (the trained weights) or ``"ema"`` (the ``ema`` entry of a training
            checkpoint; a ``ValueError`` when the file has none).
        **kwargs: constructor overrides (``block_size`` for 512 px, ...).
    """
    entry = MODELS.get(name)
    if entry.meta.get("family") != "nar":
        raise ValueError(f"{name!r} is not a NAR preset; pick one of {', '.join(MODELS.list('*nar*'))}")
    state = read_torch_checkpoint(path, weights=weights)
    ignored = _UPSTREAM_IGNORED + tuple(k for k in state if ".kv_cache." in k)
    model = MODELS.create(name, **kwargs)
    load_state_dict_strict(model, state, source=str(path), ignore=ignored)
    return model.eval()
