"""LlamaGen's GPT image-token transformer, with a static KV cache written by position.

Architecture and state-dict key layout follow LlamaGen (Sun et al., "Autoregressive Model Beats
Diffusion: Llama for Scalable Image Generation", arXiv:2406.06525; github.com/FoundationVision/LlamaGen,
``autoregressive/models/gpt.py``), so upstream checkpoints load strictly: ``tok_embeddings``,
``cls_embedding`` (a label table with a null class, or a caption projection with a learned
unconditional embedding), per-layer fused ``attention.wqkv`` / ``attention.wo``, SwiGLU
``feed_forward.w1/w2/w3``, RMSNorms ``attention_norm`` / ``ffn_norm`` / ``norm``, and ``output``.
2-D RoPE rotates half of each head's pairs by the row index and half by the column index; the
condition positions get an all-zero rotation table, as upstream does.

Sequence layout: ``T = num_cond_tokens`` condition positions, then image token ``i`` at position
``T + i``. The logits at position ``T - 1 + i`` predict image token ``i``.

The cache is the basis of every parallel decoder: :meth:`GPT.decode_step` runs a forward over any
set of image positions (shared ``[S]`` or per row ``[B, S]``), writes their keys/values by
position, and lets each query attend to every cached position at or before its own. Rolling back
rejected drafts therefore needs no code: stale entries are overwritten before a query can see them.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decodelab.config import register_to_config
from decodelab.hub import PretrainedMixin, load_state_dict_strict, read_torch_checkpoint
from decodelab.registry import MODELS, register_architecture, register_model
from decodelab.speculative.contract import GenerationOrder

__all__ = ["GPT", "import_llamagen_gpt", "precompute_freqs_cis_2d", "apply_rotary_emb"]


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - (n % k)


def precompute_freqs_cis_2d(grid_size: int, head_dim: int, base: float, num_cond_tokens: int) -> Tensor:
    """RoPE table ``[T + grid_size**2, head_dim // 2, 2]`` of (cos, sin); condition rows are zero."""
    half = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))  # [half/2]
    ang = torch.outer(torch.arange(grid_size).float(), inv_freq)  # [G, half/2]
    grid = torch.cat(
        [ang[:, None, :].expand(-1, grid_size, -1), ang[None, :, :].expand(grid_size, -1, -1)], dim=-1
    )  # [G, G, half]: row angles then column angles
    table = torch.stack([grid.cos(), grid.sin()], dim=-1).flatten(0, 1)  # [G*G, half, 2]
    return torch.cat([torch.zeros(num_cond_tokens, half, 2), table])


