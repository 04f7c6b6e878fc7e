"""The blocks of the MEG brain module (Benchetrit, Banville & King, ICLR 2024; Défossez et al., NMI 2023).

Each block is written for this project from the published description (brainmagick's ``SimpleConv``
is read for facts only: sizes, defaults, the order of the blocks). Shapes: ``B`` batch, ``C`` MEG
channels, ``T`` time samples, ``D`` Fourier embedding size, ``O`` spatial-attention outputs.

- :class:`FourierEmbedding` — 2-D sensor positions -> ``D`` cos/sin features on a ``sqrt(D/2)``-square
  frequency grid (positions taken over ``[-margin, 1 + margin]``);
- :class:`SpatialAttention` — ``O`` learned queries over the embedded positions, a softmax over the
  input channels, sensor dropout (every sensor within ``dropout_radius`` of a random point is
  removed, during training only);
- :class:`SubjectLayer` — one ``[C, C]`` matrix per subject, picked by the subject index;
- :class:`ConvStack` — dilated residual 1-D convolutions (BatchNorm, GELU), dilation doubling and
  reset every ``dilation_period`` blocks, a GLU gate after every ``glu_every``-th block;
- :class:`TemporalAggregation` — a learned affine map ``R^T -> R`` (or the mean over time);
- :class:`ProjectionHead` — LayerNorm -> GELU -> Linear.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ConvStack",
    "FourierEmbedding",
    "ProjectionHead",
    "SpatialAttention",
    "SubjectLayer",
    "TemporalAggregation",
    "sensor_dropout_mask",
]


class FourierEmbedding(nn.Module):
    """Fourier features of 2-D positions: ``[..., 2] -> [..., dim]`` (no parameters).

    With ``n = sqrt(dim / 2)`` frequencies per axis, feature ``(kx, ky)`` is ``cos`` / ``sin`` of
    ``2 pi (kx u + ky v)`` where ``(u, v) = (pos + margin) / (1 + 2 margin)``: the margin keeps the
    sensors away from the period's edges, so opposite sides of the helmet are not neighbours.

    Args:
        dim: embedding size; ``dim / 2`` must be a perfect square (2048 -> 32 x 32 frequencies).
        margin: extension of the unit square on each side.
    """

    def __init__(self, dim: int = 2048, margin: float = 0.2) -> None:
        super().__init__()
        n = math.isqrt(dim // 2)
        if dim % 2 or n * n * 2 != dim:
            raise ValueError(f"FourierEmbedding dim must be 2 * n^2 (e.g. 2048 = 2 * 32^2), got {dim}")
        self.dim, self.margin, self.n_freqs = dim, margin, n
        k = torch.arange(n, dtype=torch.float32)
        grid = torch.stack(torch.meshgrid(k, k, indexing="ij"), dim=-1).reshape(-1, 2)  # [n*n, 2]
        self.register_buffer("freqs", grid, persistent=False)

    def forward(self, positions: Tensor) -> Tensor:
        uv = (positions.float() + self.margin) / (1 + 2 * self.margin)  # [..., 2]
        phase = 2 * math.pi * uv @ self.freqs.T  # [..., n*n]
        return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)  # [..., dim]


def sensor_dropout_mask(positions: Tensor, centres: Tensor, radius: float) -> Tensor:
    """``[B, C]`` True where a sensor is kept: farther than ``radius`` from its row's centre ``[B, 2]``.

    A row that would lose every sensor keeps them all.
    """
    dist = torch.linalg.vector_norm(positions - centres[:, None, :], dim=-1)  # [B, C]
    keep = dist >= radius
    return keep | ~keep.any(dim=1, keepdim=True)


class SpatialAttention(nn.Module):
    """Re-reference ``C`` sensors onto ``O`` virtual channels with a softmax over the sensors.

    ``weights[b, o, :] = softmax_c(<query_o, fourier(pos[b, c])>)`` over the kept sensors, and
    ``out[b, o, t] = sum_c weights[b, o, c] x[b, c, t]``. Because the weights depend on positions
    only, the same module runs on recordings with different or missing sensors (``mask``).

    Args:
        out_channels: ``O`` (270 in the paper).
        pos_dim: Fourier embedding size ``D`` (2048).
        dropout_radius: during training, for each sample the sensors within this distance of a
            random point of the unit square are removed before the softmax (0 disables).
        margin: Fourier embedding margin.

    Parameters: ``O * D`` (the queries).
    """

    def __init__(
        self, out_channels: int = 270, pos_dim: int = 2048, dropout_radius: float = 0.2, margin: float = 0.2
    ) -> None:
        super().__init__()
        self.embedding = FourierEmbedding(pos_dim, margin)
        self.queries = nn.Parameter(torch.randn(out_channels, pos_dim) / math.sqrt(pos_dim))  # [O, D]
        self.dropout_radius = dropout_radius

    def attention_weights(self, positions: Tensor, mask: Tensor | None = None, generator=None) -> Tensor:
        """``[B, O, C]`` weights, each row a distribution over the kept input channels.

        Args:
            positions: ``[B, C, 2]`` in ``[0, 1]``.
            mask: ``[B, C]`` True for usable sensors (default all).
            generator: for the dropout centres (training only).
        """
        scores = torch.einsum("od,bcd->boc", self.queries, self.embedding(positions))  # [B, O, C]
        keep = torch.ones(positions.shape[:2], dtype=torch.bool, device=positions.device) if mask is None else mask
        if self.training and self.dropout_radius > 0:
            centres = torch.rand(positions.shape[0], 2, generator=generator, device=positions.device)
            keep = keep & sensor_dropout_mask(positions, centres, self.dropout_radius)
        if not keep.any(dim=1).all():
            raise ValueError("every sensor of a sample is masked out")
        scores = scores.masked_fill(~keep[:, None, :], float("-inf"))
        return torch.softmax(scores, dim=-1)

    def forward(self, x: Tensor, positions: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x`` ``[B, C, T]``, ``positions`` ``[B, C, 2]`` or ``[C, 2]`` -> ``[B, O, T]``."""
        if positions.dim() == 2:
            positions = positions.expand(x.shape[0], -1, -1)
        if positions.shape[:2] != x.shape[:2]:
            raise ValueError(f"positions {tuple(positions.shape)} do not match the input's {x.shape[1]} channels")
        weights = self.attention_weights(positions, mask)  # [B, O, C]
        return torch.einsum("boc,bct->bot", weights, x.to(weights.dtype))


