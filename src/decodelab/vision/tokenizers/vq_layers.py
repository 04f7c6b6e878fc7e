"""Building blocks of the LlamaGen-style VQ image tokenizer.

The convolutional encoder/decoder follow the taming-transformers family as used by LlamaGen's
``tokenizer/tokenizer_image/vq_model.py`` (FoundationVision/LlamaGen @ ce98ec4). The module and
attribute names below are chosen so that ``state_dict()`` keys match that file exactly, e.g.::

    encoder.conv_blocks.{i}.res.{j}.{norm1,conv1,norm2,conv2,nin_shortcut}.*
    encoder.conv_blocks.{i}.attn.{j}.{norm,q,k,v,proj_out}.*
    encoder.conv_blocks.{i}.downsample.conv.*
    encoder.mid.{0,1,2}.*            (resnet, attention, resnet)
    decoder.conv_blocks.{i}.upsample.conv.*
    quantize.embedding.weight, quantize.codebook_used

Facts that matter for loading upstream weights: GroupNorm with 32 groups and eps 1e-6, swish
(``x * sigmoid(x)``) activations, downsampling by a stride-2 3x3 convolution after padding one
pixel on the right and bottom, upsampling by nearest-neighbour x2 followed by a 3x3 convolution,
and attention blocks only at the lowest resolution (one after every resnet block there).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORM_GROUPS = 32
NORM_EPS = 1e-6
# LlamaGen keeps a rolling window of this many recent code assignments in ``quantize.codebook_used``.
USAGE_WINDOW = 65536


def group_norm(channels: int) -> nn.GroupNorm:
    """The normalisation used everywhere in the tokenizer (32 groups, eps 1e-6, affine)."""
    return nn.GroupNorm(NORM_GROUPS, channels, eps=NORM_EPS, affine=True)


class ResnetBlock(nn.Module):
    """Pre-activation residual block: (norm, swish, conv3x3) twice, 1x1 shortcut when widths differ.

    Args:
        in_channels: input width.
        out_channels: output width.
        dropout: dropout probability before the second convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all spatial positions, with 1x1-conv projections.

    Args:
        channels: feature width (also the attention dimension; scores are scaled by 1/sqrt(channels)).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)

        def tokens(t: Tensor) -> Tensor:  # [B, C, H, W] -> [B, 1, H*W, C]
            return t.flatten(2).transpose(1, 2).unsqueeze(1)

        out = F.scaled_dot_product_attention(tokens(self.q(y)), tokens(self.k(y)), tokens(self.v(y)))
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halve the resolution: zero-pad one pixel right/bottom, then a stride-2 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour x2, then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: resnet blocks, each optionally followed by an attention block.

    Subclasses add the resampling layer under the attribute name the upstream keys use.
    """

    def __init__(self, in_channels: int, out_channels: int, n_blocks: int, attention: bool, dropout: float) -> None:
        super().__init__()
        self.res = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, dropout) for i in range(n_blocks)
        )
        self.attn = nn.ModuleList(AttnBlock(out_channels) for _ in range(n_blocks if attention else 0))

    def blocks(self, x: Tensor) -> Tensor:
        for i, res in enumerate(self.res):
            x = res(x)
            if len(self.attn):
                x = self.attn[i](x)
        return x


class EncoderLevel(_Level):
    """An encoder level; ``downsample`` is ``None`` at the last (lowest-resolution) level."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        n_blocks: int,
        attention: bool,
        dropout: float,
        downsample: bool,
    ) -> None:
        super().__init__(in_channels, out_channels, n_blocks, attention, dropout)
        self.downsample = Downsample(out_channels) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(x)
        return x if self.downsample is None else self.downsample(x)