def apply_rotary_emb(x: Tensor, freqs: Tensor) -> Tensor:
    """Rotate interleaved pairs of ``x [B, S, H, D]`` by ``freqs [B or 1, S, D/2, 2]``."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)  # [B, S, H, D/2, 2]
    f = freqs.unsqueeze(2)  # [B, S, 1, D/2, 2]
    out = torch.stack(
        [xs[..., 0] * f[..., 0] - xs[..., 1] * f[..., 1], xs[..., 1] * f[..., 0] + xs[..., 0] * f[..., 1]],
        dim=-1,
    )
    return out.flatten(3).type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class LabelEmbedder(nn.Module):
    """Class embedding table; row ``num_classes`` is the null class used for CFG."""

    def __init__(self, num_classes: int, dim: int, dropout_prob: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), dim)

    def forward(self, labels: Tensor, drop: Tensor | None = None) -> Tensor:
        if drop is not None:
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels).unsqueeze(1)  # [B, 1, dim]


class CaptionEmbedder(nn.Module):
    """Two-layer projection of text-encoder token embeddings, with a learned unconditional caption."""

    def __init__(self, caption_dim: int, dim: int, num_tokens: int) -> None:
        super().__init__()
        self.cap_proj = nn.Module()
        self.cap_proj.fc1 = nn.Linear(caption_dim, dim, bias=False)
        self.cap_proj.fc2 = nn.Linear(dim, dim, bias=False)
        # A buffer (not a parameter) in the upstream layout, so it is saved but not trained by default.
        self.register_buffer("uncond_embedding", torch.randn(num_tokens, caption_dim) / caption_dim**0.5)

    def forward(self, caption: Tensor, drop: Tensor | None = None) -> Tensor:
        if drop is not None:
            caption = torch.where(drop[:, None, None], self.uncond_embedding.to(caption.dtype), caption)
        return self.cap_proj.fc2(F.gelu(self.cap_proj.fc1(caption), approximate="tanh"))


class KVCache(nn.Module):
    """Preallocated keys/values ``[B, H, S_max, D]`` written by position."""

    def __init__(self, batch: int, heads: int, seq_len: int, head_dim: int, dtype: torch.dtype, device) -> None:
        super().__init__()
        shape = (batch, heads, seq_len, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        # pos: [S] shared or [B, S] per row; k, v: [B, S, H, D]
        B = k.shape[0]
        if pos.dim() == 1:
            self.k_cache[:B, :, pos] = k.transpose(1, 2).to(self.k_cache.dtype)
            self.v_cache[:B, :, pos] = v.transpose(1, 2).to(self.v_cache.dtype)
        else:
            rows = torch.arange(B, device=pos.device)[:, None]
            self.k_cache[rows, :, pos] = k.to(self.k_cache.dtype)  # indexed view: [B, S, H, D]
            self.v_cache[rows, :, pos] = v.to(self.v_cache.dtype)
        return self.k_cache[:B], self.v_cache[:B]


class Attention(nn.Module):
    def __init__(self, dim: int, n_head: int, n_kv_head: int, attn_dropout_p: float, resid_dropout_p: float):
        super().__init__()
        self.dim, self.n_head, self.n_kv_head = dim, n_head, n_kv_head
        self.head_dim = dim // n_head
        self.wqkv = nn.Linear(dim, (n_head + 2 * n_kv_head) * self.head_dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.attn_dropout_p = attn_dropout_p
        self.resid_dropout = nn.Dropout(resid_dropout_p)
        self.kv_cache: KVCache | None = None

    def forward(self, x: Tensor, freqs: Tensor, pos: Tensor | None, mask: Tensor | None, kv_len: int | None) -> Tensor:
        B, S, _ = x.shape
        kv = self.n_kv_head * self.head_dim
        q, k, v = self.wqkv(x).split([self.dim, kv, kv], dim=-1)
        q = apply_rotary_emb(q.view(B, S, self.n_head, self.head_dim), freqs)
        k = apply_rotary_emb(k.view(B, S, self.n_kv_head, self.head_dim), freqs)
        v = v.view(B, S, self.n_kv_head, self.head_dim)
        if self.kv_cache is not None and pos is not None:
            keys, values = self.kv_cache.update(pos, k, v)
            keys, values = keys[:, :, :kv_len], values[:, :, :kv_len]  # [B, Hkv, kv_len, D]
        else:
            keys, values = k.transpose(1, 2), v.transpose(1, 2)
        if self.n_kv_head != self.n_head:
            keys = keys.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            values = values.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            keys.to(q.dtype),
            values.to(q.dtype),
            attn_mask=mask,
            is_causal=mask is None,
            dropout_p=self.attn_dropout_p if self.training else 0.0,
        )  # [B, H, S, D]
        return self.resid_dropout(self.wo(out.transpose(1, 2).reshape(B, S, self.dim)))


class FeedForward(nn.Module):
    def __init__(self, dim: int, multiple_of: int, ffn_dim_multiplier: float | None, dropout_p: float):
        super().__init__()
        hidden = int(2 * 4 * dim / 3)
        if ffn_dim_multiplier is not None:
            hidden = int(ffn_dim_multiplier * hidden)
        hidden = find_multiple(hidden, multiple_of)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.ffn_dropout = nn.Dropout(dropout_p)

    def forward(self, x: Tensor) -> Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: dict, drop_path: float) -> None:
        super().__init__()
        dim = cfg["dim"]
        self.attention = Attention(
            dim, cfg["n_head"], cfg["n_kv_head"] or cfg["n_head"], cfg["attn_dropout_p"], cfg["resid_dropout_p"]
        )
        self.feed_forward = FeedForward(dim, cfg["multiple_of"], cfg["ffn_dim_multiplier"], cfg["ffn_dropout_p"])
        self.attention_norm = RMSNorm(dim, cfg["norm_eps"])
        self.ffn_norm = RMSNorm(dim, cfg["norm_eps"])
        self.drop_path = drop_path

    def _dp(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_path == 0.0:
            return x
        keep = torch.rand(x.shape[0], 1, 1, device=x.device) >= self.drop_path
        return x * keep / (1 - self.drop_path)

    def forward(self, x: Tensor, freqs: Tensor, pos: Tensor | None, mask: Tensor | None, kv_len: int | None):
        h = x + self._dp(self.attention(self.attention_norm(x), freqs, pos, mask, kv_len))
        return h + self._dp(self.feed_forward(self.ffn_norm(h)))


@register_architecture
class GPT(nn.Module, PretrainedMixin):
    """LlamaGen GPT for class-conditional (``c2i``) or text-conditional (``t2i``) image tokens.

    Args:
        dim, n_layer, n_head, n_kv_head: transformer width, depth, heads (``n_kv_head=None``: MHA).
        multiple_of, ffn_dim_multiplier: SwiGLU hidden size rule (LlamaGen/LLaMA).
        rope_base, norm_eps, initializer_range: as upstream.
        token_dropout_p, attn_dropout_p, resid_dropout_p, ffn_dropout_p, drop_path_rate: training only.
        num_classes: classes for ``c2i``; class id ``num_classes`` is the null (CFG) class.
        caption_dim: text-encoder width for ``t2i``.
        class_dropout_prob: condition dropout for classifier-free guidance training.
        model_type: ``"c2i"`` or ``"t2i"``.
        vocab_size: image-token vocabulary (the VQ codebook size).
        cls_token_num: condition positions (1 for ``c2i``, the caption length for ``t2i``).
        block_size: image tokens per image; a square number (grid ``sqrt(block_size)``).
    """

    @register_to_config
    def __init__(
        self,
        dim: int = 768,
        n_layer: int = 12,
        n_head: int = 12,
        n_kv_head: int | None = None,
        multiple_of: int = 256,
        ffn_dim_multiplier: float | None = None,
        rope_base: float = 10000.0,
        norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        token_dropout_p: float = 0.1,
        attn_dropout_p: float = 0.0,
        resid_dropout_p: float = 0.1,
        ffn_dropout_p: float = 0.1,
        drop_path_rate: float = 0.0,
        num_classes: int = 1000,
        caption_dim: int = 2048,
        class_dropout_prob: float = 0.1,
        model_type: str = "c2i",
        vocab_size: int = 16384,
        cls_token_num: int = 1,
        block_size: int = 256,
    ) -> None:
        super().__init__()
        if model_type not in ("c2i", "t2i"):
            raise ValueError(f"model_type must be 'c2i' or 't2i', got {model_type!r}")
        grid = int(round(block_size**0.5))
        if grid * grid != block_size:
            raise ValueError(f"block_size must be a square number of image tokens, got {block_size}")
        if dim % n_head:
            raise ValueError(f"dim ({dim}) must be divisible by n_head ({n_head})")
        self.model_type = model_type
        self.vocab_size = vocab_size
        self.num_classes = num_classes
        self.num_cond_tokens = cls_token_num
        self.num_tokens = block_size
        self.grid_size = grid
        self.head_dim = dim // n_head
        cfg = dict(
            dim=dim, n_head=n_head, n_kv_head=n_kv_head, multiple_of=multiple_of,
            ffn_dim_multiplier=ffn_dim_multiplier, norm_eps=norm_eps, attn_dropout_p=attn_dropout_p,
            resid_dropout_p=resid_dropout_p, ffn_dropout_p=ffn_dropout_p,
        )  # fmt: skip
        if model_type == "c2i":
            self.cls_embedding: nn.Module = LabelEmbedder(num_classes, dim, class_dropout_prob)
        else:
            self.cls_embedding = CaptionEmbedder(caption_dim, dim, cls_token_num)
        self.class_dropout_prob = class_dropout_prob
        self.tok_embeddings = nn.Embedding(vocab_size, dim)
        self.tok_dropout = nn.Dropout(token_dropout_p)
        dpr = [drop_path_rate * i / max(n_layer - 1, 1) for i in range(n_layer)]
        self.layers = nn.ModuleList(TransformerBlock(cfg, dpr[i]) for i in range(n_layer))
        self.norm = RMSNorm(dim, norm_eps)
        self.output = nn.Linear(dim, vocab_size, bias=False)
        self.register_buffer(
            "freqs_cis", precompute_freqs_cis_2d(grid, self.head_dim, rope_base, cls_token_num), persistent=False
        )
        # The cached forward's mask rule: a key is visible to a query when its rank is not above the
        # query's. Sequence position here (causal); a subclass with another rule (NAR's anti-diagonals)
        # replaces this table.
        self.register_buffer("attention_rank", torch.arange(cls_token_num + block_size), persistent=False)
        self._key_valid: Tensor | None = None  # [B, S_max] False at padded condition positions
        self.max_batch_size = 0
        self.max_seq_length = 0
        self._init_weights(initializer_range)

    # ----------------------------------------------------------------------------- set-up
    def _init_weights(self, std: float) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, std)
        nn.init.zeros_(self.output.weight)  # upstream zero-initialises the head

    @property
    def seq_len(self) -> int:
        return self.num_cond_tokens + self.num_tokens

    # ----------------------------------------------------------------------------- the TokenModel contract
    @property
    def grid(self) -> tuple[int, int]:
        """Image-token grid ``(H, W)``."""
        return (self.grid_size, self.grid_size)

    @property
    def generation_order(self) -> GenerationOrder:
        """LlamaGen generates in raster order, one token per step."""
        return GenerationOrder.raster(self.grid)

    @property
    def condition_kind(self) -> str:
        """``"class"`` (``c2i``: integer ids) or ``"text"`` (``t2i``: caption embeddings)."""
        return "class" if self.model_type == "c2i" else "text"

    @property
    def device(self) -> torch.device:
        return self.output.weight.device

    def token_embeddings(self) -> Tensor:
        """The input token-embedding table ``[V, dim]`` (:class:`SupportsTokenEmbeddings`)."""
        return self.tok_embeddings.weight

    def setup_caches(self, max_batch_size: int, max_seq_length: int | None = None, dtype=None) -> None:
        """Allocate a static KV cache for ``max_batch_size`` rows (CFG doubles the batch)."""
        max_seq_length = find_multiple(max_seq_length or self.seq_len, 8)
        dtype = dtype or self.output.weight.dtype
        device = self.output.weight.device
        for layer in self.layers:
            a = layer.attention
            layer.attention.kv_cache = KVCache(max_batch_size, a.n_kv_head, max_seq_length, a.head_dim, dtype, device)
        self.max_batch_size, self.max_seq_length = max_batch_size, max_seq_length
        self._key_valid = torch.ones(max_batch_size, max_seq_length, dtype=torch.bool, device=device)

    def clear_caches(self) -> None:
        for layer in self.layers:
            layer.attention.kv_cache = None
        self.max_batch_size = self.max_seq_length = 0
        self._key_valid = None

    # ----------------------------------------------------------------------------- conditions
    def check_condition(self, cond: Tensor) -> None:
        """Raise ``ValueError`` unless ``cond`` is a valid condition batch for this model."""
        if self.model_type == "c2i":
            if cond.dim() != 1 or cond.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"c2i condition must be integer class ids [B], got {tuple(cond.shape)} {cond.dtype}")
            if cond.numel() and (int(cond.min()) < 0 or int(cond.max()) > self.num_classes):
                raise ValueError(
                    f"class id out of range: got {cond.tolist()}, valid ids are 0..{self.num_classes - 1}"
                    f" (and {self.num_classes} for the null class)"
                )
        else:
            want = (self.num_cond_tokens, self.cls_embedding.cap_proj.fc1.in_features)
            if cond.dim() != 3 or tuple(cond.shape[1:]) != want:
                raise ValueError(
                    f"t2i condition must be caption embeddings [B, {want[0]}, {want[1]}], got {tuple(cond.shape)}"
                )

    def null_condition(self, cond: Tensor) -> Tensor:
        """The unconditional counterpart of ``cond`` (null class or the learned empty caption)."""
        if self.model_type == "c2i":
            return torch.full_like(cond, self.num_classes)
        return self.cls_embedding.uncond_embedding.to(cond.dtype).expand_as(cond).clone()

    def embed_condition(self, cond: Tensor, drop: Tensor | None = None) -> Tensor:
        return self.cls_embedding(cond, drop)[:, : self.num_cond_tokens]

    # ----------------------------------------------------------------------------- training
    def forward(self, tokens: Tensor, cond: Tensor, drop: Tensor | None = None, cond_mask: Tensor | None = None):
        """Teacher-forced logits ``[B, N, V]``; ``logits[:, i]`` predicts ``tokens[:, i]``.

        Args:
            tokens: image tokens ``[B, N]``.
            cond: class ids ``[B]`` or caption embeddings ``[B, T, caption_dim]``.
            drop: optional bool ``[B]``: rows whose condition is replaced by the null condition.
            cond_mask: optional bool ``[B, T]``: False at padded caption positions.
        """
        if self.training and drop is None and self.class_dropout_prob > 0:
            drop = torch.rand(cond.shape[0], device=cond.device) < self.class_dropout_prob
        T = self.num_cond_tokens
        h = torch.cat([self.embed_condition(cond, drop), self.tok_embeddings(tokens[:, :-1])], dim=1)
        h = self.tok_dropout(h)
        L = h.shape[1]
        freqs = self.freqs_cis[:L].unsqueeze(0)
        mask = None
        if cond_mask is not None:
            valid = torch.ones(h.shape[0], L, dtype=torch.bool, device=h.device)
            valid[:, :T] = cond_mask
            causal = torch.ones(L, L, dtype=torch.bool, device=h.device).tril()
            mask = (causal[None] & valid[:, None, :]) | torch.eye(L, dtype=torch.bool, device=h.device)[None]
            mask = mask[:, None]
        for layer in self.layers:
            h = layer(h, freqs, None, mask, None)
        return self.output(self.norm(h)).float()[:, T - 1 :]

    # ----------------------------------------------------------------------------- inference
    def _run_cached(self, h: Tensor, pos: Tensor) -> Tensor:
        """Logits ``[B, S, V]`` of the cached forward (see :meth:`_hidden_cached`)."""
        return self.output(self._hidden_cached(h, pos)).float()

    def _hidden_cached(self, h: Tensor, pos: Tensor) -> Tensor:
        """Final-norm hidden states ``[B, S, dim]`` of a cached forward (what the heads read)."""
        # h: [B, S, dim]; pos: [S] or [B, S] absolute sequence positions
        B, S = h.shape[:2]
        if self._key_valid is None or B > self.max_batch_size:
            raise RuntimeError(f"call setup_caches(max_batch_size >= {B}) before cached inference")
        if int(pos.max()) >= self.max_seq_length:
            raise ValueError(f"position {int(pos.max())} is beyond the cache length {self.max_seq_length}")
        kv_len = int(pos.max()) + 1
        pos2 = pos.expand(B, S) if pos.dim() == 1 else pos
        keys = torch.arange(kv_len, device=h.device)
        rank = self.attention_rank
        mask = (rank[keys][None, None, :] <= rank[pos2][:, :, None]) & self._key_valid[:B, None, :kv_len]
        mask = mask | (keys[None, None, :] == pos2[:, :, None])  # a padded query still sees itself
        freqs = self.freqs_cis[pos2]  # [B, S, D/2, 2]
        for layer in self.layers:
            h = layer(h, freqs, pos, mask[:, None], kv_len)
        return self.norm(h)

    @torch.no_grad()
    def prefill(self, cond: Tensor, cond_mask: Tensor | None = None) -> Tensor:
        """Write the condition into the cache; return the logits ``[B, V]`` for image token 0."""
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
        pos = torch.arange(T, device=h.device)
        return self._run_cached(h, pos)[:, -1]

    @torch.no_grad()
    def decode_step(self, tokens: Tensor, token_pos: Tensor, query_pos: Tensor | None = None) -> Tensor:
        """Forward image tokens at image positions ``token_pos`` through the cache.

        Args:
            tokens: ``[B, S]`` image-token ids.
            token_pos: image positions ``[S]`` (shared by all rows) or ``[B, S]`` (per row),
                in ``0..num_tokens-1``.
            query_pos: image positions ``[Q]`` or ``[B, Q]`` whose distributions are wanted; each
                ``q`` needs ``q - 1`` among the row's ``token_pos`` (raster: a token is predicted
                from its predecessor). ``None``: one query per input, ``token_pos + 1``.

        Returns:
            logits ``[B, S, V]`` (``logits[:, s]`` is for image position ``token_pos[..., s] + 1``),
            or ``[B, Q, V]`` for ``query_pos``.
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, S], got {tuple(tokens.shape)}")
        if token_pos.shape[-1] != tokens.shape[1]:
            raise ValueError("token_pos must give one position per token")
        h = self.tok_dropout(self.tok_embeddings(tokens))
        logits = self._run_cached(h, token_pos + self.num_cond_tokens)
        return logits if query_pos is None else _select_queries(logits, token_pos + 1, query_pos)

    @torch.no_grad()
    def refill_step(
        self, tokens: Tensor, token_pos: Tensor, rows: Tensor, cond: Tensor, cond_mask: Tensor | None = None
    ) -> Tensor:
        """A :meth:`decode_step` in which the cache rows ``rows`` start a new image (continuous batching).

        The other rows decode as usual. In each refilled row the first ``T = num_cond_tokens``
        inputs are replaced by the embedded condition at sequence positions ``0..T-1`` (a prefill
        folded into the same forward, so a finished row takes the next image without an extra
        forward); its remaining inputs are placeholders at image positions ``0..S-T-1``, written
        to the cache and overwritten by the row's next forward before any query can see them.

        Args:
            tokens: ``[B, S]`` image-token ids, ``S >= T``.
            token_pos: ``[B, S]`` image positions of the rows that keep decoding.
            rows: ``[R]`` cache rows that start a new image.
            cond: ``[R, ...]`` their conditions (class ids or caption embeddings).
            cond_mask: optional ``[R, T]`` caption padding masks.

        Returns:
            logits ``[B, S, V]``; for a refilled row, ``logits[r, T - 1]`` is the distribution of
            image token 0 (what :meth:`prefill` returns).
        """
        B, S = tokens.shape
        T = self.num_cond_tokens
        if S < T:
            raise ValueError(f"a refill step needs at least {T} inputs per row (the condition), got {S}")
        rows = torch.as_tensor(rows, dtype=torch.long, device=tokens.device)
        self.check_condition(cond)
        if cond.shape[0] != rows.numel():
            raise ValueError(f"got {cond.shape[0]} conditions for {rows.numel()} refilled rows")
        if self._key_valid is None or B > self.max_batch_size:
            raise RuntimeError(f"call setup_caches(max_batch_size >= {B}) before cached inference")
        pos = (token_pos.expand(B, S) if token_pos.dim() == 1 else token_pos) + T
        pos = pos.clone()
        pos[rows] = torch.arange(S, device=pos.device).clamp_max(self.seq_len - 1)
        self._key_valid[rows] = True
        if cond_mask is not None:
            if cond_mask.shape != (rows.numel(), T):
                raise ValueError(f"cond_mask must be [{rows.numel()}, {T}], got {tuple(cond_mask.shape)}")
            self._key_valid[rows, :T] = cond_mask.to(torch.bool)
        h = self.tok_embeddings(tokens)
        h[rows, :T] = self.embed_condition(cond).to(h.dtype)
        return self._run_cached(self.tok_dropout(h), pos)


