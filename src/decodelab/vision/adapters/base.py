"""What every transformers adapter shares: a position-indexed KV cache, a cached forward through a
transformers decoder stack, and the :class:`~decodelab.speculative.contract.TokenModel` contract over
an image laid out as ``prompt | grid rows`` in one token sequence.

Sequence layout (``T = prompt_length`` prompt positions, left-padded):

- slots ``0 .. T-1``: the prompt (its last tokens are the family's image prefix, e.g. Janus's
  ``<begin_of_image>`` or Emu3's ``<|image start|>H*W<|image token|>``);
- image position ``i = r * W + c`` sits at slot ``T + i + r * eol``, where ``eol`` is 1 for families
  that close every row with an end-of-line token (Emu3, Lumina-mGPT) and 0 otherwise (Janus).

The end-of-line tokens are *structural*: they are forced, never sampled, so a decoder never sees
them. :meth:`ImageSequenceAdapter.decode_step` inserts the EOL after each row-end token it is given
and reads the next row's first distribution from the EOL's output; the acceptance test therefore
only ever compares image-token distributions.

Rolling back is free as in LlamaGen's GPT: every slot below a query is written in the same forward
or an earlier one before the query can see it, and a rejected draft's entries are overwritten by
the next forward over the same slots.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from decodelab.speculative.contract import GenerationOrder

__all__ = ["ImageSequenceAdapter", "PositionKVCache", "VocabularyImageAdapter", "run_backbone", "select_queries"]


class PositionKVCache:
    """Preallocated keys/values per layer ``[B, Hkv, S_max, D]`` written at explicit sequence slots.

    It stands in for a transformers ``Cache`` inside the attention modules, which call
    ``cache.update(key_states, value_states, layer_idx, ...)`` and attend over what it returns:
    here ``update`` writes the new entries at the slots given to :meth:`begin` (one row of slots per
    batch row, so rows may sit at different positions) and returns the first ``kv_len`` entries.
    """

    is_compileable = False

    def __init__(self, num_layers: int, batch: int, kv_heads: int, seq_len: int, head_dim: int, dtype, device) -> None:
        shape = (batch, kv_heads, seq_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.batch, self.seq_len = batch, seq_len
        self._slots: Tensor | None = None
        self._kv_len = 0

    def begin(self, slots: Tensor, kv_len: int) -> None:
        """The slots ``[B, S]`` the next forward writes, and how many leading entries it attends over."""
        self._slots, self._kv_len = slots, kv_len

    def update(
        self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args, **kwargs
    ) -> tuple[Tensor, Tensor]:
        # key_states, value_states: [B, Hkv, S, D]
        if self._slots is None:
            raise RuntimeError("PositionKVCache.begin(slots, kv_len) must be called before a forward")
        B = key_states.shape[0]
        rows = torch.arange(B, device=key_states.device)[:, None]
        k, v = self.keys[layer_idx], self.values[layer_idx]
        k[rows, :, self._slots] = key_states.transpose(1, 2).to(k.dtype)  # indexed view: [B, S, Hkv, D]
        v[rows, :, self._slots] = value_states.transpose(1, 2).to(v.dtype)
        return k[:B, :, : self._kv_len], v[:B, :, : self._kv_len]


def run_backbone(
    lm: nn.Module, h: Tensor, slots: Tensor, rope_pos: Tensor, cache: PositionKVCache, key_valid: Tensor
) -> Tensor:
    """Final-norm hidden states ``[B, S, D]`` of a cached forward through a transformers decoder stack.

    ``lm`` is the decoder model (``LlamaModel``, ``Emu3TextModel``, ``ChameleonModel``): its
    ``layers``, ``rotary_emb`` and ``norm`` are called directly, with this module's cache and an
    explicit additive mask, so its own cache/mask construction (which assumes one shared position
    per forward) is bypassed.

    Args:
        h: input embeddings ``[B, S, D]``.
        slots: sequence slots ``[B, S]`` the inputs are written at (a query sees every valid slot at
            or before its own).
        rope_pos: rotary position ids ``[B, S]``.
        cache: the static cache.
        key_valid: ``[B_max, S_max]`` False at padded prompt slots.
    """
    B, S = h.shape[:2]
    if B > cache.batch:
        raise RuntimeError(f"call setup_caches(max_batch_size >= {B}) before cached inference")
    kv_len = int(slots.max()) + 1
    if kv_len > cache.seq_len:
        raise ValueError(f"slot {kv_len - 1} is beyond the cache length {cache.seq_len}")
    keys = torch.arange(kv_len, device=h.device)
    visible = (keys[None, None, :] <= slots[:, :, None]) & key_valid[:B, None, :kv_len]
    visible = visible | (keys[None, None, :] == slots[:, :, None])  # a padded query still sees itself
    mask = torch.zeros(B, 1, S, kv_len, dtype=h.dtype, device=h.device)
    mask = mask.masked_fill(~visible[:, None], torch.finfo(h.dtype).min)
    cache.begin(slots, kv_len)
    pos_emb = lm.rotary_emb(h, position_ids=rope_pos)
    for layer in lm.layers[: lm.config.num_hidden_layers]:
        h = layer(
            h, attention_mask=mask, position_ids=rope_pos, cache=cache, use_cache=True, position_embeddings=pos_emb
        )
        if isinstance(h, tuple):
            h = h[0]
    return lm.norm(h)


def select_queries(logits: Tensor, predicts: Tensor, query_pos: Tensor) -> Tensor:
    """Entries of ``logits [B, S, V]`` (entry ``s`` is for image position ``predicts[..., s]``) for ``query_pos``."""
    B, S = logits.shape[:2]
    pred = predicts.expand(B, S) if predicts.dim() == 1 else predicts
    qp = query_pos.to(pred.device)
    qp = qp.expand(B, -1) if qp.dim() == 1 else qp
    hit = pred[:, None, :] == qp[:, :, None]  # [B, Q, S]
    if not bool(hit.any(-1).all()):
        raise ValueError("query_pos asks for a position whose predecessor is not written in this forward")
    idx = hit.to(torch.int8).argmax(-1)  # [B, Q]
    return logits.gather(1, idx[..., None].expand(-1, -1, logits.shape[-1]))


class ImageSequenceAdapter(nn.Module):
    """A transformers image generator as a :class:`~decodelab.speculative.contract.TokenModel`.

    Conditions are prompt token ids ``[B, T]`` (left-padded to ``prompt_length``, with a padding mask);
    image tokens are codes of the model's VQ codebook ``0 .. V-1`` (the adapter maps them to and from
    the language model's vocabulary). A family subclass provides the hooks below.

    Args:
        hf_model: the transformers model (kept as ``self.hf``).
        lm: its decoder stack (``layers`` / ``rotary_emb`` / ``norm``).
        grid: image-token grid ``(H, W)``.
        vocab_size: image-token vocabulary ``V`` (the VQ codebook size).
        prompt_length: prompt positions ``T``.
        eol: whether each row is closed by a forced end-of-line token.
    """

    condition_kind = "text"
    num_classes = 0

    def __init__(
        self, hf_model: nn.Module, lm: nn.Module, grid: tuple[int, int], vocab_size: int, prompt_length: int, eol: bool
    ) -> None:
        super().__init__()
        if prompt_length < 1:
            raise ValueError(f"prompt_length must be >= 1, got {prompt_length}")
        self.hf = hf_model
        self._lm = [lm]  # a list, so the backbone is not registered twice as a submodule
        self._grid = (int(grid[0]), int(grid[1]))
        self.vocab_size = int(vocab_size)
        self.num_tokens = self._grid[0] * self._grid[1]
        self.num_cond_tokens = int(prompt_length)
        self.eol = bool(eol)
        self._cache: PositionKVCache | None = None
        self._key_valid: Tensor | None = None  # [B_max, S_max]
        self._rope_shift: Tensor | None = None  # [B_max]

    # ----------------------------------------------------------------------------- family hooks
    def embed_prompt(self, ids: Tensor) -> Tensor:
        """Prompt ids ``[B, T]`` -> input embeddings ``[B, T, D]``."""
        raise NotImplementedError

    def embed_image(self, tokens: Tensor) -> Tensor:
        """Image codes ``[B, S]`` -> input embeddings ``[B, S, D]``."""
        raise NotImplementedError

    def eol_embedding(self) -> Tensor:
        """The end-of-line token's input embedding ``[D]`` (families with ``eol``)."""
        raise NotImplementedError

    def image_logits(self, hidden: Tensor) -> Tensor:
        """Final hidden states ``[..., D]`` -> logits over the image codes ``[..., V]`` (float32)."""
        raise NotImplementedError

    def null_condition(self, cond: Tensor) -> Tensor:
        """The family's unconditional prompt for each row of ``cond``."""
        raise NotImplementedError

    def prompt_valid(self, cond: Tensor, cond_mask: Tensor | None) -> Tensor:
        """``[B, T]`` True at the prompt slots queries may attend to (default: ``cond_mask``, else all)."""
        if cond_mask is None:
            return torch.ones_like(cond, dtype=torch.bool)
        return cond_mask.to(torch.bool)

    def rope_shift(self, valid: Tensor) -> Tensor:
        """``[B]`` subtracted from slots to give rotary positions (default 0: position = slot)."""
        return torch.zeros(valid.shape[0], dtype=torch.long, device=valid.device)

    # ----------------------------------------------------------------------------- the contract
    @property
    def lm(self) -> nn.Module:
        return self._lm[0]

    @property
    def grid(self) -> tuple[int, int]:
        return self._grid

    @property
    def generation_order(self) -> GenerationOrder:
        return GenerationOrder.raster(self._grid)

    @property
    def seq_len(self) -> int:
        return self.num_cond_tokens + self.num_tokens + self.eol * self._grid[0]

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    def slot_of(self, pos: Tensor) -> Tensor:
        """Sequence slots of image positions ``pos``."""
        return self.num_cond_tokens + pos + (pos // self._grid[1]) * int(self.eol)

    def setup_caches(self, max_batch_size: int, max_seq_length: int | None = None, dtype=None) -> None:
        """Allocate the static cache for ``max_batch_size`` rows (CFG doubles the batch)."""
        cfg = self.lm.config
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        seq = max(max_seq_length or 0, self.seq_len)
        seq = seq + (-seq) % 8
        dev = self.device
        self._cache = PositionKVCache(
            cfg.num_hidden_layers, max_batch_size, kv_heads, seq, head_dim, dtype or self.dtype, dev
        )
        self._key_valid = torch.ones(max_batch_size, seq, dtype=torch.bool, device=dev)
        self._rope_shift = torch.zeros(max_batch_size, dtype=torch.long, device=dev)

    def clear_caches(self) -> None:
        self._cache = self._key_valid = self._rope_shift = None

    def save_pretrained(self, directory) -> None:
        raise ValueError(
            f"{type(self).__name__} wraps a transformers checkpoint and is not saved by decodelab: load it again "
            "from the checkpoint directory (load_pipeline(name, weights=DIR))"
        )

    def check_condition(self, cond: Tensor) -> None:
        """Raise ``ValueError`` unless ``cond`` is prompt ids ``[B, T]`` inside the text vocabulary."""
        T = self.num_cond_tokens
        if cond.dim() != 2 or cond.shape[1] != T or cond.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"the condition must be prompt token ids [B, {T}] (left-padded to prompt_length={T}; "
                f"build them with the adapter's prompt encoder), got {tuple(cond.shape)} {cond.dtype}"
            )
        n = self.lm.config.vocab_size
        if cond.numel() and (int(cond.min()) < 0 or int(cond.max()) >= n):
            raise ValueError(f"prompt ids must be in 0..{n - 1}, got {int(cond.min())}..{int(cond.max())}")

    def _need_cache(self, B: int) -> PositionKVCache:
        if self._cache is None or B > self._cache.batch:
            raise RuntimeError(f"call setup_caches(max_batch_size >= {B}) before cached inference")
        return self._cache

    def _run(self, h: Tensor, slots: Tensor) -> Tensor:
        B = h.shape[0]
        cache = self._need_cache(B)
        rope = (slots - self._rope_shift[:B, None]).clamp_min(0)
        return run_backbone(self.lm, h.to(self.dtype), slots, rope, cache, self._key_valid)

    def _start_rows(self, rows: Tensor, cond: Tensor, cond_mask: Tensor | None) -> None:
        T = self.num_cond_tokens
        valid = self.prompt_valid(cond, cond_mask).to(self._key_valid.device)
        self._key_valid[rows] = True
        self._key_valid[rows, :T] = valid
        self._rope_shift[rows] = self.rope_shift(valid).to(self._rope_shift.device)

    @torch.no_grad()
    def prefill(self, cond: Tensor, cond_mask: Tensor | None = None) -> Tensor:
        """Write the prompt into the cache; return logits ``[B, V]`` for image token 0."""
        self.check_condition(cond)
        B, T = cond.shape
        if cond_mask is not None and cond_mask.shape != (B, T):
            raise ValueError(f"cond_mask must be [B, {T}], got {tuple(cond_mask.shape)}")
        self._need_cache(B)
        self._start_rows(torch.arange(B, device=self.device), cond, cond_mask)
        slots = torch.arange(T, device=self.device).expand(B, T)
        hidden = self._run(self.embed_prompt(cond.to(self.device)), slots)
        return self.image_logits(hidden[:, -1])

    def _expand(self, h: Tensor, pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Insert the forced EOL after every row-end input (except the image's last token).

        Returns embeddings ``[B, E, D]``, slots ``[B, E]`` and, per input ``s``, the entry whose
        output is the distribution of image position ``pos[:, s] + 1`` (``[B, S]``). Rows with fewer
        entries than ``E`` repeat their last entry (the same write twice, harmless).
        """
        B, S, D = h.shape
        slots = self.slot_of(pos)
        if not self.eol:
            return h, slots, torch.arange(S, device=h.device).expand(B, S).clone()
        W = self._grid[1]
        extra = ((pos % W == W - 1) & (pos < self.num_tokens - 1)).long()  # [B, S]
        idx = torch.arange(S, device=h.device) + extra.cumsum(1) - extra  # entry of each input
        total = S + extra.sum(1)  # [B]
        E = int(total.max())
        emb = torch.zeros(B, E, D, dtype=h.dtype, device=h.device)
        out_slots = torch.zeros(B, E, dtype=torch.long, device=h.device)
        emb.scatter_(1, idx[..., None].expand(-1, -1, D), h)
        out_slots.scatter_(1, idx, slots)
        rows, cols = torch.nonzero(extra, as_tuple=True)
        emb[rows, idx[rows, cols] + 1] = self.eol_embedding().to(h.dtype)
        out_slots[rows, idx[rows, cols] + 1] = slots[rows, cols] + 1
        j = torch.arange(E, device=h.device)[None]
        src = torch.where(j < total[:, None], j, total[:, None] - 1)  # padding repeats the last entry
        emb = emb.gather(1, src[..., None].expand(-1, -1, D))
        return emb, out_slots.gather(1, src), idx + extra

    @torch.no_grad()
    def decode_step(self, tokens: Tensor, token_pos: Tensor, query_pos: Tensor | None = None) -> Tensor:
        """Write image codes ``tokens [B, S]`` at image positions ``token_pos`` (``[S]`` or ``[B, S]``).

        Returns logits ``[B, S, V]`` (entry ``s`` is for image position ``token_pos[..., s] + 1``), or
        ``[B, Q, V]`` for ``query_pos`` (each query's predecessor must be among the inputs).
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, S], got {tuple(tokens.shape)}")
        B, S = tokens.shape
        if token_pos.shape[-1] != S:
            raise ValueError("token_pos must give one position per token")
        pos = (token_pos.expand(B, S) if token_pos.dim() == 1 else token_pos).to(self.device)
        if int(pos.min()) < 0 or int(pos.max()) >= self.num_tokens:
            raise ValueError(f"image positions must be in 0..{self.num_tokens - 1}")
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size:
            raise ValueError(f"image tokens must be codes in 0..{self.vocab_size - 1}")
        emb, slots, out = self._expand(self.embed_image(tokens.to(self.device)), pos)
        hidden = self._run(emb, slots).gather(1, out[..., None].expand(-1, -1, emb.shape[-1]))
        logits = self.image_logits(hidden)
        return logits if query_pos is None else select_queries(logits, pos + 1, query_pos)

    @torch.no_grad()
    def refill_step(
        self, tokens: Tensor, token_pos: Tensor, rows: Tensor, cond: Tensor, cond_mask: Tensor | None = None
    ) -> Tensor:
        """A :meth:`decode_step` in which the cache rows ``rows`` start a new image (continuous batching).

        In each refilled row the first ``T`` inputs become the prompt at slots ``0..T-1`` and the rest
        are placeholders written past the prompt (overwritten before any query can see them); its
        entry ``T - 1`` is the distribution of image token 0. The other rows decode as usual.
        """
        B, S = tokens.shape
        T = self.num_cond_tokens
        if S < T:
            raise ValueError(f"a refill step needs at least {T} inputs per row (the prompt), got {S}")
        self.check_condition(cond)
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        if cond.shape[0] != rows.numel():
            raise ValueError(f"got {cond.shape[0]} prompts for {rows.numel()} refilled rows")
        if cond_mask is not None and cond_mask.shape != (rows.numel(), T):
            raise ValueError(f"cond_mask must be [{rows.numel()}, {T}], got {tuple(cond_mask.shape)}")
        self._need_cache(B)
        pos = (token_pos.expand(B, S) if token_pos.dim() == 1 else token_pos).to(self.device).clone()
        pos[rows] = 0  # no EOL is inserted for the refilled rows' placeholders
        emb, slots, out = self._expand(self.embed_image(tokens.to(self.device)), pos)
        E = emb.shape[1]
        j = torch.arange(E, device=self.device)
        emb[rows] = emb[rows, :1].expand(-1, E, -1).clone()
        emb[rows, :T] = self.embed_prompt(cond.to(self.device)).to(emb.dtype)
        slots[rows] = j.clamp_max(self.seq_len - 1)
        out[rows] = torch.arange(S, device=self.device)
        self._start_rows(rows, cond, cond_mask)
        hidden = self._run(emb, slots).gather(1, out[..., None].expand(-1, -1, emb.shape[-1]))
        return self.image_logits(hidden)


class VocabularyImageAdapter(ImageSequenceAdapter):
    """An adapter whose image codes are ordinary ids of the language model's vocabulary (Emu3, Chameleon).

    Code ``c`` is the vocabulary id ``code_to_id[c]``: its input embedding is that id's row of
    ``embed_tokens`` and its logit that id's row of ``lm_head`` (so the decoders sample over the ``V``
    codes only: the image-token-only mask of the original recipes, exactly). Prompts are left-padded
    with ``pad_token_id``; the padding of a row is the leading run of pad ids, so a null row keeps its
    own padding whatever mask the caller passes, and rotary positions count real tokens only
    (``attention_mask.cumsum - 1``, as transformers' ``generate`` builds them).

    Args:
        code_to_id: ``[V]`` vocabulary id of each code.
        pad_token_id: the id used for left padding.
        eol_token_id: the forced end-of-line id (``None``: no EOL in the layout).
        Others: as :class:`ImageSequenceAdapter`.
    """

    def __init__(
        self,
        hf_model: nn.Module,
        lm: nn.Module,
        grid: tuple[int, int],
        prompt_length: int,
        code_to_id: Tensor,
        pad_token_id: int,
        eol_token_id: int | None,
    ) -> None:
        super().__init__(hf_model, lm, grid, len(code_to_id), prompt_length, eol=eol_token_id is not None)
        self.pad_token_id = int(pad_token_id)
        self.eol_token_id = None if eol_token_id is None else int(eol_token_id)
        self.register_buffer("code_to_id", torch.as_tensor(code_to_id, dtype=torch.long), persistent=False)

    def embed_prompt(self, ids: Tensor) -> Tensor:
        return self.hf.get_input_embeddings()(ids)

    def embed_image(self, tokens: Tensor) -> Tensor:
        return self.hf.get_input_embeddings()(self.code_to_id[tokens])

    def eol_embedding(self) -> Tensor:
        return self.hf.get_input_embeddings().weight[self.eol_token_id]

    def image_logits(self, hidden: Tensor) -> Tensor:
        w = self.hf.lm_head.weight[self.code_to_id]  # [V, D]: only the image codes' rows
        return (hidden @ w.T).float()

    def prompt_valid(self, cond: Tensor, cond_mask: Tensor | None) -> Tensor:
        return (cond != self.pad_token_id).long().cumsum(1) > 0

    def rope_shift(self, valid: Tensor) -> Tensor:
        return (~valid).long().sum(1)

    def token_embeddings(self) -> Tensor:
        """The codes' input embeddings ``[V, D]`` (for relaxed acceptance)."""
        return self.hf.get_input_embeddings().weight[self.code_to_id]

    def image_ids(self, tokens: Tensor) -> Tensor:
        """Codes ``[B, H, W]`` (or ``[B, N]``) -> the generated ids of the grid, row EOLs included, ``[B, L]``."""
        B = tokens.shape[0]
        H, W = self.grid
        ids = self.code_to_id[tokens.reshape(B, H, W).to(self.code_to_id.device)]
        if self.eol_token_id is not None:
            eol = torch.full((B, H, 1), self.eol_token_id, dtype=ids.dtype, device=ids.device)
            ids = torch.cat([ids, eol], 2)
        return ids.reshape(B, -1)
