"""The decoder contract shared by every image-token decoder.

A decoder is registered by name (``@register_decoder("sjd")``), configured by typed keyword
arguments, and called on a :class:`TokenModel` with a condition batch. It returns a
:class:`DecodeOutput`: the image tokens ``[B, H, W]``, the number of target-model forward passes,
the tokens accepted by each forward for each row, the wall time, and decoder-specific extras.

Decoders work in *image positions* ``0..N-1``. Position ``i`` is fixed from the distribution the
model gives at position ``i - 1`` (or by the prefill for ``i = 0``).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from decodelab.registry import DECODERS
from decodelab.speculative.sampling import SamplingConfig, cfg_mix, logits_to_probs, row_generators

__all__ = ["DecodeOutput", "TokenModel", "Decoder", "DecodeContext", "create_decoder", "list_decoders"]


@runtime_checkable
class TokenModel(Protocol):
    """What a decoder needs from an image-token transformer (see ``vision.models.gpt.GPT``)."""

    vocab_size: int
    num_tokens: int  # image tokens per image (N = grid_size ** 2)
    grid_size: int
    num_cond_tokens: int

    def setup_caches(self, max_batch_size: int, max_seq_length: int | None = None, dtype=None) -> None: ...
    def check_condition(self, cond: Tensor) -> None: ...
    def null_condition(self, cond: Tensor) -> Tensor: ...
    def prefill(self, cond: Tensor, cond_mask: Tensor | None = None) -> Tensor: ...
    def decode_step(self, tokens: Tensor, token_pos: Tensor) -> Tensor: ...


@dataclass
class DecodeOutput:
    """What every decoder returns.

    Attributes:
        tokens: image tokens ``[B, H, W]``.
        nfe: target-model forward passes (the prefill included).
        accepted: ``[nfe, B]`` tokens fixed by each forward in each row (0 once a row is done).
        wall_time: seconds spent in the decoder.
        decoder: registered decoder name.
        lossless: True when the output distribution equals ``ar``'s exactly.
        extras: decoder-specific details (settings, per-row nfe, ...).
    """

    tokens: Tensor
    nfe: int
    accepted: Tensor
    wall_time: float
    decoder: str = ""
    lossless: bool = True
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def row_nfe(self) -> Tensor:
        """Forwards each row needed to finish ``[B]`` (ragged batches finish rows early)."""
        return (self.accepted > 0).sum(0)

    @property
    def mean_accepted(self) -> float:
        """Mean tokens fixed per forward, over forwards in which a row was still active."""
        active = self.accepted > 0
        return float(self.accepted[active].float().mean()) if active.any() else 0.0

    def accepted_histogram(self) -> dict[int, int]:
        """Count of forwards (per active row) by number of tokens they fixed."""
        vals = self.accepted[self.accepted > 0]
        counts = torch.bincount(vals)
        return {int(k): int(c) for k, c in enumerate(counts) if c > 0}

    def summary(self) -> dict[str, Any]:
        return {
            "decoder": self.decoder,
            "lossless": self.lossless,
            "nfe": self.nfe,
            "mean_row_nfe": float(self.row_nfe.float().mean()),
            "mean_accepted": self.mean_accepted,
            "wall_time_s": self.wall_time,
            "accepted_histogram": self.accepted_histogram(),
        }


class DecodeContext:
    """One decoding run: the model with its caches, CFG handling and per-image generators.

    ``batch`` rows share each forward. Without ``slots`` the rows are the images; with
    ``slots`` (continuous batching) ``batch = slots`` cache rows start with images
    ``0..slots-1`` and a decoder hands a finished row the next image through
    :meth:`forward`'s ``refill``.
    """

    def __init__(
        self,
        model: TokenModel,
        cond: Tensor,
        sampling: SamplingConfig,
        gens: list[torch.Generator],
        cond_mask: Tensor | None = None,
        slots: int | None = None,
    ) -> None:
        self.model, self.sampling = model, sampling
        self.num_images = cond.shape[0]
        self.batch = min(slots, self.num_images) if slots else self.num_images
        self.image_gens = gens  # one per image
        self.gens = gens[: self.batch]  # one per row of the first batch
        self.all_cond, self.all_mask = cond, cond_mask
        self.num_tokens = model.num_tokens
        self.device = cond.device
        self.cfg = sampling.use_cfg
        cond, cond_mask = self._with_null(cond[: self.batch], None if cond_mask is None else cond_mask[: self.batch])
        self.cond, self.cond_mask = cond, cond_mask
        self.nfe = 0

    def _with_null(self, cond: Tensor, cond_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if self.cfg:
            cond = torch.cat([cond, self.model.null_condition(cond)])
            if cond_mask is not None:
                # The null rows keep the caption's padding mask, as LlamaGen trains and samples them.
                cond_mask = torch.cat([cond_mask, cond_mask])
        return cond, cond_mask

    def _final(self, logits: Tensor, next_pos: Tensor) -> Tensor:
        # logits: [B or 2B, S, V]; next_pos: [B, S] image positions the distributions are for
        s = self.sampling
        if self.cfg:
            # LlamaGen guides the prefill and decode steps 0..cfg_interval: image tokens 0..cfg_interval+1
            apply = None if s.cfg_interval < 0 else next_pos <= s.cfg_interval + 1
            logits = cfg_mix(logits, s.cfg_scale, apply)
        return logits_to_probs(logits, s.temperature, s.top_k, s.top_p)

    def prefill(self) -> Tensor:
        """Condition forward; the final distribution ``[B, V]`` for image position 0."""
        self.model.setup_caches(self.cond.shape[0], None)
        logits = self.model.prefill(self.cond, self.cond_mask)
        self.nfe += 1
        zero = torch.zeros(self.batch, 1, dtype=torch.long, device=self.device)
        return self._final(logits[:, None], zero)[:, 0]

    def forward(self, tokens: Tensor, pos: Tensor, refill: dict[int, int] | None = None) -> Tensor:
        """Forward ``tokens [B, S]`` at image positions ``pos [S] or [B, S]``.

        ``refill`` maps rows to images that start in them (continuous batching; the model needs
        ``refill_step``): those rows' inputs are replaced by the image's condition, and their
        entry ``T - 1`` (``T = model.num_cond_tokens``) is the distribution of its image token 0.

        Returns the final distributions ``[B, S, V]``; entry ``s`` is for position ``pos[s] + 1``.
        """
        pos2 = pos.expand(self.batch, -1) if pos.dim() == 1 else pos
        next_pos = pos2 + 1
        if self.cfg:
            tokens = torch.cat([tokens, tokens])
            pos = pos if pos.dim() == 1 else torch.cat([pos, pos])
        if refill:
            rows = torch.tensor(sorted(refill), dtype=torch.long, device=self.device)
            images = torch.tensor([refill[r] for r in sorted(refill)], dtype=torch.long, device=self.all_cond.device)
            mask = None if self.all_mask is None else self.all_mask[images]
            cond, mask = self._with_null(self.all_cond[images], mask)
            if self.cfg:
                rows = torch.cat([rows, rows + self.batch])
            logits = self.model.refill_step(tokens, pos, rows, cond, mask)
            T = self.model.num_cond_tokens
            next_pos = next_pos.clone()
            next_pos[rows[: len(refill)]] = (torch.arange(pos2.shape[1], device=pos2.device) - (T - 1)).clamp_min(0)
        else:
            logits = self.model.decode_step(tokens, pos)
        self.nfe += 1
        return self._final(logits, next_pos)


class Decoder:
    """Base class: subclasses implement :meth:`_decode` and set ``name`` / ``lossless``.

    A subclass whose :meth:`_decode` serves more images than rows (continuous batching through
    :meth:`DecodeContext.forward`'s ``refill``) says so in :meth:`can_refill`.
    """

    name: str = ""
    lossless: bool = True

    def can_refill(self, model: TokenModel) -> bool:
        """True when :meth:`_decode` can refill finished rows of ``model``'s batch with the next images."""
        return False

    def settings(self) -> dict[str, Any]:
        """The decoder's keyword arguments, for records."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def _decode(self, ctx: DecodeContext) -> tuple[Tensor, list[Tensor], dict[str, Any]]:
        """Return tokens ``[num_images, N]``, per-forward accepted counts (each ``[num_images]``) and extras."""
        raise NotImplementedError

    @torch.no_grad()
    def __call__(
        self,
        model: TokenModel,
        cond: Tensor,
        *,
        sampling: SamplingConfig | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        cond_mask: Tensor | None = None,
        max_batch: int | None = None,
    ) -> DecodeOutput:
        """Decode one image per condition.

        Args:
            model: a :class:`TokenModel` (e.g. a GPT in eval mode).
            cond: class ids ``[M]`` or caption embeddings ``[M, T, C]``.
            sampling: temperature / top-k / top-p / CFG settings.
            generator: one generator (per-image streams are derived from it) or one per image.
            cond_mask: optional ``[M, T]`` caption padding mask.
            max_batch: rows per forward (``None``: all ``M`` at once). A continuous
                (:meth:`can_refill`) decoder keeps ``max_batch`` rows busy and starts the next image in a row as soon
                as the row finishes; other decoders run
                ``ceil(M / max_batch)`` batches one after another. Each image's tokens depend
                only on its own generator stream, never on the batching.
        """
        sampling = sampling or SamplingConfig()
        model.check_condition(cond)
        M = cond.shape[0]
        gens = row_generators(generator, M)
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_batch is None or M <= max_batch:
            return self._run(model, cond, sampling, gens, cond_mask, None)
        if max_batch > 1 and self.can_refill(model):
            return self._run(model, cond, sampling, gens, cond_mask, max_batch)
        outs = [
            self._run(model, cond[s : s + max_batch], sampling, gens[s : s + max_batch],
                      None if cond_mask is None else cond_mask[s : s + max_batch], None)
            for s in range(0, M, max_batch)
        ]  # fmt: skip
        return _concat_outputs(outs, max_batch)

    def _run(
        self,
        model: TokenModel,
        cond: Tensor,
        sampling: SamplingConfig,
        gens: list[torch.Generator],
        cond_mask: Tensor | None,
        slots: int | None,
    ) -> DecodeOutput:
        ctx = DecodeContext(model, cond, sampling, gens, cond_mask, slots)
        sync = torch.cuda.synchronize if cond.is_cuda else (lambda: None)
        sync()
        t0 = time.perf_counter()
        tokens, accepted, extras = self._decode(ctx)
        sync()
        wall = time.perf_counter() - t0
        G = model.grid_size
        if slots:
            extras = {"max_batch": slots, "continuous": True, **extras}
        return DecodeOutput(
            tokens=tokens.view(-1, G, G),
            nfe=ctx.nfe,
            accepted=torch.stack([a.to(torch.long).cpu() for a in accepted]),
            wall_time=wall,
            decoder=self.name,
            lossless=self.lossless,
            extras={"settings": self.settings(), **extras},
        )


def _concat_outputs(outs: list[DecodeOutput], max_batch: int) -> DecodeOutput:
    """Batches decoded one after another as one output (``accepted`` block-diagonal)."""
    M = sum(o.tokens.shape[0] for o in outs)
    accepted = torch.zeros(sum(o.nfe for o in outs), M, dtype=torch.long)
    f = b = 0
    for o in outs:
        accepted[f : f + o.nfe, b : b + o.tokens.shape[0]] = o.accepted
        f, b = f + o.nfe, b + o.tokens.shape[0]
    first = outs[0]
    return DecodeOutput(
        tokens=torch.cat([o.tokens for o in outs]),
        nfe=sum(o.nfe for o in outs),
        accepted=accepted,
        wall_time=sum(o.wall_time for o in outs),
        decoder=first.decoder,
        lossless=first.lossless,
        extras={**first.extras, "max_batch": max_batch, "continuous": False, "batches": len(outs)},
    )


def create_decoder(name: str, **kwargs: Any) -> Decoder:
    """Build the registered decoder ``name``; unknown names and keyword arguments raise ``ValueError``."""
    entry = DECODERS.get(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    params = inspect.signature(entry.fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ValueError(
                f"unknown argument(s) {', '.join(map(repr, unknown))} for decoder {name!r}; "
                f"valid arguments: {', '.join(params) or '(none)'}"
            )
    return entry.fn(**kwargs)


def list_decoders(pattern: str = "*") -> list[str]:
    return DECODERS.list(pattern)