def _select_queries(logits: Tensor, predicts: Tensor, query_pos: Tensor) -> Tensor:
    """Rows of ``logits [B, S, V]`` (input ``s`` predicts position ``predicts[..., s]``) for ``query_pos``."""
    B, S = logits.shape[:2]
    pred = predicts.expand(B, S) if predicts.dim() == 1 else predicts
    qp = query_pos.to(pred.device)
    qp = qp.expand(B, -1) if qp.dim() == 1 else qp
    hit = pred[:, None, :] == qp[:, :, None]  # [B, Q, S]
    if not bool(hit.any(-1).all()):
        raise ValueError("query_pos asks for a position whose predecessor is not written in this forward")
    idx = hit.to(torch.int8).argmax(-1)  # [B, Q]
    return logits.gather(1, idx[..., None].expand(-1, -1, logits.shape[-1]))


# --------------------------------------------------------------------------------- registered sizes
# Hyper-parameters from LlamaGen's gpt.py presets; parameter counts are upstream's comments (c2i, 256 px).
_SIZES = {
    "b": dict(n_layer=12, n_head=12, dim=768),  # 111M
    "l": dict(n_layer=24, n_head=16, dim=1024),  # 343M
    "xl": dict(n_layer=36, n_head=20, dim=1280),  # 775M
    "xxl": dict(n_layer=48, n_head=24, dim=1536),  # 1.4B
    "xxxl": dict(n_layer=48, n_head=40, dim=2560),  # 3.9B
    "1b": dict(n_layer=22, n_head=32, dim=2048),  # 1.2B
    "3b": dict(n_layer=24, n_head=32, dim=3200),  # 3.1B
    "7b": dict(n_layer=32, n_head=32, dim=4096),  # 6.6B
}


