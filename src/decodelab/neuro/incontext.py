"""In-context cross-subject fMRI decoding: infer each voxel's encoder from context, then invert.

BrainCoDec ("Meta-learning In-Context Enables Training-Free Cross Subject Brain Decoding", Nan, Yu,
..., Luo; CVPR 2026, arXiv 2604.08537, code ezacngm/brainCodec) decodes a new subject without any
fine-tuning, anatomical alignment or shared stimuli, in two stages:

1. **Per-voxel encoder inference in context** (BraInCoRL, NeurIPS 2025, arXiv 2505.15813):
   :class:`InContextVoxelEncoder` reads the ``K`` (image embedding ``e_k``, response ``beta_k``)
   pairs of *one* voxel and outputs that voxel's linear encoder ``(w, b)`` so that
   ``beta ~ w . e + b``::

       pairs [B, K, E + 1] --Linear--> [B, K, H] ++ registers [R, H]
         --pre-LN attention/SwiGLU blocks (no positions)--> registers [B, R, H]
         --concat, LayerNorm, Linear--> (w [B, E], b [B])          B = voxels

   The pairs carry no positional embedding and attention pools over them, so the output does not
   depend on their order (tested). Meta-training loss: the squared error of the inferred encoder's
   predictions on held-out query images of the same voxel (upstream's "pmse"), or of ``w``
   itself when the true encoder is known (synthetic voxels).

2. **Aggregated functional inversion**: :class:`FunctionalInversionDecoder` reads one token per
   voxel, ``[w_v, b_v, beta_v]`` (``E + 2``), for one brain response and predicts the image
   embedding::

       tokens [B, V, E + 2] --ResidualBlock(LN, LeakyReLU 0.1, Linear)--> [B, V, H] ++ registers [32, H]
         --pre-LN attention (queries x log n_tokens) + SwiGLU blocks--> registers[:4] [B, 4, H]
         --concat, MLP--> [B, H] --ResidualBlock, Linear--> embedding [B, E]

   Loss (:func:`inversion_loss`): ``1 - cos(pred, target)`` (``torch.nn.CosineEmbeddingLoss`` with
   label +1) plus ``0.1 x`` the symmetric InfoNCE of the batch at ``tau = 0.2``.

**Synthetic pretraining** as the authors do it (:class:`SyntheticVoxelPrior`,
:func:`sample_synthetic_batch`): image embeddings ``e`` are L2-normalised real image features; each
voxel draws ``w ~ N(mean_w, cov_w)`` and ``b ~ N(mean_b, std_b^2)``, the Gaussians fitted to
stage-1-inferred encoders of real subjects (:meth:`SyntheticVoxelPrior.fit`); the response is
``beta = w . e + 0.1 eps``, ``eps ~ N(0, 1)`` — ``b`` is fed as a token but *not* added to ``beta``
(upstream's choice, kept; ``add_bias=True`` adds it). Each step draws ``V in [100, 200)`` voxels.

Sizes: the papers' stage 1 has 20 layers, hidden 2048, 10 heads, 4 registers (train ``K in
[30, 500]``, AdamW lr 1e-4, weight decay 0.1, dropout 0.5); stage 2 has 8 blocks and 32 registers
(4 merged) at an internal width of 768 for CLIP ``E = 512`` (AdamW lr 1e-5, weight decay 1e-2,
cosine schedule). :data:`INCONTEXT_PRESETS` holds these (``paper``) and CPU-sized ones
(``small``, ``test``). :func:`train_voxel_encoder` and :func:`train_inversion_decoder` are plain
torch loops (AdamW, cosine decay) usable on a CPU; :class:`InContextDecoder` chains both stages to
decode a new subject from its context pairs (:meth:`~InContextDecoder.encode_context` and
:meth:`~InContextDecoder.decode` run them one at a time).

Diagnostics, to tell which stage limits a decoder: :func:`ridge_voxel_encoders` (closed-form
per-voxel ridge on the same context, a replacement for stage 1), :func:`encoder_correlations`
(per-voxel test correlation of any encoders' predictions) and :func:`invert_encoders` (closed-form
Gaussian inversion of linear encoders, a learning-free replacement for stage 2).

Every line here is this project's own; the upstream code was read for the facts above only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "INCONTEXT_PRESETS",
    "FunctionalInversionDecoder",
    "InContextDecoder",
    "InContextVoxelEncoder",
    "RidgeVoxelEncoders",
    "SyntheticBatch",
    "SubjectData",
    "SyntheticVoxelPrior",
    "VOXEL_RIDGE_ALPHAS",
    "VoxelEncoderOutput",
    "create_incontext",
    "encoder_correlations",
    "info_nce",
    "inversion_loss",
    "invert_encoders",
    "ridge_voxel_encoders",
    "sample_subject_batch",
    "sample_synthetic_batch",
    "train_inversion_decoder",
    "train_voxel_encoder",
]

#: Named sizes per stage: ``paper`` (the published sizes), ``small`` (CPU experiments), ``test``.
INCONTEXT_PRESETS: dict[str, dict[str, dict]] = {
    "paper": {
        "encoder": dict(hidden=2048, depth=20, heads=10, num_registers=4, dropout=0.5),
        "decoder": dict(hidden=768, depth=8, heads=12, num_registers=32, num_merged=4),
    },
    "small": {
        "encoder": dict(hidden=128, depth=4, heads=4, num_registers=4, dropout=0.0),
        "decoder": dict(hidden=128, depth=4, heads=4, num_registers=32, num_merged=4),
    },
    "test": {
        "encoder": dict(hidden=32, depth=2, heads=2, num_registers=4, dropout=0.0),
        "decoder": dict(hidden=32, depth=2, heads=2, num_registers=8, num_merged=2),
    },
}


# ------------------------------------------------------------------------------------ blocks


class _SwiGLU(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = max(8, int(dim * mlp_ratio * 2 / 3))
        self.gate = nn.Linear(dim, hidden)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.down(F.silu(self.gate(x)) * self.up(x)))


class _Block(nn.Module):
    """Pre-LN self-attention + SwiGLU; optionally queries scaled by ``log(n valid tokens)``.

    The log-length scale keeps the attention's sharpness from fading as the number of voxel tokens
    grows (a new subject may have any voxel count).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float, length_scaled: bool) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} must be divisible by the number of heads {heads}")
        self.heads = heads
        self.length_scaled = length_scaled
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _SwiGLU(dim, mlp_ratio, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        # x: [B, N, D]; valid: [B, N] bool (True = a real token)
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.length_scaled:
            q = q * torch.log(valid.sum(1).clamp(min=2).to(q.dtype))[:, None, None, None]
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :])  # [B, h, N, d/h]
        x = x + self.drop(self.proj(attn.transpose(1, 2).reshape(b, n, d)))
        return x + self.mlp(self.norm2(x))


