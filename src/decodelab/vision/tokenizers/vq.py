"""VQ image tokenizer with LlamaGen's VQ-16 / VQ-8 architecture and state-dict layout.

Images in ``[-1, 1]`` are encoded to a grid of discrete token ids and decoded back. The network and
its parameter names match LlamaGen's ``tokenizer/tokenizer_image/vq_model.py`` (FoundationVision/
LlamaGen @ ce98ec4), so its released checkpoints (``vq_ds16_c2i.pt``, ``vq_ds8_c2i.pt``,
``vq_ds16_t2i.pt``) load strictly through :func:`import_llamagen_vq`.

Example:
    >>> import torch
    >>> from decodelab.vision.tokenizers import test_vq
    >>> vq = test_vq().eval()
    >>> tokens = vq.encode(torch.rand(2, 3, 16, 16) * 2 - 1)  # [2, 4, 4] code ids
    >>> images = vq.decode(tokens)  # [2, 3, 16, 16], roughly in [-1, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decodelab.config import register_to_config
from decodelab.hub import PretrainedMixin, load_state_dict_strict, read_torch_checkpoint
from decodelab.registry import MODELS, register_architecture, register_model
from decodelab.vision.tokenizers.vq_layers import NORM_GROUPS, Decoder, Encoder, PatchEncoder, VectorQuantizer

__all__ = ["VQModel", "import_llamagen_vq", "llamagen_vq_8", "llamagen_vq_16", "test_vq"]

#: Encoder families of :class:`VQModel` (``encoder_type``).
ENCODER_TYPES = ("conv", "patch")


@register_architecture
class VQModel(nn.Module, PretrainedMixin):
    """Vector-quantized autoencoder: images ``[B, C, H, W]`` <-> token ids ``[B, H/f, W/f]``.

    Defaults are LlamaGen's VQ-16 (codebook 16384 x 8 with L2-normalised lookup, 16x downsampling).

    Args:
        codebook_size: number of codes ``K`` (the token vocabulary).
        codebook_embed_dim: code dimension ``D``.
        codebook_l2_norm: look codes up by cosine similarity (latents and codes L2-normalised).
        codebook_show_usage: keep the ``quantize.codebook_used`` buffer that upstream checkpoints carry.
        commit_loss_beta: weight of the commitment loss in :meth:`forward`.
        entropy_loss_ratio: weight of the codebook entropy loss in :meth:`forward` (0 disables it).
        encoder_ch_mult: encoder width multipliers per resolution level (``len - 1`` halvings).
        decoder_ch_mult: decoder width multipliers, listed from full resolution to lowest.
        z_channels: width of the encoder output / decoder input.
        dropout_p: dropout inside the resnet blocks.
        ch: base width (LlamaGen: 128); every level width must be a multiple of 32 (GroupNorm groups).
        num_res_blocks: resnet blocks per encoder level (decoder levels hold one more).
        in_channels: image channels (also the decoder's output channels).
        encoder_type: ``"conv"`` (LlamaGen's convolutional encoder, the default) or ``"patch"``
            (:class:`~decodelab.vision.tokenizers.vq_layers.PatchEncoder`: each token sees only its own
            ``f x f`` patch, so identical patches get identical tokens; ``f`` is still
            ``2 ** (len(encoder_ch_mult) - 1)``, its width ``ch * encoder_ch_mult[-1]`` and its depth
            ``num_res_blocks + 1``). Upstream checkpoints are all ``"conv"``.

    Raises:
        ValueError: on sizes that cannot build a network.
    """

    @register_to_config
    def __init__(
        self,
        *,
        codebook_size: int = 16384,
        codebook_embed_dim: int = 8,
        codebook_l2_norm: bool = True,
        codebook_show_usage: bool = True,
        commit_loss_beta: float = 0.25,
        entropy_loss_ratio: float = 0.0,
        encoder_ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        decoder_ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        z_channels: int = 256,
        dropout_p: float = 0.0,
        ch: int = 128,
        num_res_blocks: int = 2,
        in_channels: int = 3,
        encoder_type: str = "conv",
    ) -> None:
        super().__init__()
        if encoder_type not in ENCODER_TYPES:
            raise ValueError(f"encoder_type must be one of {ENCODER_TYPES}, got {encoder_type!r}")
        for label, value in (
            ("codebook_size", codebook_size),
            ("codebook_embed_dim", codebook_embed_dim),
            ("z_channels", z_channels),
            ("ch", ch),
            ("num_res_blocks", num_res_blocks),
            ("in_channels", in_channels),
        ):
            if int(value) < 1:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        for label, mult in (("encoder_ch_mult", encoder_ch_mult), ("decoder_ch_mult", decoder_ch_mult)):
            if len(mult) == 0 or any(int(m) < 1 for m in mult):
                raise ValueError(f"{label} must be a non-empty list of positive integers, got {list(mult)!r}")
            bad = [ch * m for m in mult if (ch * m) % NORM_GROUPS]
            if ch % NORM_GROUPS or bad:
                raise ValueError(
                    f"every width ch * {label}[i] (and ch itself) must be a multiple of {NORM_GROUPS} for "
                    f"GroupNorm; ch={ch} and {label}={list(mult)} give {[ch] + [ch * m for m in mult]}"
                )
        self.encoder_ch_mult = tuple(int(m) for m in encoder_ch_mult)
        self.decoder_ch_mult = tuple(int(m) for m in decoder_ch_mult)
        self.in_channels = in_channels
        self.commit_loss_beta = commit_loss_beta
        self.entropy_loss_ratio = entropy_loss_ratio

        self.encoder_type = encoder_type
        if encoder_type == "patch":
            width = ch * self.encoder_ch_mult[-1]
            self.encoder = PatchEncoder(in_channels, width, z_channels, self.downsample_factor, num_res_blocks + 1)
        else:
            self.encoder = Encoder(in_channels, ch, self.encoder_ch_mult, num_res_blocks, z_channels, dropout_p)
        self.decoder = Decoder(in_channels, ch, self.decoder_ch_mult, num_res_blocks, z_channels, dropout_p)
        self.quantize = VectorQuantizer(codebook_size, codebook_embed_dim, codebook_l2_norm, codebook_show_usage)
        self.quant_conv = nn.Conv2d(z_channels, codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(codebook_embed_dim, z_channels, 1)

    # ------------------------------------------------------------------ properties

    @property
    def downsample_factor(self) -> int:
        """Image pixels per token along each side: ``2 ** (len(encoder_ch_mult) - 1)``."""
        return 2 ** (len(self.encoder_ch_mult) - 1)

    @property
    def upsample_factor(self) -> int:
        """Output pixels per token along each side: ``2 ** (len(decoder_ch_mult) - 1)``."""
        return 2 ** (len(self.decoder_ch_mult) - 1)

    @property
    def codebook_size(self) -> int:
        """Number of codes, i.e. the size of the image-token vocabulary."""
        return self.quantize.codebook_size

    @property
    def embed_dim(self) -> int:
        """Dimension of one code vector."""
        return self.quantize.embed_dim

    # ------------------------------------------------------------------ input checks

    def _check_images(self, images: Tensor) -> None:
        if not isinstance(images, Tensor) or images.dim() != 4:
            got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"expected images as a 4-D float tensor [B, {self.in_channels}, H, W], got {got}")
        if not images.is_floating_point():
            raise ValueError(f"expected float images scaled to [-1, 1], got dtype {images.dtype}")
        _, c, h, w = images.shape
        if c != self.in_channels:
            raise ValueError(f"expected {self.in_channels} image channels [B, {self.in_channels}, H, W], got {c}")
        f = self.downsample_factor
        if h % f or w % f or h == 0 or w == 0:
            raise ValueError(
                f"image height and width must be positive multiples of the downsample factor {f}, "
                f"got {h}x{w}; "
                f"resize or crop to e.g. {max(f, h // f * f)}x{max(f, w // f * f)}"
            )

    def _check_tokens(self, tokens: Tensor) -> None:
        if not isinstance(tokens, Tensor) or tokens.dim() != 3:
            got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"expected tokens as a 3-D integer tensor [B, h, w], got {got}")
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise ValueError(f"expected integer token ids, got dtype {tokens.dtype}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.codebook_size):
            raise ValueError(
                f"token ids must lie in [0, {self.codebook_size}), got values in "
                f"[{int(tokens.min())}, {int(tokens.max())}]"
            )

    # ------------------------------------------------------------------ encoding

    def encode_latents(self, images: Tensor) -> Tensor:
        """Continuous latents before quantization, as compared with the codebook.

        Args:
            images: float ``[B, C, H, W]`` in ``[-1, 1]``; H and W multiples of :attr:`downsample_factor`.

        Returns:
            ``[B, embed_dim, H/f, W/f]``: encoder then ``quant_conv``, L2-normalised over the channel
            dimension when ``codebook_l2_norm`` (so a trainer can collect them for dead-code restarts).
        """
        self._check_images(images)
        z = self.quant_conv(self.encoder(images))
        return F.normalize(z, dim=1) if self.quantize.l2_norm else z

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Tokenize images.

        Args:
            images: float ``[B, C, H, W]`` in ``[-1, 1]``; H and W multiples of :attr:`downsample_factor`.

        Returns:
            Long tensor ``[B, H/f, W/f]`` of code ids (nearest code to each latent).

        Raises:
            ValueError: if ``images`` is not 4-D, has the wrong channel count, or a side that is not a
                multiple of :attr:`downsample_factor`.
        """
        z = self.encode_latents(images)  # [B, D, h, w]
        b, d, h, w = z.shape
        return self.quantize.nearest(z.permute(0, 2, 3, 1).reshape(-1, d)).reshape(b, h, w)

    # ------------------------------------------------------------------ decoding

    def quantize_tokens_to_latents(self, tokens: Tensor) -> Tensor:
        """Look token ids up in the codebook: ``[B, h, w]`` -> ``[B, embed_dim, h, w]``.

        Raises:
            ValueError: for tensors that are not 3-D integer ids in ``[0, codebook_size)``.
        """
        self._check_tokens(tokens)
        vectors = self.quantize.codebook()[tokens.long()]  # [B, h, w, D]
        return vectors.permute(0, 3, 1, 2).contiguous()

    def decode_latents(self, latents: Tensor) -> Tensor:
        """Decode quantized latents ``[B, embed_dim, h, w]`` (``post_quant_conv`` then the decoder)."""
        if latents.dim() != 4 or latents.shape[1] != self.embed_dim:
            raise ValueError(f"expected latents [B, {self.embed_dim}, h, w], got {tuple(latents.shape)}")
        return self.decoder(self.post_quant_conv(latents))

    def decode(self, tokens: Tensor) -> Tensor:
        """Decode token ids to images.

        Args:
            tokens: integer ``[B, h, w]`` with ids in ``[0, codebook_size)``.

        Returns:
            Float images ``[B, C, h*f, w*f]``. They lie roughly in ``[-1, 1]`` but are not clamped:
            clamp (and map to ``[0, 1]`` with ``(x + 1) / 2``) before saving or scoring.

        Raises:
            ValueError: for tensors that are not 3-D or ids out of range.
        """
        return self.decode_latents(self.quantize_tokens_to_latents(tokens))

    def decode_code(self, indices: Tensor, shape: Sequence[int]) -> Tensor:
        """LlamaGen-style decoding of flat ids: ``indices`` (any shape with ``B*h*w`` ids) and
        ``shape = (B, embed_dim, h, w)`` (channel-first, as upstream's ``decode_code``)."""
        if len(shape) != 4 or shape[1] != self.embed_dim:
            raise ValueError(f"shape must be (B, {self.embed_dim}, h, w), got {tuple(shape)}")
        b, _, h, w = (int(s) for s in shape)
        if indices.numel() != b * h * w:
            raise ValueError(f"{indices.numel()} indices do not fill shape {tuple(shape)} ({b * h * w} needed)")
        return self.decode(indices.reshape(b, h, w))

    # ------------------------------------------------------------------ training

    def forward(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Reconstruct images for training, with a straight-through estimator through the codebook.

        Args:
            images: float ``[B, C, H, W]`` in ``[-1, 1]``.

        Returns:
            ``(recon, losses)``: ``recon`` ``[B, C, H', W']`` and a dict with scalar tensors
            ``vq_loss`` (codebook loss, ``mean((e - sg[z])^2)``), ``commit_loss``
            (``commit_loss_beta * mean((sg[e] - z)^2)``), ``entropy_loss`` (``entropy_loss_ratio``
            times the entropy loss; 0 when the ratio is 0) and ``codebook_usage`` (fraction of codes
            used in the batch; a detached statistic, not a loss). With ``codebook_l2_norm`` the
            losses are computed on the normalised vectors, as LlamaGen does. Add the reconstruction
            (and perceptual / adversarial) loss yourself.
        """
        self._check_images(images)
        z = self.quant_conv(self.encoder(images))
        z_q, _, losses = self.quantize(z, self.commit_loss_beta, self.entropy_loss_ratio)
        return self.decode_latents(z_q), losses

    def count_code_usage(self, tokens: Tensor) -> Tensor:
        """Histogram of token ids: ``[...]`` -> long ``[codebook_size]``, for :meth:`restart_dead_codes`."""
        return torch.bincount(tokens.detach().flatten().long(), minlength=self.codebook_size)

    @torch.no_grad()
    def restart_dead_codes(
        self,
        latents: Tensor,
        usage_counts: Tensor,
        threshold: int = 0,
        generator: torch.Generator | None = None,
    ) -> int:
        """Re-initialise rarely used codes from random encoder latents.

        Codes whose usage count is ``<= threshold`` are replaced by latents drawn without replacement
        (with replacement when there are fewer latents than dead codes), normalised when
        ``codebook_l2_norm``. Optimizer state for those rows is left as is.

        Args:
            latents: ``[N, embed_dim]`` latents, e.g. :meth:`encode_latents` output flattened with
                ``z.permute(0, 2, 3, 1).reshape(-1, embed_dim)``.
            usage_counts: ``[codebook_size]`` counts (see :meth:`count_code_usage`).
            threshold: a code is dead when its count is at most this.
            generator: random source for picking latents.

        Returns:
            The number of codes restarted.

        Raises:
            ValueError: on mis-shaped inputs, or dead codes but no latents.
        """
        k, d = self.codebook_size, self.embed_dim
        if latents.dim() != 2 or latents.shape[1] != d:
            raise ValueError(f"latents must be [N, {d}], got {tuple(latents.shape)}")
        if usage_counts.shape != (k,):
            raise ValueError(f"usage_counts must be [{k}], got {tuple(usage_counts.shape)}")
        dead = (usage_counts.to(self.quantize.embedding.weight.device) <= threshold).nonzero().flatten()
        n_dead, n = dead.numel(), latents.shape[0]
        if n_dead == 0:
            return 0
        if n == 0:
            raise ValueError(f"{n_dead} dead codes but no latents to restart them from")
        device = generator.device if generator is not None else latents.device
        if n >= n_dead:
            pick = torch.randperm(n, generator=generator, device=device)[:n_dead]
        else:
            pick = torch.randint(n, (n_dead,), generator=generator, device=device)
        weight = self.quantize.embedding.weight
        new = latents.detach()[pick.to(latents.device)].to(weight)
        weight[dead] = self.quantize.prepare(new)
        return int(n_dead)


# ---------------------------------------------------------------------- registered presets


def _build(preset: dict[str, Any], kwargs: dict[str, Any]) -> VQModel:
    return VQModel(**{**preset, **kwargs})


@register_model("llamagen_vq_16", kind="tokenizer")
def llamagen_vq_16(**kwargs: Any) -> VQModel:
    """LlamaGen VQ-16: 16x downsampling, codebook 16384 x 8, ch 128, ch_mult (1, 1, 2, 2, 4) (~72M)."""
    return _build(dict(encoder_ch_mult=[1, 1, 2, 2, 4], decoder_ch_mult=[1, 1, 2, 2, 4]), kwargs)


@register_model("llamagen_vq_8", kind="tokenizer")
def llamagen_vq_8(**kwargs: Any) -> VQModel:
    """LlamaGen VQ-8: 8x downsampling, codebook 16384 x 8, ch 128, ch_mult (1, 2, 2, 4)."""
    return _build(dict(encoder_ch_mult=[1, 2, 2, 4], decoder_ch_mult=[1, 2, 2, 4]), kwargs)


# The small family the embedded (CPU-trained) tokenizers use: a config sets the sizes; the defaults are tiny.
_SMALL_VQ = dict(
    codebook_size=64, codebook_embed_dim=4, encoder_ch_mult=[1, 2, 2], decoder_ch_mult=[1, 2, 2], z_channels=16,
    ch=32, num_res_blocks=1,
)  # fmt: skip


@register_model("embedded_vq", kind="tokenizer")
def embedded_vq(**kwargs: Any) -> VQModel:
    """Small VQ of the embedded models (sized by the config; by default 4x down, codebook 64 x 4, ch 32)."""
    return _build(_SMALL_VQ, kwargs)


@register_model("test_vq", kind="tokenizer")
def test_vq(**kwargs: Any) -> VQModel:
    """Tiny VQ for tests: 4x downsampling, codebook 64 x 4, ch 32, one resnet block per level."""
    return _build(_SMALL_VQ, kwargs)


test_vq.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite the name


# ---------------------------------------------------------------------- upstream importer

USAGE_KEY = "quantize.codebook_used"
CODEBOOK_KEY = "quantize.embedding.weight"


def import_llamagen_vq(
    path: str | Path, name: str = "llamagen_vq_16", weights: str = "model", **kwargs: Any
) -> VQModel:
    """Load an upstream LlamaGen VQ checkpoint (``vq_ds16_c2i.pt`` etc.) into a registered tokenizer.

    The file is read with ``torch.load(weights_only=True)``; a ``{"model": state_dict}`` training
    wrapper is unwrapped (LlamaGen saves the discriminator and optimizers beside ``"model"``, not
    inside it, so no keys need ignoring). Unless given in ``kwargs``, ``codebook_size`` and
    ``codebook_embed_dim`` are read from ``quantize.embedding.weight`` and ``codebook_show_usage``
    from the presence of ``quantize.codebook_used`` (upstream's ``--codebook-size`` /
    ``--codebook-embed-dim`` flags). Every other key must match exactly.

    Args:
        path: the ``.pt`` file.
        name: registered tokenizer preset (``llamagen_vq_16`` or ``llamagen_vq_8``).
        weights: ``"model"`` (default: the trained weights, what LlamaGen's sampling scripts load)
            or ``"ema"`` (the ``ema`` entry ``vq_train.py --ema`` saves beside them).
        **kwargs: constructor overrides for the preset.

    Returns:
        The model in eval mode; save it natively with ``save_pretrained``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: for ``weights="ema"`` on a file without EMA weights.
        CheckpointMismatchError: naming every missing, unexpected or mis-shaped key.
    """
    state = read_torch_checkpoint(path, weights=weights)
    codebook = state.get(CODEBOOK_KEY)
    if codebook is not None and codebook.dim() == 2:
        kwargs.setdefault("codebook_size", int(codebook.shape[0]))
        kwargs.setdefault("codebook_embed_dim", int(codebook.shape[1]))
    kwargs.setdefault("codebook_show_usage", USAGE_KEY in state)
    model = MODELS.create(name, **kwargs)
    if not isinstance(model, VQModel):
        raise ValueError(f"{name!r} is not a VQ tokenizer; use llamagen_vq_16 or llamagen_vq_8")
    # A model built without the usage buffer may still read a checkpoint that has it: it is a
    # training statistic, not a weight.
    ignore = (USAGE_KEY,) if model.quantize.codebook_used is None else ()
    load_state_dict_strict(model, state, source=str(path), ignore=ignore)
    return model.eval()