def _make_size(size: str, preset: dict) -> None:
    def factory(**kwargs) -> GPT:
        return GPT(**{**preset, **kwargs})

    factory.__name__ = f"llamagen_gpt_{size}"
    factory.__doc__ = (
        f"LlamaGen GPT-{size.upper()} ({preset['n_layer']} layers, dim {preset['dim']}, {preset['n_head']} heads); "
        "pass model_type='t2i', cls_token_num=120 for text-to-image, block_size for other resolutions."
    )
    register_model(factory.__name__, kind="generator", family="llamagen_gpt")(factory)


for _size, _preset in _SIZES.items():
    _make_size(_size, _preset)


# The small family the embedded (CPU-trained) models use: a config sets the sizes; the defaults are tiny.
_SMALL_C2I = dict(dim=32, n_layer=2, n_head=4, multiple_of=16, vocab_size=64, block_size=16, num_classes=10)
_SMALL_T2I = dict(
    dim=32, n_layer=2, n_head=4, multiple_of=16, vocab_size=64, block_size=16, model_type="t2i",
    caption_dim=24, cls_token_num=6,
)  # fmt: skip


@register_model("embedded_gpt", kind="generator", family="llamagen_gpt")
def embedded_gpt(**kwargs) -> GPT:
    """Small class-conditional LlamaGen GPT of the embedded models (sized by the config; tiny by default)."""
    return GPT(**{**_SMALL_C2I, **kwargs})