class SubjectLayer(nn.Module):
    """One ``[C, C]`` linear map per subject: ``out[b, :, t] = W[subject[b]]^T x[b, :, t]``.

    Args:
        n_subjects: number of subjects ``S``.
        channels: ``C``.
        init: ``"identity"`` (every subject starts as the identity) or ``"random"`` (``randn / sqrt(C)``).

    Parameters: ``S * C * C``.
    """

    def __init__(self, n_subjects: int, channels: int, init: str = "identity") -> None:
        super().__init__()
        if init == "identity":
            w = torch.eye(channels).repeat(n_subjects, 1, 1)
        elif init == "random":
            w = torch.randn(n_subjects, channels, channels) / math.sqrt(channels)
        else:
            raise ValueError(f"SubjectLayer init must be 'identity' or 'random', got {init!r}")
        self.weight = nn.Parameter(w)  # [S, C_in, C_out]

    def forward(self, x: Tensor, subject: Tensor) -> Tensor:
        """``x`` ``[B, C, T]``, ``subject`` ``[B]`` integer indices -> ``[B, C, T]``."""
        n = self.weight.shape[0]
        if subject.shape != (x.shape[0],):
            raise ValueError(f"subject must be [B] = [{x.shape[0]}], got {tuple(subject.shape)}")
        if subject.numel() and (int(subject.min()) < 0 or int(subject.max()) >= n):
            raise ValueError(f"subject indices must be in [0, {n}), got {subject.tolist()[:8]}")
        return torch.einsum("bct,bcd->bdt", x, self.weight[subject])


