"""The MEG brain module of Benchetrit, Banville & King (ICLR 2024, arXiv 2310.19812) and its loss.

The module maps one MEG epoch to image embeddings::

    x [B, C, T] --SpatialAttention(positions)--> [B, 270, T]    softmax over the C sensors
      --Conv1d 1x1 (270 -> 270)--> --SubjectLayer(subject)--> [B, 270, T]
      --ConvStack (dilated residual, GLU)--> [B, 320, T]
      --Conv1d 1x1 (320 -> 640) -> GELU -> Conv1d 1x1 (640 -> F')--> [B, F', T]    F' = 2048
      --TemporalAggregation (Linear T -> 1)--> [B, F']
      --ProjectionHead "clip"--> [B, F]     --ProjectionHead "mse"--> [B, F]

Sizes follow brainmagick's ``SimpleConv`` defaults (merger 270 channels, positional dim 2048,
sensor-dropout radius 0.2, hidden 320, kernel 3, dilation period 5, GLU every 2nd block) and the
paper's image head (F' = 2048, affine temporal aggregation over T = 181, two LayerNorm-GELU-Linear
heads). The image paper's conv depth is not verified here; ``depth=10`` is brainmagick's value.
The paper's code was never released (facebookresearch/brainmagick#5); every line here is this
project's own.

Parameter count (:func:`brain_module_parameter_count`, checked by the tests) with ``C`` sensors on
any layout (positions are not parameters), ``S`` subjects, ``F`` the target size, defaults
otherwise: spatial attention ``270 * 2048 = 552,960``; 1x1 conv ``270 * 270 + 270 = 73,170``;
subject layer ``S * 72,900``; conv stack ``6,108,800`` (10 blocks, 5 gates); projection to F'
``320 * 640 + 640 + 640 * 2048 + 2048 = 1,518,208``; aggregation ``182``; heads
``2 * (4,096 + 2,048 F + F)``. With ``S = 4`` and ``F = 768`` (CLIP ViT-L/14) that is 11,700,376.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decodelab.config import register_to_config
from decodelab.hub import PretrainedMixin
from decodelab.neuro.meg.layers import ConvStack, ProjectionHead, SpatialAttention, SubjectLayer, TemporalAggregation
from decodelab.registry import register_architecture, register_model

__all__ = [
    "BRAIN_MODULE_PRESETS",
    "BrainModule",
    "BrainModuleLoss",
    "BrainModuleOutput",
    "brain_module_parameter_count",
    "clip_loss",
    "create_brain_module",
]

#: Named sizes: ``paper`` (the sizes above), ``small`` (trains on a CPU in minutes, used on the simulated
#: MEG) and ``test`` (a tiny variant for tests and smoke runs).
BRAIN_MODULE_PRESETS: dict[str, dict] = {
    "paper": dict(
        merger_channels=270,
        pos_dim=2048,
        hidden=320,
        depth=10,
        kernel=3,
        dilation_period=5,
        glu_every=2,
        latent_dim=2048,
    ),
    "small": dict(
        merger_channels=32,
        pos_dim=288,
        hidden=32,
        depth=4,
        kernel=3,
        dilation_period=5,
        glu_every=2,
        latent_dim=64,
        sensor_dropout=0.0,
    ),
    "test": dict(
        merger_channels=12, pos_dim=32, hidden=16, depth=3, kernel=3, dilation_period=2, glu_every=2, latent_dim=24
    ),
}


@dataclass
class BrainModuleOutput:
    """``clip`` ``[B, F]`` (for the contrastive loss), ``mse`` ``[B, F]`` (for the MSE loss), ``latent`` ``[B, F']``."""

    clip: Tensor
    mse: Tensor
    latent: Tensor


@register_architecture
class BrainModule(nn.Module, PretrainedMixin):
    """MEG epochs ``[B, C, T]`` of ``S`` subjects -> image embeddings ``[B, F]`` (two heads).

    ``save_pretrained`` / ``from_pretrained`` write and read ``config.json`` (the constructor's
    arguments, positions included) + ``model.safetensors``.

    Args:
        positions: ``[C, 2]`` sensor positions in ``[0, 1]`` (e.g.
            :func:`decodelab.datasets.things_meg.ctf275_sensor_positions`); a forward may pass its own.
        out_dim: ``F``, the size of the image embeddings to predict.
        n_subjects: ``S``.
        n_times: ``T`` (181 for -0.5..1.0 s at 120 Hz); fixes the affine temporal aggregation.
        merger_channels, pos_dim, sensor_dropout: spatial attention (``sensor_dropout`` is the radius).
        hidden, depth, kernel, dilation_period, glu_every, dropout, dropout_input: the conv stack.
        latent_dim: ``F'``.
        aggregation: ``"affine"`` or ``"mean"``.
        subject_init: ``"identity"`` or ``"random"``.
    """

    @register_to_config
    def __init__(
        self,
        positions: np.ndarray | Tensor | list,
        out_dim: int,
        *,
        n_subjects: int = 1,
        n_times: int = 181,
        merger_channels: int = 270,
        pos_dim: int = 2048,
        sensor_dropout: float = 0.2,
        hidden: int = 320,
        depth: int = 10,
        kernel: int = 3,
        dilation_period: int = 5,
        glu_every: int = 2,
        dropout: float = 0.0,
        dropout_input: float = 0.0,
        latent_dim: int = 2048,
        aggregation: str = "affine",
        subject_init: str = "identity",
    ) -> None:
        super().__init__()
        pos = torch.as_tensor(np.asarray(positions), dtype=torch.float32)
        if pos.ndim != 2 or pos.shape[1] != 2:
            raise ValueError(f"positions must be [C, 2], got {tuple(pos.shape)}")
        self.register_buffer("positions", pos)
        self.spatial = SpatialAttention(merger_channels, pos_dim, sensor_dropout)
        self.initial = nn.Conv1d(merger_channels, merger_channels, 1)
        self.subject = SubjectLayer(n_subjects, merger_channels, subject_init)
        self.encoder = ConvStack(
            merger_channels, hidden, depth, kernel, dilation_period, glu_every, dropout, dropout_input
        )
        self.projection = nn.Sequential(
            nn.Conv1d(hidden, 2 * hidden, 1), nn.GELU(), nn.Conv1d(2 * hidden, latent_dim, 1)
        )
        self.aggregation = TemporalAggregation(n_times, aggregation)
        self.clip_head = ProjectionHead(latent_dim, out_dim)
        self.mse_head = ProjectionHead(latent_dim, out_dim)

    def save_pretrained(self, directory: str | Path, extra: dict[str, Any] | None = None, **kwargs: Any) -> Path:
        """As :meth:`PretrainedMixin.save_pretrained`, with the positions stored as a JSON list."""
        cfg = dict(self.config)
        cfg["positions"] = np.asarray(cfg["positions"], dtype=np.float64).tolist()
        object.__setattr__(self, "config", cfg)
        return super().save_pretrained(directory, extra, **kwargs)

    def forward(
        self, x: Tensor, subject: Tensor | None = None, positions: Tensor | None = None, mask: Tensor | None = None
    ) -> BrainModuleOutput:
        """``x`` ``[B, C, T]``, ``subject`` ``[B]`` (default 0), ``positions`` ``[B, C, 2]``, ``mask`` ``[B, C]``."""
        if x.dim() != 3:
            raise ValueError(f"expected MEG epochs [B, C, T], got shape {tuple(x.shape)}")
        if subject is None:
            subject = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        pos = self.positions if positions is None else positions
        h = self.spatial(x, pos, mask)  # [B, 270, T]
        h = self.subject(self.initial(h), subject)  # [B, 270, T]
        h = self.projection(self.encoder(h))  # [B, F', T]
        z = self.aggregation(h)  # [B, F']
        return BrainModuleOutput(clip=self.clip_head(z), mse=self.mse_head(z), latent=z)


def create_brain_module(preset: str, positions: np.ndarray | Tensor, out_dim: int, **kwargs) -> BrainModule:
    """A :class:`BrainModule` of a named size (:data:`BRAIN_MODULE_PRESETS`), keyword arguments overriding it."""
    if preset not in BRAIN_MODULE_PRESETS:
        raise ValueError(f"unknown brain module preset {preset!r}; known: {sorted(BRAIN_MODULE_PRESETS)}")
    return BrainModule(positions, out_dim, **{**BRAIN_MODULE_PRESETS[preset], **kwargs})


@register_model("brain_module_meg", kind="brain-encoder", family="meg_brain_module")
def brain_module_meg(positions: np.ndarray | Tensor | list, out_dim: int, **kwargs: Any) -> BrainModule:
    """The paper-size MEG brain module (:data:`BRAIN_MODULE_PRESETS` ``"paper"``)."""
    return create_brain_module("paper", positions, out_dim, **kwargs)


@register_model("test_brain_module", kind="brain-encoder", family="meg_brain_module")
def test_brain_module(positions: np.ndarray | Tensor | list, out_dim: int, **kwargs: Any) -> BrainModule:
    """A tiny MEG brain module for tests (:data:`BRAIN_MODULE_PRESETS` ``"test"``)."""
    return create_brain_module("test", positions, out_dim, **kwargs)


test_brain_module.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite the name


def brain_module_parameter_count(
    out_dim: int,
    *,
    n_subjects: int = 1,
    n_times: int = 181,
    merger_channels: int = 270,
    pos_dim: int = 2048,
    hidden: int = 320,
    depth: int = 10,
    kernel: int = 3,
    glu_every: int = 2,
    latent_dim: int = 2048,
    aggregation: str = "affine",
    **_: object,
) -> int:
    """Closed-form number of trainable parameters of :class:`BrainModule` (the docstring's table)."""
    m, h = merger_channels, hidden
    n = m * pos_dim + (m * m + m) + n_subjects * m * m
    for k in range(depth):
        c_in = m if k == 0 else h
        n += c_in * h * kernel + h + 2 * h
        if glu_every > 0 and (k + 1) % glu_every == 0:
            n += h * 2 * h * kernel + 2 * h
    n += h * 2 * h + 2 * h + 2 * h * latent_dim + latent_dim
    n += n_times + 1 if aggregation == "affine" else 0
    n += 2 * (2 * latent_dim + latent_dim * out_dim + out_dim)
    return n


def clip_loss(pred: Tensor, target: Tensor, *, temperature: float = 1.0, normalize_pred: bool = False) -> Tensor:
    """Contrastive (CLIP-style) loss: each MEG prediction must pick its own image among the batch's.

    ``scores[i, j] = <pred_i, target_j / ||target_j||> / temperature`` and the loss is the
    cross-entropy of each row against the diagonal (brainmagick's ``ClipLoss``: candidates
    L2-normalised, estimates not, no temperature by default).

    Args:
        pred: ``[B, F]`` predictions; target: ``[B, F]`` image embeddings (row ``i`` matches pred ``i``).
    """
    if pred.shape != target.shape or pred.dim() != 2:
        raise ValueError(f"pred and target must both be [B, F], got {tuple(pred.shape)} and {tuple(target.shape)}")
    p = F.normalize(pred, dim=-1) if normalize_pred else pred
    scores = p @ F.normalize(target, dim=-1).T / temperature  # [B, B]
    return F.cross_entropy(scores, torch.arange(len(pred), device=pred.device))


class BrainModuleLoss(nn.Module):
    """``lam * CLIP(out.clip, target) + (1 - lam) * MSE(out.mse, target)`` (the paper's Eq. 3).

    Args:
        lam: weight of the contrastive term in ``[0, 1]`` (the paper's value is not verified here:
            set it explicitly).
        temperature, normalize_pred: passed to :func:`clip_loss`.

    Returns (from ``forward``): the loss and a dict of its two terms (detached floats).
    """

    def __init__(self, lam: float, *, temperature: float = 1.0, normalize_pred: bool = False) -> None:
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {lam}")
        self.lam, self.temperature, self.normalize_pred = lam, temperature, normalize_pred

    def forward(self, out: BrainModuleOutput, target: Tensor) -> tuple[Tensor, dict[str, float]]:
        clip = clip_loss(out.clip, target, temperature=self.temperature, normalize_pred=self.normalize_pred)
        mse = F.mse_loss(out.mse, target)
        loss = self.lam * clip + (1 - self.lam) * mse
        return loss, {"clip": float(clip.detach()), "mse": float(mse.detach())}