@register_model("embedded_gpt_t2i", kind="generator", family="llamagen_gpt")
def embedded_gpt_t2i(**kwargs) -> GPT:
    """Small text-conditional LlamaGen GPT of the embedded models (sized by the config; tiny by default)."""
    return GPT(**{**_SMALL_T2I, **kwargs})


@register_model("test_gpt", kind="generator", family="llamagen_gpt")
def test_gpt(**kwargs) -> GPT:
    """Tiny class-conditional GPT for tests (dim 32, 2 layers, vocab 64, 4x4 tokens, 10 classes)."""
    return GPT(**{**_SMALL_C2I, **kwargs})


@register_model("test_gpt_t2i", kind="generator", family="llamagen_gpt")
def test_gpt_t2i(**kwargs) -> GPT:
    """Tiny text-conditional GPT for tests (caption 6 tokens x 24 dims, vocab 64, 4x4 tokens)."""
    return GPT(**{**_SMALL_T2I, **kwargs})


# Non-persistent upstream attributes that some checkpoints carry (older torch saved them).
_UPSTREAM_IGNORED = ("freqs_cis", "causal_mask")


def import_llamagen_gpt(path: str | Path, name: str = "llamagen_gpt_b", weights: str = "model", **kwargs) -> GPT:
    """Build the registered model ``name`` (with ``kwargs``) and load an upstream LlamaGen ``.pt``.

    The file is read with ``weights_only=True``; ``model``/``module``/``state_dict`` wrappers are
    unwrapped; any missing, unexpected or mis-shaped key raises :class:`CheckpointMismatchError`
    naming the keys (e.g. a t2i checkpoint loaded as c2i, or the wrong ``block_size``).

    Args:
        path: the ``.pt`` file.
        name: registered GPT preset.
        weights: ``"model"`` (default: the trained weights, what LlamaGen's ``sample_c2i.py`` loads)
            or ``"ema"`` (the ``ema`` entry ``train_c2i.py --ema`` saves beside them); asking for
            ``"ema"`` in a file without one is a ``ValueError``.
        **kwargs: constructor overrides for the preset.
    """
    state = read_torch_checkpoint(path, weights=weights)
    ignored = _UPSTREAM_IGNORED + tuple(k for k in state if ".kv_cache." in k)
    model = MODELS.create(name, **kwargs)
    load_state_dict_strict(model, state, source=str(path), ignore=ignored)
    return model.eval()