class _ConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int, dropout: float, glu: bool) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2)
        self.norm = nn.BatchNorm1d(c_out)
        self.dropout = nn.Dropout(dropout)
        self.residual = c_in == c_out
        self.glu = nn.Conv1d(c_out, 2 * c_out, kernel, padding=(kernel - 1) // 2) if glu else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.dropout(F.gelu(self.norm(self.conv(x))))  # [B, c_out, T]
        if self.residual:
            y = x + y
        if self.glu is not None:
            y = F.glu(self.glu(y), dim=1)  # [B, 2 c_out, T] -> gate -> [B, c_out, T]
        return y


class ConvStack(nn.Module):
    """Dilated residual convolutions: ``[B, C_in, T] -> [B, hidden, T]`` (time length kept).

    Block ``k`` is ``Conv1d(kernel, dilation 2**(k % dilation_period)) -> BatchNorm -> GELU ->
    Dropout`` with a residual connection when its input already has ``hidden`` channels, followed
    by a GLU gate (``Conv1d(hidden, 2 hidden, kernel)`` then ``glu``) after every ``glu_every``-th block.

    Args:
        in_channels, hidden, depth, kernel, dilation_period, glu_every: as above (``glu_every=0``: no gates).
        dropout: inside the blocks.
        dropout_input: on the stack's input.

    Parameters: block ``k`` has ``c_in * hidden * kernel + hidden`` (conv) ``+ 2 hidden`` (norm), and a
    gate ``hidden * 2 hidden * kernel + 2 hidden``.
    """

    def __init__(
        self,
        in_channels: int,
        hidden: int = 320,
        depth: int = 10,
        kernel: int = 3,
        dilation_period: int = 5,
        glu_every: int = 2,
        dropout: float = 0.0,
        dropout_input: float = 0.0,
    ) -> None:
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"kernel must be odd to keep the time length, got {kernel}")
        self.dilations = [2 ** (k % dilation_period) for k in range(depth)]
        self.input_dropout = nn.Dropout(dropout_input)
        self.blocks = nn.ModuleList(
            _ConvBlock(
                in_channels if k == 0 else hidden,
                hidden,
                kernel,
                d,
                dropout,
                glu=glu_every > 0 and (k + 1) % glu_every == 0,
            )
            for k, d in enumerate(self.dilations)
        )
        self.kernel = kernel

    @property
    def receptive_field(self) -> int:
        """Input samples that one output sample sees (convolutions and gates)."""
        gates = sum(b.glu is not None for b in self.blocks)
        return 1 + (self.kernel - 1) * (sum(self.dilations) + gates)

    def forward(self, x: Tensor) -> Tensor:
        x = self.input_dropout(x)
        for block in self.blocks:
            x = block(x)
        return x


class TemporalAggregation(nn.Module):
    """``[B, F, T] -> [B, F]``: a learned affine map over time (``"affine"``, ``T + 1`` parameters) or the mean."""

    def __init__(self, n_times: int, mode: str = "affine") -> None:
        super().__init__()
        if mode not in ("affine", "mean"):
            raise ValueError(f"aggregation must be 'affine' or 'mean', got {mode!r}")
        self.mode, self.n_times = mode, n_times
        self.linear = nn.Linear(n_times, 1) if mode == "affine" else None

    def forward(self, x: Tensor) -> Tensor:
        if self.linear is None:
            return x.mean(dim=-1)
        if x.shape[-1] != self.n_times:
            raise ValueError(f"the affine temporal aggregation was built for {self.n_times} samples, got {x.shape[-1]}")
        return self.linear(x).squeeze(-1)


class ProjectionHead(nn.Module):
    """``LayerNorm -> GELU -> Linear``: ``[B, in_dim] -> [B, out_dim]`` (``2 in + in * out + out`` parameters)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(F.gelu(self.norm(x)))
