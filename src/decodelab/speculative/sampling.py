"""Sampling and acceptance maths shared by every image-token decoder.

Everything a decoder needs to turn logits into the **final sampling distribution** lives here:
classifier-free guidance (LlamaGen's ``u + (c - u) * s`` with an optional interval), temperature,
top-k and top-p. Speculative decoders compute acceptance on these final distributions for both
the draft and the target (Leviathan et al., arXiv:2211.17192): accept a draft ``x ~ q`` with
probability ``min(1, p(x) / q(x))``, otherwise resample from ``norm(max(0, p - q))``.

The lossy tests live here too: MuLo-SD's threshold test (accept a draft when the target mass pooled
over its ``k`` nearest codebook entries reaches ``tau``: :func:`knn_table`, :func:`pooled_mass`)
and the geometry of its local resampling (:func:`resample_region`, :func:`rejection_islands`).

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
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "SamplingConfig",
    "logits_to_probs",
    "cfg_mix",
    "row_generators",
    "sample_rows",
    "rand_rows",
    "residual_distribution",
    "knn_table",
    "pooled_mass",
    "resample_region",
    "rejection_islands",
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


# --------------------------------------------------------------------------- relaxed acceptance, local resampling
def resample_region(rejected: Tensor, l: int, end: int | None = None) -> Tensor:
    """Positions to resample: the union of Chebyshev radius-``l`` windows around the rejected positions.

    Args:
        rejected: bool ``[H, W]``.
        l: neighbourhood radius (``0``: the rejected positions only).
        end: if given, only raster positions ``< end`` (the drafted block) are kept.

    Returns:
        bool ``[H, W]``, restricted to raster positions at or after the first rejection.
    """
    if l < 0:
        raise ValueError(f"l must be >= 0, got {l}")
    H, W = rejected.shape
    flat = rejected.flatten()
    if not bool(flat.any()):
        return torch.zeros_like(rejected, dtype=torch.bool)
    t0 = int(flat.nonzero()[0])
    grown = F.max_pool2d(rejected[None, None].float(), 2 * l + 1, stride=1, padding=l)[0, 0] > 0
    pos = torch.arange(H * W).view(H, W)
    keep = pos >= t0
    if end is not None:
        keep &= pos < end
    return grown & keep


def rejection_islands(region: Tensor) -> list[Tensor]:
    """8-connected components of ``region [H, W]``: raster positions, each sorted, islands by first position."""
    H, W = region.shape
    inside = region.tolist()
    seen = [[False] * W for _ in range(H)]
    islands = []
    for p in region.flatten().nonzero()[:, 0].tolist():
        i0, j0 = divmod(p, W)
        if seen[i0][j0]:
            continue
        seen[i0][j0] = True
        stack, members = [(i0, j0)], []
        while stack:
            i, j = stack.pop()
            members.append(i * W + j)
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    a, b = i + di, j + dj
                    if 0 <= a < H and 0 <= b < W and inside[a][b] and not seen[a][b]:
                        seen[a][b] = True
                        stack.append((a, b))
        islands.append(torch.tensor(sorted(members)))
    return islands


def knn_table(vectors: Tensor, k: int, chunk: int = 1024) -> Tensor:
    """``[V, k]``: each token's ``k`` nearest tokens by Euclidean distance, itself first."""
    V = vectors.shape[0]
    if not 1 <= k <= V:
        raise ValueError(f"k must be in 1..{V} (the vocabulary), got {k}")
    vec = vectors.detach().float().cpu()
    out = []
    for s in range(0, V, chunk):
        d = torch.cdist(vec[s : s + chunk], vec)  # [c, V]
        d[torch.arange(d.shape[0]), torch.arange(s, s + d.shape[0])] = -1.0  # itself first
        out.append(d.topk(k, dim=-1, largest=False).indices)
    return torch.cat(out)


def pooled_mass(p: Tensor, drafts: Tensor, table: Tensor | None) -> Tensor:
    """Target mass on each draft's neighbourhood: ``p [..., V]``, ``drafts [...]`` -> ``[...]``."""
    if table is None:
        return p.gather(-1, drafts[..., None])[..., 0]
    return p.gather(-1, table[drafts]).sum(-1)
