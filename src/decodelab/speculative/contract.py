"""What a decoder may ask of an image-token model: the grid, the generation order, the cached forward.

Every image-token generator decodelab decodes (LlamaGen's GPT, NAR, the adapters for external
models) is a :class:`TokenModel`: a transformer over ``T`` condition positions followed by the
``H x W`` image grid in raster order, with a **static KV cache written by position**. A forward
writes the tokens it is given at their positions and returns, for each *query* position, the
distribution of the image token there. Which cached keys a query sees is the model's own rule
(``attention_rank``: a key is visible when its rank is at most the query's rank), so

- LlamaGen's causal mask is ``rank = position`` and a rejected draft is rolled back by overwriting
  it before any query can see it;
- NAR's proximity mask is ``rank = anti-diagonal index``: causal across anti-diagonals and
  bidirectional inside one.

The :class:`GenerationOrder` says which positions each generation step fixes (raster: one per step;
next-neighbour: one anti-diagonal per step). Decoders follow it, ``DecodeOutput.accepted`` counts the
tokens fixed per step, and classifier-free-guidance intervals are measured in its steps.

Optional capabilities are declared protocols, checked with ``isinstance``:
:class:`SupportsRefill` (continuous batching folds a new image's prefill into a decode forward) and
:class:`SupportsTokenEmbeddings` (relaxed acceptance pools probability over nearby tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "CONDITION_KINDS",
    "GenerationOrder",
    "SupportsRefill",
    "SupportsTokenEmbeddings",
    "TokenModel",
    "anti_diagonal_rank",
]

CONDITION_KINDS = ("class", "text")


@dataclass(frozen=True)
class GenerationOrder:
    """The positions each generation step fixes, on an ``H x W`` grid (positions in raster order).

    Attributes:
        name: ``"raster"`` or ``"next_neighbor"`` (or a custom name).
        grid: ``(H, W)``.
        step_of: ``[H * W]`` long: the step at which each position is generated.
    """

    name: str
    grid: tuple[int, int]
    step_of: Tensor = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        H, W = self.grid
        if H < 1 or W < 1:
            raise ValueError(f"grid must be positive, got {self.grid}")
        if self.step_of.shape != (H * W,):
            raise ValueError(f"step_of must have one entry per position ({H * W}), got {tuple(self.step_of.shape)}")
        used = torch.unique(self.step_of)
        if int(used.min()) != 0 or used.numel() != int(used.max()) + 1:
            raise ValueError("step_of must use every step 0..S-1 (no empty step)")

    @classmethod
    def raster(cls, grid: tuple[int, int]) -> GenerationOrder:
        """One position per step, row by row (LlamaGen, SJD)."""
        H, W = grid
        return cls("raster", (H, W), torch.arange(H * W))

    @classmethod
    def next_neighbor(cls, grid: tuple[int, int]) -> GenerationOrder:
        """One anti-diagonal per step (NAR): ``H + W - 1`` steps."""
        return cls("next_neighbor", tuple(grid), anti_diagonal_rank(grid))  # type: ignore[arg-type]

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_steps(self) -> int:
        return int(self.step_of.max()) + 1

    def positions(self, step: int) -> Tensor:
        """Raster positions fixed at ``step`` (ascending), ``[k]``."""
        if not 0 <= step < self.num_steps:
            raise ValueError(f"step {step} is outside 0..{self.num_steps - 1}")
        return torch.nonzero(self.step_of == step)[:, 0]

    def steps(self) -> list[Tensor]:
        """The positions of every step, in order."""
        return [self.positions(s) for s in range(self.num_steps)]


def anti_diagonal_rank(grid: tuple[int, int]) -> Tensor:
    """``[H * W]``: ``i + j`` for the position at row ``i``, column ``j`` (raster order)."""
    H, W = grid
    return (torch.arange(H)[:, None] + torch.arange(W)[None, :]).flatten()


@runtime_checkable
class TokenModel(Protocol):
    """What decoders need from an image-token transformer (``vision.models.gpt.GPT`` is one).

    Attributes:
        vocab_size: image-token vocabulary size ``V``.
        num_tokens: image tokens per image ``N = H * W``.
        num_cond_tokens: condition positions ``T`` before the image.
        grid: ``(H, W)``.
        generation_order: the order the model was trained to generate in.
        condition_kind: ``"class"`` (integer ids ``[B]``) or ``"text"`` (embeddings ``[B, T, C]``).
        num_classes: classes of a class-conditional model (``0`` for text).
    """

    vocab_size: int
    num_tokens: int
    num_cond_tokens: int

    @property
    def grid(self) -> tuple[int, int]: ...
    @property
    def generation_order(self) -> GenerationOrder: ...
    @property
    def condition_kind(self) -> str: ...
    @property
    def num_classes(self) -> int: ...

    def setup_caches(self, max_batch_size: int, max_seq_length: int | None = None, dtype=None) -> None: ...
    def check_condition(self, cond: Tensor) -> None: ...
    def null_condition(self, cond: Tensor) -> Tensor: ...
    def prefill(self, cond: Tensor, cond_mask: Tensor | None = None) -> Tensor:
        """Write the condition; return logits ``[B, V]`` for the first generated position."""

    def decode_step(self, tokens: Tensor, token_pos: Tensor, query_pos: Tensor | None = None) -> Tensor:
        """Write ``tokens [B, S]`` at image positions ``token_pos`` (``[S]`` or ``[B, S]``).

        Returns logits ``[B, Q, V]`` for the image positions ``query_pos`` (``[Q]`` or ``[B, Q]``),
        each computed from what this forward wrote and the cache; ``None`` means the model's
        default queries (a raster model: ``token_pos + 1``, one per input).
        """


@runtime_checkable
class SupportsRefill(Protocol):
    """A model that can start a new image in some cache rows inside a decode forward."""

    def refill_step(
        self, tokens: Tensor, token_pos: Tensor, rows: Tensor, cond: Tensor, cond_mask: Tensor | None = None
    ) -> Tensor: ...


@runtime_checkable
class SupportsTokenEmbeddings(Protocol):
    """A model that exposes its input token embeddings ``[V, D]`` (for relaxed acceptance)."""

    def token_embeddings(self) -> Tensor: ...
