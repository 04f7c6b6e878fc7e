"""Sampling and acceptance maths shared by every image-token decoder.

Everything a decoder needs to turn logits into the **final sampling distribution** lives here:
classifier-free guidance (LlamaGen's ``u + (c - u) * s`` with an optional interval), temperature,
top-k and top-p. Speculative decoders compute acceptance on these final distributions for both
the draft and the target (Leviathan et al., arXiv:2211.17192): accept a draft ``x ~ q`` with
probability ``min(1, p(x) / q(x))``, otherwise resample from ``norm(max(0, p - q))``.

Randomness is per row: each batch row owns a ``torch.Generator``, so a row's output depends only
on its own stream and the model, never on the other rows of the batch (which is what makes ragged
batches testable against single-row runs).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "SamplingConfig",
    "logits_to_probs",
    "cfg_mix",
    "row_generators",
    "sample_rows",
    "rand_rows",
    "residual_distribution",
]


@dataclass
class SamplingConfig:
    """How logits become the distribution tokens are drawn from.

    Attributes:
        temperature: softmax temperature; ``0`` means greedy (argmax, a one-hot distribution).
        top_k: keep the ``k`` most likely tokens (``0``: all).
        top_p: nucleus sampling mass (``1.0``: off).
        cfg_scale: classifier-free guidance scale (``1.0``: off, no batch doubling).
        cfg_interval: LlamaGen's ``cfg_interval`` (``-1``: guide every token): guidance is used for
            the prefill and the first ``cfg_interval + 1`` decode steps, i.e. image tokens
            ``0..cfg_interval + 1``.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    cfg_scale: float = 1.0
    cfg_interval: int = -1

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p", "cfg_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        for name in ("top_k", "cfg_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.cfg_scale < 0:
            raise ValueError(f"cfg_scale must be >= 0, got {self.cfg_scale}")

    @property
    def use_cfg(self) -> bool:
        return self.cfg_scale != 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def logits_to_probs(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Final sampling distribution ``[..., V]`` (float32) from logits ``[..., V]``."""
    logits = logits.float()
    if temperature == 0 or top_k == 1:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the mass before it already reaches top_p (the first token always stays)
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(-1)


def cfg_mix(logits: Tensor, scale: float, apply: Tensor | None = None) -> Tensor:
    """Mix a CFG-doubled batch ``[2B, ...]`` (``[cond; uncond]``) into ``[B, ...]``.

    ``apply`` (bool, broadcastable to the output without the vocab dim) selects where guidance is
    used; elsewhere the conditional logits are returned unchanged (LlamaGen's ``cfg_interval``).
    """
    cond, uncond = logits.chunk(2, dim=0)
    mixed = uncond + (cond - uncond) * scale
    if apply is None:
        return mixed
    return torch.where(apply[..., None], mixed, cond)


def row_generators(
    generator: torch.Generator | Sequence[torch.Generator] | None, batch: int, device: torch.device | str = "cpu"
) -> list[torch.Generator]:
    """One generator per batch row.

    A list is used as is (its length must equal ``batch``). A single generator seeds ``batch``
    child generators from its stream, so ``seed`` -> the same per-row streams every time.
    ``None`` seeds from torch's global RNG.
    """
    if isinstance(generator, Sequence):
        gens = list(generator)
        if len(gens) != batch:
            raise ValueError(f"got {len(gens)} generators for a batch of {batch} rows")
        return gens
    seeds = torch.randint(0, 2**62, (batch,), generator=generator).tolist()
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def sample_rows(probs: Tensor, gens: Sequence[torch.Generator]) -> Tensor:
    """Draw one token per distribution, row ``b`` from ``gens[b]``: ``[B, V] -> [B]``, ``[B, S, V] -> [B, S]``."""
    flat = probs.dim() == 2
    p = probs[:, None] if flat else probs
    # each row is drawn on its generator's device (a CPU generator can serve a CUDA model)
    out = torch.stack([torch.multinomial(p[b].to(g.device), 1, generator=g)[:, 0] for b, g in enumerate(gens)])
    out = out.to(probs.device)
    return out[:, 0] if flat else out


def rand_rows(gens: Sequence[torch.Generator], n: int, device: torch.device | str = "cpu") -> Tensor:
    """Uniform ``[B, n]`` draws, row ``b`` from ``gens[b]``."""
    return torch.stack([torch.rand(n, generator=g, device=device) for g in gens])


def residual_distribution(p: Tensor, q: Tensor) -> Tensor:
    """``norm(max(0, p - q))`` over the last dim; falls back to ``p`` where ``p == q`` exactly."""
    r = (p - q).clamp_min(0)
    mass = r.sum(-1, keepdim=True)
    return torch.where(mass > 0, r / mass.clamp_min(1e-30), p)