class DecoderLevel(_Level):
    """A decoder level; ``upsample`` is ``None`` at the last (full-resolution) level."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        n_blocks: int,
        attention: bool,
        dropout: float,
        upsample: bool,
    ) -> None:
        super().__init__(in_channels, out_channels, n_blocks, attention, dropout)
        self.upsample = Upsample(out_channels) if upsample else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(x)
        return x if self.upsample is None else self.upsample(x)


def _middle(channels: int, dropout: float) -> nn.ModuleList:
    """The bottleneck: resnet, attention, resnet (keys ``mid.0``, ``mid.1``, ``mid.2``)."""
    return nn.ModuleList(
        [
            ResnetBlock(channels, channels, dropout),
            AttnBlock(channels),
            ResnetBlock(channels, channels, dropout),
        ]
    )


class Encoder(nn.Module):
    """Images ``[B, in_channels, H, W]`` -> features ``[B, z_channels, H/f, W/f]``, f = 2**(len(ch_mult)-1).

    Args:
        in_channels: image channels.
        ch: base width; level ``i`` has width ``ch * ch_mult[i]``.
        ch_mult: width multipliers, one per resolution level.
        num_res_blocks: resnet blocks per level.
        z_channels: output width.
        dropout: dropout inside the resnet blocks.
    """

    def __init__(
        self,
        in_channels: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        z_channels: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = [ch * m for m in ch_mult]
        last = len(widths) - 1
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList(
            EncoderLevel(ch if i == 0 else widths[i - 1], widths[i], num_res_blocks, i == last, dropout, i != last)
            for i in range(len(widths))
        )
        self.mid = _middle(widths[-1], dropout)
        self.norm_out = group_norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = level(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class PatchEncoder(nn.Module):
    """Images ``[B, in_channels, H, W]`` -> ``[B, z_channels, H/f, W/f]``, one latent per f x f patch.

    A stride-``f`` patch embedding followed by pointwise (1x1) residual MLP blocks: no layer mixes
    neighbouring patches, so a token depends on its own patch alone and identical patches always get
    identical tokens. decodelab adds this (it is not in LlamaGen) for worlds with large flat regions:
    with the convolutional :class:`Encoder` every background token also encodes the objects inside
    its receptive field, which spreads one visual patch over hundreds of codes and makes an
    autoregressive model predict future objects from the background it samples first (on the
    shapes world, 80% of the tokens are pure background and the convolutional encoder spread them
    over 750 of 1024 codes). The decoder stays convolutional and uses context.

    Args:
        in_channels: image channels.
        hidden: width of the per-patch MLP.
        z_channels: output width.
        factor: patch side ``f`` (the downsample factor).
        depth: number of residual pointwise blocks.
    """

    def __init__(self, in_channels: int, hidden: int, z_channels: int, factor: int, depth: int) -> None:
        super().__init__()
        self.embed = nn.Conv2d(in_channels, hidden, kernel_size=factor, stride=factor)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, 2 * hidden), nn.SiLU(), nn.Linear(2 * hidden, hidden))
            for _ in range(depth)
        )
        self.norm_out = nn.LayerNorm(hidden)
        self.proj_out = nn.Linear(hidden, z_channels)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x).permute(0, 2, 3, 1)  # [B, H/f, W/f, hidden]; everything after acts per patch
        for block in self.blocks:
            h = h + block(h)
        return self.proj_out(F.silu(self.norm_out(h))).permute(0, 3, 1, 2)


class Decoder(nn.Module):
    """Features ``[B, z_channels, h, w]`` -> images ``[B, out_channels, h*f, w*f]``.

    ``conv_blocks[0]`` is the lowest resolution (width ``ch * ch_mult[-1]``, with attention) and each
    level has ``num_res_blocks + 1`` resnet blocks, as upstream.

    Args:
        out_channels: image channels.
        ch: base width.
        ch_mult: width multipliers listed from full resolution to lowest (same convention as the encoder).
        num_res_blocks: the encoder's count; decoder levels hold one more.
        z_channels: input width.
        dropout: dropout inside the resnet blocks.
    """

    def __init__(
        self,
        out_channels: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        z_channels: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = [ch * m for m in reversed(ch_mult)]  # lowest resolution first
        last = len(widths) - 1
        self.conv_in = nn.Conv2d(z_channels, widths[0], 3, padding=1)
        self.mid = _middle(widths[0], dropout)
        self.conv_blocks = nn.ModuleList(
            DecoderLevel(widths[max(i - 1, 0)], widths[i], num_res_blocks + 1, i == 0, dropout, i != last)
            for i in range(len(widths))
        )
        self.norm_out = group_norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def squared_distances(z: Tensor, codebook: Tensor) -> Tensor:
    """``[N, D] x [K, D] -> [N, K]`` squared Euclidean distances, ``|z|^2 + |e|^2 - 2 z.e``."""
    return z.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2.0 * z @ codebook.t()


def entropy_loss(affinity: Tensor, temperature: float = 0.01) -> Tensor:
    """MaskGIT-style codebook entropy loss on ``[N, K]`` affinities (higher = closer).

    Returns ``mean per-sample entropy - entropy of the batch-averaged distribution``: minimising it
    makes each assignment confident while spreading the batch over many codes.
    """
    logits = affinity / temperature
    probs = logits.softmax(-1)
    log_probs = logits.log_softmax(-1)
    mean_probs = probs.mean(0)
    batch_entropy = -(mean_probs * torch.log(mean_probs + 1e-5)).sum()
    sample_entropy = -(probs * log_probs).sum(-1).mean()
    return sample_entropy - batch_entropy


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook lookup, optionally on L2-normalised vectors (cosine similarity).

    Args:
        codebook_size: number of codes ``K``.
        embed_dim: code dimension ``D``.
        l2_norm: normalise latents and codes before the lookup (LlamaGen's default); the returned
            quantized vectors are then unit-norm.
        show_usage: keep the ``codebook_used`` buffer (a rolling window of the last 65536 code ids
            assigned in training, stored as floats); upstream checkpoints carry it.
    """

    def __init__(self, codebook_size: int, embed_dim: int, l2_norm: bool = True, show_usage: bool = True) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.embed_dim = embed_dim
        self.l2_norm = l2_norm
        self.embedding = nn.Embedding(codebook_size, embed_dim)
        with torch.no_grad():
            self.embedding.weight.uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
            if l2_norm:
                self.embedding.weight.copy_(F.normalize(self.embedding.weight, dim=-1))
        self.codebook_used: Tensor | None
        if show_usage:
            self.register_buffer("codebook_used", torch.zeros(USAGE_WINDOW))
        else:
            self.codebook_used = None

    def codebook(self) -> Tensor:
        """The ``[K, D]`` code vectors used for lookup (unit-norm rows when ``l2_norm``)."""
        w = self.embedding.weight
        return F.normalize(w, dim=-1) if self.l2_norm else w

    def prepare(self, z: Tensor) -> Tensor:
        """Latents ``[..., D]`` as compared with the codebook (normalised when ``l2_norm``)."""
        return F.normalize(z, dim=-1) if self.l2_norm else z

    @torch.no_grad()
    def nearest(self, z: Tensor, chunk: int = 4096) -> Tensor:
        """Index of the nearest code for each row of prepared latents ``[N, D]`` -> ``[N]`` (chunked)."""
        codebook = self.codebook()
        return torch.cat([squared_distances(part, codebook).argmin(1) for part in z.split(chunk)])

    def record_usage(self, indices: Tensor) -> None:
        """Push ``indices`` into the rolling ``codebook_used`` window (no-op without the buffer)."""
        if self.codebook_used is None:
            return
        recent = indices.detach().flatten()[-USAGE_WINDOW:].to(self.codebook_used.dtype)
        n = recent.numel()
        if n < USAGE_WINDOW:
            self.codebook_used[:-n] = self.codebook_used[n:].clone()
        self.codebook_used[-n:] = recent

    def forward(self, z: Tensor, beta: float, entropy_ratio: float) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Quantize with a straight-through estimator and compute the VQ losses.

        Args:
            z: latents ``[B, D, h, w]`` (after ``quant_conv``).
            beta: commitment weight.
            entropy_ratio: entropy-loss weight (0 skips computing it).

        Returns:
            ``(z_q [B, D, h, w], indices [B, h, w], losses)`` where ``z_q`` carries the gradient of
            the (normalised) latents and ``losses`` holds ``vq_loss``, ``commit_loss``,
            ``entropy_loss`` and ``codebook_usage`` (fraction of codes hit in this batch, detached).
        """
        b, d, h, w = z.shape
        flat = self.prepare(z.permute(0, 2, 3, 1).reshape(-1, d))  # [N, D]
        codebook = self.codebook()  # [K, D]
        if entropy_ratio > 0:
            dist = squared_distances(flat, codebook)  # [N, K]
            indices = dist.detach().argmin(1)
            ent = entropy_ratio * entropy_loss(-dist)
        else:
            indices = self.nearest(flat.detach())
            ent = flat.new_zeros(())
        quant = codebook[indices]  # [N, D]
        vq_loss = F.mse_loss(quant, flat.detach())
        commit_loss = beta * F.mse_loss(flat, quant.detach())
        quant = flat + (quant - flat).detach()  # straight-through
        if self.training:
            self.record_usage(indices)
        usage = torch.tensor(indices.unique().numel() / self.codebook_size, device=z.device)
        z_q = quant.reshape(b, h, w, d).permute(0, 3, 1, 2).contiguous()
        losses = {
            "vq_loss": vq_loss,
            "commit_loss": commit_loss,
            "entropy_loss": ent,
            "codebook_usage": usage,
        }
        return z_q, indices.reshape(b, h, w), losses