class _ResidualBlock(nn.Module):
    """``x -> skip(x) + Linear(LeakyReLU_0.1(LayerNorm(x)))`` (skip = identity or a linear map)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim_in)
        self.fc = nn.Linear(dim_in, dim_out)
        self.skip = nn.Identity() if dim_in == dim_out else nn.Linear(dim_in, dim_out, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.fc(F.leaky_relu(self.norm(x), 0.1))


def _check_mask(mask: Tensor | None, shape: tuple[int, int], what: str) -> Tensor | None:
    if mask is None:
        return None
    if tuple(mask.shape) != shape or mask.dtype != torch.bool:
        raise ValueError(f"{what} must be a bool tensor of shape {shape}, got {mask.dtype} {tuple(mask.shape)}")
    if not bool(mask.any(1).all()):
        raise ValueError(f"{what}: every row needs at least one valid entry")
    return mask


class _RegisterTransformer(nn.Module):
    """Tokens ``[B, N, H]`` ++ ``R`` learned registers -> the registers' outputs ``[B, R, H]``."""

    def __init__(
        self,
        hidden: int,
        depth: int,
        heads: int,
        num_registers: int,
        mlp_ratio: float,
        dropout: float,
        length_scaled: bool,
    ) -> None:
        super().__init__()
        if num_registers < 1 or depth < 1:
            raise ValueError(f"need at least one register and one block, got {num_registers} and {depth}")
        self.registers = nn.Parameter(torch.randn(num_registers, hidden) * 0.02)
        self.blocks = nn.ModuleList(_Block(hidden, heads, mlp_ratio, dropout, length_scaled) for _ in range(depth))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, tokens: Tensor, valid: Tensor | None) -> Tensor:
        b, n, _ = tokens.shape
        r = self.registers.shape[0]
        x = torch.cat([self.registers.expand(b, -1, -1), tokens], dim=1)  # [B, R + N, H]
        tok_valid = torch.ones(b, n, dtype=torch.bool, device=tokens.device) if valid is None else valid
        full = torch.cat([torch.ones(b, r, dtype=torch.bool, device=tokens.device), tok_valid], dim=1)
        for block in self.blocks:
            x = block(x, full)
        return self.norm(x[:, :r])  # [B, R, H]


# ------------------------------------------------------------------------------------ stage 1


@dataclass
class VoxelEncoderOutput:
    """A linear encoder per voxel: ``beta ~ weight . e + bias``; ``weight [B, E]``, ``bias [B]``."""

    weight: Tensor
    bias: Tensor

    def predict(self, embeds: Tensor) -> Tensor:
        """Responses of the voxels to images ``embeds [M, E]`` (or ``[B, M, E]``): ``[B, M]``."""
        if embeds.dim() == 2:
            return self.weight @ embeds.T + self.bias[:, None]
        return torch.einsum("be,bme->bm", self.weight, embeds) + self.bias[:, None]


class InContextVoxelEncoder(nn.Module):
    """Stage 1: ``K`` (image embedding, response) pairs of a voxel -> that voxel's ``(w, b)``.

    Args:
        embed_dim: image-embedding size ``E``.
        hidden: transformer width ``H``.
        depth: transformer blocks.
        heads: attention heads.
        num_registers: learned register tokens ``R``; all ``R`` outputs are concatenated and mapped
            to ``(w, b)``.
        mlp_ratio: SwiGLU expansion.
        dropout: dropout inside the blocks (the paper trains with 0.5).
    """

    def __init__(
        self,
        embed_dim: int,
        *,
        hidden: int = 128,
        depth: int = 4,
        heads: int = 4,
        num_registers: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be positive, got {embed_dim}")
        self.embed_dim = embed_dim
        self.num_registers = num_registers
        self.embed = nn.Linear(embed_dim + 1, hidden)
        self.transformer = _RegisterTransformer(hidden, depth, heads, num_registers, mlp_ratio, dropout, False)
        self.head = nn.Sequential(
            nn.LayerNorm(num_registers * hidden), nn.Linear(num_registers * hidden, embed_dim + 1)
        )

    def forward(self, embeds: Tensor, betas: Tensor, mask: Tensor | None = None) -> VoxelEncoderOutput:
        """Infer the encoders of ``B`` voxels.

        Args:
            embeds: ``[K, E]`` context image embeddings shared by the voxels, or ``[B, K, E]``.
            betas: ``[B, K]`` each voxel's responses to those images.
            mask: optional ``[B, K]`` bool, True for real pairs (to batch voxels with different ``K``).
        """
        if betas.dim() != 2:
            raise ValueError(f"betas must be [voxels, K], got shape {tuple(betas.shape)}")
        b, k = betas.shape
        if embeds.dim() == 2:
            embeds = embeds.unsqueeze(0).expand(b, -1, -1)
        if embeds.shape != (b, k, self.embed_dim):
            raise ValueError(
                f"embeds must be [K, {self.embed_dim}] or [B, K, {self.embed_dim}] with B, K = {b}, {k}; "
                f"got {tuple(embeds.shape)}"
            )
        mask = _check_mask(mask, (b, k), "mask")
        pairs = torch.cat([embeds, betas.unsqueeze(-1).to(embeds.dtype)], dim=-1)  # [B, K, E + 1]
        regs = self.transformer(self.embed(pairs), mask)  # [B, R, H]
        out = self.head(regs.flatten(1))  # [B, E + 1]
        return VoxelEncoderOutput(weight=out[:, :-1], bias=out[:, -1])

    @torch.no_grad()
    def infer(self, embeds: Tensor, betas: Tensor, chunk_size: int = 1024) -> VoxelEncoderOutput:
        """Encoders of many voxels sharing context images: ``embeds [K, E]``, ``betas [K, V]`` (image-major).

        Voxels are processed ``chunk_size`` at a time, in eval mode.
        """
        if embeds.dim() != 2 or betas.dim() != 2 or betas.shape[0] != embeds.shape[0]:
            raise ValueError(
                f"need embeds [K, E] and betas [K, V] with the same K, got {tuple(embeds.shape)} "
                f"and {tuple(betas.shape)}"
            )
        was = self.training
        self.eval()
        outs = [self(embeds, betas[:, a : a + chunk_size].T) for a in range(0, betas.shape[1], chunk_size)]
        self.train(was)
        return VoxelEncoderOutput(torch.cat([o.weight for o in outs]), torch.cat([o.bias for o in outs]))


# ------------------------------------------------------------------------------------ stage 2


class FunctionalInversionDecoder(nn.Module):
    """Stage 2: tokens ``[w_v, b_v, beta_v]`` of ``V`` voxels -> the image embedding ``[E]``.

    Args:
        embed_dim: image-embedding size ``E``.
        hidden: internal width ``H``.
        depth: attention blocks (queries scaled by ``log`` of the token count).
        heads: attention heads.
        num_registers: learned register tokens (the paper: 32).
        num_merged: how many of the first registers are concatenated and merged by an MLP (4).
        mlp_ratio: SwiGLU expansion.
        dropout: dropout inside the blocks.
    """

    def __init__(
        self,
        embed_dim: int,
        *,
        hidden: int = 128,
        depth: int = 4,
        heads: int = 4,
        num_registers: int = 32,
        num_merged: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not 1 <= num_merged <= num_registers:
            raise ValueError(f"num_merged must be in 1..num_registers ({num_registers}), got {num_merged}")
        self.embed_dim = embed_dim
        self.num_registers = num_registers
        self.num_merged = num_merged
        self.embed = _ResidualBlock(embed_dim + 2, hidden)
        self.transformer = _RegisterTransformer(hidden, depth, heads, num_registers, mlp_ratio, dropout, True)
        self.merge = nn.Sequential(nn.Linear(num_merged * hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.out = nn.Sequential(_ResidualBlock(hidden, hidden), nn.Linear(hidden, embed_dim))

    def forward(self, weight: Tensor, bias: Tensor, beta: Tensor, mask: Tensor | None = None) -> Tensor:
        """Predict ``[B, E]`` image embeddings from ``B`` brain responses.

        Args:
            weight: ``[V, E]`` voxel encoders (shared by the ``B`` responses) or ``[B, V, E]``.
            bias: ``[V]`` or ``[B, V]``.
            beta: ``[B, V]`` responses.
            mask: optional ``[B, V]`` bool, True for real voxels.
        """
        if beta.dim() != 2:
            raise ValueError(f"beta must be [B, V], got shape {tuple(beta.shape)}")
        b, v = beta.shape
        if weight.dim() == 2:
            weight = weight.unsqueeze(0).expand(b, -1, -1)
        if bias.dim() == 1:
            bias = bias.unsqueeze(0).expand(b, -1)
        if weight.shape != (b, v, self.embed_dim) or bias.shape != (b, v):
            raise ValueError(
                f"weight must be [V, {self.embed_dim}] or [B, V, {self.embed_dim}] and bias [V] or "
                f"[B, V] with B, V = {b}, {v}; got {tuple(weight.shape)} and {tuple(bias.shape)}"
            )
        mask = _check_mask(mask, (b, v), "mask")
        tokens = torch.cat([weight, bias.unsqueeze(-1), beta.unsqueeze(-1).to(weight.dtype)], dim=-1)  # [B, V, E+2]
        regs = self.transformer(self.embed(tokens), mask)  # [B, R, H]
        return self.out(self.merge(regs[:, : self.num_merged].flatten(1)))  # [B, E]


def info_nce(pred: Tensor, target: Tensor, temperature: float = 0.2) -> Tensor:
    """Symmetric InfoNCE: the mean of the row-wise and column-wise cross-entropies of ``cos / tau``.

    Args:
        pred, target: ``[B, E]``; row ``i`` of ``pred`` matches row ``i`` of ``target``.
        temperature: ``tau``.
    """
    if pred.shape != target.shape or pred.dim() != 2:
        raise ValueError(f"pred and target must both be [B, E], got {tuple(pred.shape)} and {tuple(target.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = F.normalize(pred, dim=-1) @ F.normalize(target, dim=-1).T / temperature  # [B, B]
    labels = torch.arange(len(pred), device=pred.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def inversion_loss(
    pred: Tensor, target: Tensor, *, contrastive_weight: float = 0.1, temperature: float = 0.2
) -> tuple[Tensor, dict[str, float]]:
    """Stage-2 loss: ``mean(1 - cos(pred, target)) + contrastive_weight * info_nce(pred, target)``.

    Returns:
        The loss and its two terms as floats (``cosine``, ``infonce``).
    """
    if pred.shape != target.shape or pred.dim() != 2:
        raise ValueError(f"pred and target must both be [B, E], got {tuple(pred.shape)} and {tuple(target.shape)}")
    cos = (1.0 - F.cosine_similarity(pred, target, dim=-1)).mean()
    nce = info_nce(pred, target, temperature) if len(pred) > 1 else pred.new_zeros(())
    return cos + contrastive_weight * nce, {"cosine": float(cos.detach()), "infonce": float(nce.detach())}


# ------------------------------------------------------------------------- synthetic voxels


@dataclass
class SyntheticVoxelPrior:
    """The Gaussian prior synthetic voxels are drawn from: ``w ~ N(mean_w, cov_w)``, ``b ~ N(mean_b, std_b^2)``.

    Attributes:
        mean_w: ``[E]``.
        cov_w: ``[E, E]`` symmetric positive semi-definite.
        mean_b, std_b: the bias Gaussian.
        noise_std: response noise (upstream: 0.1).
    """

    mean_w: Tensor
    cov_w: Tensor
    mean_b: float = 0.0
    std_b: float = 0.0
    noise_std: float = 0.1

    def __post_init__(self) -> None:
        self.mean_w = torch.as_tensor(self.mean_w, dtype=torch.float64)
        self.cov_w = torch.as_tensor(self.cov_w, dtype=torch.float64)
        e = self.mean_w.shape[0] if self.mean_w.dim() == 1 else -1
        if self.mean_w.dim() != 1 or self.cov_w.shape != (e, e):
            raise ValueError(
                f"mean_w must be [E] and cov_w [E, E], got {tuple(self.mean_w.shape)} and {tuple(self.cov_w.shape)}"
            )
        if not torch.allclose(self.cov_w, self.cov_w.T, atol=1e-8 * (1 + float(self.cov_w.abs().max()))):
            raise ValueError("cov_w must be symmetric")
        evals, evecs = torch.linalg.eigh(self.cov_w)
        if float(evals.min()) < -1e-8 * max(1.0, float(evals.max())):
            raise ValueError(f"cov_w must be positive semi-definite (smallest eigenvalue {float(evals.min()):.3g})")
        if self.std_b < 0 or self.noise_std < 0:
            raise ValueError("std_b and noise_std must be >= 0")
        self._factor = evecs * evals.clamp(min=0).sqrt()  # cov = F F^T (works for singular cov too)

    @property
    def embed_dim(self) -> int:
        return int(self.mean_w.shape[0])

    @classmethod
    def fit(
        cls, weight: Tensor, bias: Tensor | None = None, *, noise_std: float = 0.1, shrinkage: float = 0.0
    ) -> SyntheticVoxelPrior:
        """Fit the prior to voxel encoders (upstream: stage-1-inferred encoders of real subjects).

        Args:
            weight: ``[V, E]`` encoders; bias: ``[V]`` intercepts (``None``: ``b = 0``).
            noise_std: response noise of the sampled voxels.
            shrinkage: ``cov <- (1 - s) cov + s * trace(cov) / E * I`` (for ``V`` not much larger than ``E``).
        """
        w = torch.as_tensor(weight, dtype=torch.float64)
        if w.dim() != 2 or w.shape[0] < 2:
            raise ValueError(f"weight must be [V >= 2, E], got shape {tuple(w.shape)}")
        if not 0.0 <= shrinkage <= 1.0:
            raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
        cov = torch.cov(w.T).reshape(w.shape[1], w.shape[1])
        cov = (1 - shrinkage) * cov + shrinkage * torch.trace(cov) / w.shape[1] * torch.eye(w.shape[1], dtype=cov.dtype)
        b = torch.zeros(2, dtype=torch.float64) if bias is None else torch.as_tensor(bias, dtype=torch.float64)
        return cls(w.mean(0), cov, float(b.mean()), float(b.std()) if len(b) > 1 else 0.0, noise_std)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` voxels: ``(weight [n, E], bias [n])`` in float32."""
        z = torch.randn(n, self.embed_dim, generator=generator, dtype=torch.float64)
        w = self.mean_w + z @ self._factor.T
        b = self.mean_b + self.std_b * torch.randn(n, generator=generator, dtype=torch.float64)
        return w.float(), b.float()


@dataclass
class SyntheticBatch:
    """One training draw: ``embeds [N, E]`` (unit norm), ``weight [V, E]``, ``bias [V]``, ``beta [N, V]``.

    ``weight`` and ``bias`` are ``None`` for draws from real / simulated subjects (encoders unknown).
    """

    embeds: Tensor
    weight: Tensor | None
    bias: Tensor | None
    beta: Tensor


def sample_synthetic_batch(
    embeddings: Tensor,
    prior: SyntheticVoxelPrior,
    n_images: int,
    n_voxels: int,
    *,
    generator: torch.Generator | None = None,
    add_bias: bool = False,
) -> SyntheticBatch:
    """Draw images from a pool of real embeddings and synthetic voxels, as upstream's pretraining.

    ``e`` = L2-normalised rows of ``embeddings`` (drawn without replacement), ``(w, b)`` from
    ``prior``, ``beta = e w^T + noise_std * eps`` (``+ b`` only with ``add_bias``).

    Args:
        embeddings: ``[P, E]`` pool of image embeddings.
        prior: the voxel prior (its ``E`` must match).
        n_images: images ``N`` (``<= P``); n_voxels: voxels ``V``.
        generator: the source of randomness.
        add_bias: add ``b`` to the responses (upstream does not).
    """
    if embeddings.dim() != 2 or embeddings.shape[1] != prior.embed_dim:
        raise ValueError(f"embeddings must be [P, {prior.embed_dim}] (the prior's size), got {tuple(embeddings.shape)}")
    if not 1 <= n_images <= embeddings.shape[0]:
        raise ValueError(f"n_images must be in 1..{embeddings.shape[0]} (the pool size), got {n_images}")
    if n_voxels < 1:
        raise ValueError(f"n_voxels must be positive, got {n_voxels}")
    idx = torch.randperm(embeddings.shape[0], generator=generator)[:n_images]
    e = F.normalize(embeddings[idx].float(), dim=-1)  # [N, E]
    w, b = prior.sample(n_voxels, generator)
    beta = e @ w.T + prior.noise_std * torch.randn(n_images, n_voxels, generator=generator)  # [N, V]
    if add_bias:
        beta = beta + b
    return SyntheticBatch(e, w, b, beta)


@dataclass
class SubjectData:
    """One (real or simulated) subject's training data: ``embeds [N, E]`` of its images, ``betas [N, V]``."""

    embeds: Tensor
    betas: Tensor

    def __post_init__(self) -> None:
        self.embeds = torch.as_tensor(self.embeds, dtype=torch.float32)
        self.betas = torch.as_tensor(self.betas, dtype=torch.float32)
        if self.embeds.dim() != 2 or self.betas.dim() != 2 or len(self.embeds) != len(self.betas):
            raise ValueError(
                f"need embeds [N, E] and betas [N, V] with the same N, got {tuple(self.embeds.shape)} "
                f"and {tuple(self.betas.shape)}"
            )


def sample_subject_batch(
    subjects: Sequence[SubjectData], n_images: int, n_voxels: int, *, generator: torch.Generator | None = None
) -> SyntheticBatch:
    """Meta-training draw: one subject, ``n_images`` of its images, ``n_voxels`` of its voxels (all when fewer).

    The encoders are unknown, so ``weight`` and ``bias`` of the batch are ``None``.
    """
    if not subjects:
        raise ValueError("need at least one subject")
    sub = subjects[int(torch.randint(len(subjects), (1,), generator=generator))]
    if n_images > len(sub.embeds):
        raise ValueError(f"n_images {n_images} exceeds the subject's {len(sub.embeds)} images")
    rows = torch.randperm(len(sub.embeds), generator=generator)[:n_images]
    cols = torch.randperm(sub.betas.shape[1], generator=generator)[:n_voxels]
    return SyntheticBatch(F.normalize(sub.embeds[rows], dim=-1), None, None, sub.betas[rows][:, cols])


def _check_source(embeddings: Tensor | None, prior: SyntheticVoxelPrior | None, subjects: Any) -> None:
    if subjects is None and (embeddings is None or prior is None):
        raise ValueError("pass either an embedding pool and a prior (synthetic voxels) or subjects=")
    if subjects is not None and not subjects:
        raise ValueError("subjects= is empty: pass at least one SubjectData")


def _draw(
    embeddings: Tensor | None,
    prior: SyntheticVoxelPrior | None,
    subjects: Sequence[SubjectData] | None,
    n_images: int,
    n_voxels: int,
    g: torch.Generator,
    add_bias: bool,
) -> SyntheticBatch:
    if subjects is not None:
        return sample_subject_batch(subjects, n_images, n_voxels, generator=g)
    return sample_synthetic_batch(embeddings, prior, n_images, n_voxels, generator=g, add_bias=add_bias)


# -------------------------------------------------------------------------------- pipeline


class InContextDecoder(nn.Module):
    """Both stages: decode a new subject from its context pairs, with no fine-tuning.

    Args:
        encoder: stage 1; decoder: stage 2 (same ``E``).
    """

    def __init__(self, encoder: InContextVoxelEncoder, decoder: FunctionalInversionDecoder) -> None:
        super().__init__()
        if encoder.embed_dim != decoder.embed_dim:
            raise ValueError(f"stage 1 has E = {encoder.embed_dim}, stage 2 has E = {decoder.embed_dim}")
        self.encoder = encoder
        self.decoder = decoder

    @torch.no_grad()
    def forward(self, context_embeds: Tensor, context_betas: Tensor, betas: Tensor, chunk_size: int = 1024) -> Tensor:
        """``context_embeds [K, E]`` and ``context_betas [K, V]`` of the subject -> embeddings of ``betas [M, V]``.

        The context embeddings are L2-normalised, as in pretraining. Returns ``[M, E]``.
        """
        if betas.dim() != 2 or betas.shape[1] != context_betas.shape[1]:
            raise ValueError(
                f"betas must be [M, V] with the context's V = {context_betas.shape[1]}, got {tuple(betas.shape)}"
            )
        return self.decode(self.encode_context(context_embeds, context_betas, chunk_size), betas)

    @torch.no_grad()
    def encode_context(
        self, context_embeds: Tensor, context_betas: Tensor, chunk_size: int = 1024
    ) -> VoxelEncoderOutput:
        """Stage 1 alone: each voxel's ``(w, b)`` from ``context_embeds [K, E]`` and ``context_betas [K, V]``.

        The context embeddings are L2-normalised, as in :meth:`forward`.
        """
        return self.encoder.infer(F.normalize(context_embeds.float(), dim=-1), context_betas.float(), chunk_size)

    @torch.no_grad()
    def decode(self, encoders: VoxelEncoderOutput, betas: Tensor) -> Tensor:
        """Stage 2 alone: embeddings ``[M, E]`` of ``betas [M, V]`` given any per-voxel encoders (``V`` of them).

        ``encoders`` may come from stage 1 (:meth:`encode_context`) or elsewhere, e.g.
        :func:`ridge_voxel_encoders` on the same context (a diagnostic of stage 1).
        """
        if betas.dim() != 2 or betas.shape[1] != encoders.weight.shape[0]:
            raise ValueError(
                f"betas must be [M, V] with the encoders' V = {encoders.weight.shape[0]}, got {tuple(betas.shape)}"
            )
        weight, bias = encoders.weight.float(), encoders.bias.float()
        was = self.decoder.training
        self.decoder.eval()
        out = torch.cat([self.decoder(weight, bias, betas[a : a + 256].float()) for a in range(0, betas.shape[0], 256)])
        self.decoder.train(was)
        return out


# ----------------------------------------------------------------------------- diagnostics


#: Default penalties of :func:`ridge_voxel_encoders` (unit-norm embeddings, so ``X^T X ~ K / E``).
VOXEL_RIDGE_ALPHAS: tuple[float, ...] = tuple(float(a) for a in 10.0 ** np.arange(-3.0, 5.5, 0.5))


@dataclass
class RidgeVoxelEncoders(VoxelEncoderOutput):
    """:class:`VoxelEncoderOutput` fitted in closed form; ``alpha [V]`` chosen penalties, ``loo_mse [V]``
    the leave-one-out squared error at that penalty (an estimate of each voxel's noise variance)."""

    alpha: Tensor | None = None
    loo_mse: Tensor | None = None


def ridge_voxel_encoders(
    embeds: Tensor | np.ndarray,
    betas: Tensor | np.ndarray,
    alphas: Sequence[float] = VOXEL_RIDGE_ALPHAS,
    *,
    alpha_per_target: bool = True,
) -> RidgeVoxelEncoders:
    """Closed-form per-voxel encoders on the same context stage 1 reads: ridge of ``betas [K, V]`` on ``embeds [K, E]``.

    Each voxel ``v`` gets ``beta_v ~ w_v . e + b_v`` (unpenalised intercept) with its penalty chosen
    by exact leave-one-out error among ``alphas`` (one penalty for all voxels with
    ``alpha_per_target=False``); a single tiny alpha is ordinary least squares.
    (:class:`~decodelab.neuro.ridge.MultiTargetRidgeCV`.) The embeddings are used as given: pass
    the L2-normalised ones :meth:`InContextDecoder.encode_context` feeds stage 1 for a like-for-like
    replacement of stage 1.
    """
    from decodelab.neuro.ridge import MultiTargetRidgeCV

    x = np.asarray(torch.as_tensor(embeds).detach().cpu(), dtype=np.float64)
    y = np.asarray(torch.as_tensor(betas).detach().cpu(), dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) < 2:
        raise ValueError(f"need embeds [K >= 2, E] and betas [K, V] with the same K, got {x.shape} and {y.shape}")
    grid = np.asarray(alphas, dtype=np.float64).ravel()
    model = MultiTargetRidgeCV(alphas=grid, alpha_per_target=alpha_per_target).fit(x, y)
    probe = np.vstack([np.zeros((1, x.shape[1])), np.eye(x.shape[1])])  # a linear map is read off at 0 and e_i
    out = model.predict(probe)  # [1 + E, V]
    chosen = np.asarray(model.alpha_, dtype=np.float64).reshape(-1)
    chosen = np.broadcast_to(chosen, (y.shape[1],))
    idx = np.abs(grid[:, None] - chosen[None, :]).argmin(0)
    loo = np.asarray(model.cv_errors_)[idx, np.arange(y.shape[1])]
    return RidgeVoxelEncoders(
        weight=torch.as_tensor((out[1:] - out[:1]).T, dtype=torch.float32),
        bias=torch.as_tensor(out[0], dtype=torch.float32),
        alpha=torch.as_tensor(chosen.copy()),
        loo_mse=torch.as_tensor(loo),
    )


def encoder_correlations(encoders: VoxelEncoderOutput, embeds: Tensor, betas: Tensor) -> Tensor:
    """Per-voxel Pearson ``r`` over ``M`` images between the encoders' predictions and ``betas [M, V]``.

    ``embeds [M, E]`` as the encoders were fitted on (e.g. L2-normalised). A voxel whose prediction
    (or response) is constant gets ``r = 0``. Returns ``[V]`` float64.
    """
    pred = encoders.predict(torch.as_tensor(embeds).to(encoders.weight.dtype)).T.double()  # [M, V]
    y = torch.as_tensor(betas).double()
    if pred.shape != y.shape:
        raise ValueError(f"betas must be [M, V] = {tuple(pred.shape)}, got {tuple(y.shape)}")
    pc, yc = pred - pred.mean(0), y - y.mean(0)
    den = (pc.square().sum(0) * yc.square().sum(0)).sqrt()
    return torch.where(den > 0, (pc * yc).sum(0) / den.clamp(min=1e-300), torch.zeros_like(den))


def invert_encoders(
    encoders: VoxelEncoderOutput,
    betas: Tensor,
    noise_var: Tensor,
    prior_mean: Tensor,
    prior_cov: Tensor,
    *,
    jitter: float = 1e-6,
) -> Tensor:
    """Closed-form inversion of linear-Gaussian voxel encoders: the posterior mean of ``e`` per response.

    Model: ``beta_v = w_v . e + b_v + n_v``, ``n_v ~ N(0, noise_var_v)`` independent,
    ``e ~ N(prior_mean, prior_cov)``; for each row of ``betas [M, V]`` returns
    ``(W^T D^-1 W + C^-1)^-1 (W^T D^-1 (beta - b) + C^-1 mu)`` (``[M, E]``). A learning-free stage 2:
    what the encoders themselves say about the image, the yardstick of the trained inverter.
    ``jitter`` (relative to ``trace(C) / E``) keeps ``C`` invertible.
    """
    w = encoders.weight.double()  # [V, E]
    b = encoders.bias.double()
    y = torch.as_tensor(betas).double()
    d = torch.as_tensor(noise_var).double()
    mu = torch.as_tensor(prior_mean).double()
    c = torch.as_tensor(prior_cov).double()
    v, e = w.shape
    if y.dim() != 2 or y.shape[1] != v or d.shape != (v,) or mu.shape != (e,) or c.shape != (e, e):
        raise ValueError(
            f"need betas [M, {v}], noise_var [{v}], prior_mean [{e}], prior_cov [{e}, {e}]; got {tuple(y.shape)}, "
            f"{tuple(d.shape)}, {tuple(mu.shape)}, {tuple(c.shape)}"
        )
    if not bool((d > 0).all()):
        raise ValueError("noise_var must be positive")
    c = c + jitter * float(torch.trace(c)) / e * torch.eye(e, dtype=c.dtype)
    c_inv = torch.linalg.inv(c)
    wd = w.T / d  # [E, V]
    a = wd @ w + c_inv
    rhs = wd @ (y - b).T + (c_inv @ mu)[:, None]  # [E, M]
    return torch.linalg.solve(a, rhs).T


def create_incontext(preset: str, embed_dim: int, **overrides: dict) -> InContextDecoder:
    """Both stages at a size of :data:`INCONTEXT_PRESETS` (``overrides``: ``encoder=``/``decoder=`` dicts)."""
    if preset not in INCONTEXT_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(INCONTEXT_PRESETS)}")
    cfg = INCONTEXT_PRESETS[preset]
    enc = InContextVoxelEncoder(embed_dim, **{**cfg["encoder"], **overrides.get("encoder", {})})
    dec = FunctionalInversionDecoder(embed_dim, **{**cfg["decoder"], **overrides.get("decoder", {})})
    return InContextDecoder(enc, dec)


# -------------------------------------------------------------------------------- training


def _optimise(
    model: nn.Module,
    step_loss: Callable[[int], Tensor],
    steps: int,
    lr: float,
    weight_decay: float,
    warmup: int,
    grad_clip: float | None,
    log_every: int,
    log: Callable[[str], None] | None,
) -> list[float]:
    """AdamW with linear warmup then cosine decay to 0; returns the loss of every step."""
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses: list[float] = []
    model.train()
    for step in range(steps):
        scale = (
            (step + 1) / warmup
            if step < warmup
            else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        )
        for group in opt.param_groups:
            group["lr"] = lr * scale
        loss = step_loss(step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {float(loss)} at step {step}; lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        if log is not None and log_every and (step + 1) % log_every == 0:
            log(f"step {step + 1}/{steps} loss {sum(losses[-log_every:]) / log_every:.4f}")
    model.eval()
    return losses


def train_voxel_encoder(
    model: InContextVoxelEncoder,
    embeddings: Tensor | None,
    prior: SyntheticVoxelPrior | None,
    *,
    subjects: Sequence[SubjectData] | None = None,
    steps: int = 1000,
    context_range: tuple[int, int] = (30, 500),
    n_query: int = 64,
    n_voxels: int = 64,
    objective: str = "response",
    lr: float = 1e-4,
    weight_decay: float = 0.1,
    warmup: int = 0,
    grad_clip: float | None = 1.0,
    seed: int = 0,
    log_every: int = 0,
    log: Callable[[str], None] | None = print,
) -> list[float]:
    """Meta-train stage 1 on synthetic voxels (a plain torch loop, CPU-friendly at small sizes).

    Each step draws ``K`` uniformly in ``context_range`` (inclusive), ``K + n_query`` images and
    ``n_voxels`` voxels (:func:`sample_synthetic_batch`), infers each voxel's encoder from the
    first ``K`` images and scores it by ``objective``: ``"response"`` — the mean squared error of
    its predictions on the ``n_query`` held-out images (upstream's "pmse"), or ``"weights"`` — the
    squared error of ``(w, b)`` against the true ones (mean over ``E + 1``). Unlike stage-2
    pretraining, the responses here include ``b`` (``add_bias=True``) so the intercept is learnable.
    With ``subjects`` (and ``embeddings``/``prior`` ``None``) the draws are real voxels of real or
    simulated subjects (:func:`sample_subject_batch`), as BraInCoRL meta-trains; only the
    ``"response"`` objective applies there.

    Returns:
        The loss of every step.
    """
    if objective not in ("response", "weights"):
        raise ValueError(f"objective must be 'response' or 'weights', got {objective!r}")
    if objective == "weights" and subjects is not None:
        raise ValueError("objective 'weights' needs known encoders: synthetic voxels, not subjects")
    _check_source(embeddings, prior, subjects)
    lo, hi = context_range
    pool = min(len(x.embeds) for x in subjects) if subjects else (0 if embeddings is None else len(embeddings))
    if not 1 <= lo <= hi or hi + n_query > pool:
        raise ValueError(
            f"context_range {context_range} plus n_query {n_query} must fit the {pool} images and start at >= 1"
        )
    g = torch.Generator().manual_seed(seed)

    def step_loss(_: int) -> Tensor:
        k = int(torch.randint(lo, hi + 1, (1,), generator=g))
        batch = _draw(embeddings, prior, subjects, k + n_query, n_voxels, g, add_bias=True)
        out = model(batch.embeds[:k], batch.beta[:k].T)
        if objective == "weights":
            pred = torch.cat([out.weight, out.bias[:, None]], 1)
            return F.mse_loss(pred, torch.cat([batch.weight, batch.bias[:, None]], 1))
        return F.mse_loss(out.predict(batch.embeds[k:]), batch.beta[k:].T)

    return _optimise(model, step_loss, steps, lr, weight_decay, warmup, grad_clip, log_every, log)


def train_inversion_decoder(
    model: FunctionalInversionDecoder,
    embeddings: Tensor | None,
    prior: SyntheticVoxelPrior | None,
    *,
    subjects: Sequence[SubjectData] | None = None,
    steps: int = 1000,
    voxel_range: tuple[int, int] = (100, 200),
    n_images: int = 64,
    lr: float = 1e-5,
    weight_decay: float = 1e-2,
    warmup: int = 0,
    grad_clip: float | None = 1.0,
    contrastive_weight: float = 0.1,
    temperature: float = 0.2,
    voxel_encoder: InContextVoxelEncoder | None = None,
    context_size: int = 100,
    seed: int = 0,
    log_every: int = 0,
    log: Callable[[str], None] | None = print,
) -> list[float]:
    """Train stage 2 on synthetic voxels: upstream's pretraining, or meta-training through stage 1.

    Each step draws ``V`` uniformly in ``[voxel_range[0], voxel_range[1])`` voxels and ``n_images``
    images, and minimises :func:`inversion_loss` between the predictions and the unit-norm image
    embeddings. Without ``voxel_encoder`` the tokens carry the true ``(w, b)`` (pretraining, as
    upstream); with one, ``context_size`` further images are drawn and the frozen stage 1 infers
    each voxel's ``(w, b)`` from them, so stage 2 learns to invert the encoders it will be given at
    test time. With ``subjects`` (real or simulated subjects' data, ``embeddings``/``prior`` ``None``)
    the voxels are real ones, which needs ``voxel_encoder`` — the meta-training on training
    subjects before decoding an unseen one. Upstream's learning rate is 1e-5 at full size; tiny
    models on a CPU want ~1e-3.

    Returns:
        The loss of every step.
    """
    lo, hi = voxel_range
    if not 1 <= lo < hi:
        raise ValueError(f"voxel_range must be (low, high) with 1 <= low < high, got {voxel_range}")
    _check_source(embeddings, prior, subjects)
    if subjects is not None and voxel_encoder is None:
        raise ValueError("training on subjects needs voxel_encoder= (their encoders are inferred by stage 1)")
    pool = min(len(x.embeds) for x in subjects) if subjects else (0 if embeddings is None else len(embeddings))
    if voxel_encoder is not None and (context_size < 1 or context_size + n_images > pool):
        raise ValueError(f"context_size {context_size} + n_images {n_images} must fit the {pool} images")
    g = torch.Generator().manual_seed(seed)

    def step_loss(_: int) -> Tensor:
        v = int(torch.randint(lo, hi, (1,), generator=g))
        extra = 0 if voxel_encoder is None else context_size
        batch = _draw(embeddings, prior, subjects, n_images + extra, v, g, add_bias=False)
        if voxel_encoder is None:
            weight, bias = batch.weight, batch.bias
        else:
            enc = voxel_encoder.infer(batch.embeds[:extra], batch.beta[:extra])
            weight, bias = enc.weight, enc.bias
        pred = model(weight, bias, batch.beta[extra:])
        loss, _terms = inversion_loss(
            pred, batch.embeds[extra:], contrastive_weight=contrastive_weight, temperature=temperature
        )
        return loss

    return _optimise(model, step_loss, steps, lr, weight_decay, warmup, grad_clip, log_every, log)
