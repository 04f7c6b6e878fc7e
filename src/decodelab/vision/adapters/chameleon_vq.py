"""Chameleon's VQ-GAN image decoder (codes -> pixels) for the Anole and Lumina-mGPT adapters.

Chameleon Team, "Chameleon: Mixed-Modal Early-Fusion Foundation Models", arXiv:2405.09818. The
image tokenizer is a taming-transformers VQGAN (Esser et al., arXiv:2012.09841): facebookresearch/
chameleon ``chameleon/inference/vqgan.py`` and ``image_tokenizer.py`` (@ e3b711e) and Lumina-mGPT's
copy ``lumina_mgpt/model/chameleon_vae_ori/`` (Alpha-VLLM/Lumina-mGPT @ 7f17c19) were read for
facts, not copied. transformers 5.24 ships the encoder half only (``ChameleonVQVAE``: encoder,
``quant_conv``, ``quantize``, ``post_quant_conv``; its conversion script skips every ``decoder`` key
of ``vqgan.ckpt``), so Anole / Lumina-mGPT images need this module.

Facts this module rests on:

- The release is ``tokenizer/vqgan.ckpt`` (a Lightning checkpoint, weights under ``"state_dict"``)
  and ``tokenizer/vqgan.yaml`` (``model.params``: ``n_embed`` 8192, ``embed_dim`` 256 and
  ``ddconfig``: ``ch`` 128, ``ch_mult`` [1, 1, 2, 2, 4], ``num_res_blocks`` 2,
  ``attn_resolutions`` [], ``z_channels`` 256, ``resolution`` 512, ``out_ch`` 3, ``double_z``
  false, ``dropout`` 0). Five levels are four x2 up-samplings: 16 px per code, so Anole's 32 x 32
  codes are 512 px and Lumina-mGPT's 48 x 48 are 768 px (the same VQ-GAN, run on a larger grid).
- Decoding (``ImageTokenizer.pil_from_img_toks``): codebook rows (plain ``nn.Embedding``, no
  normalisation) ``[B, 256, h, w]`` -> ``post_quant_conv`` (1x1, 256 -> 256) -> decoder; pixels
  in ``[-1, 1]`` (clamped before conversion).
- Decoder keys (taming's ``Decoder``): ``decoder.conv_in``; ``decoder.mid.{block_1,attn_1,block_2}``;
  ``decoder.up.{i}.block.{j}`` (``num_res_blocks + 1`` resnet blocks per level),
  ``decoder.up.{i}.attn.{j}`` (only at levels whose resolution is in ``attn_resolutions``: none for
  Chameleon), ``decoder.up.{i}.upsample.conv`` (every level but ``i = 0``); ``decoder.norm_out``,
  ``decoder.conv_out``. ``up[i]`` is the level of width ``ch * ch_mult[i]``, ``i = 0`` the full
  resolution, and the forward runs ``i`` from the last level down to 0. No ``temb_proj`` (the
  time embedding has 0 channels) and no ``tanh`` on the output.
- Other keys of the file: ``encoder.*`` and ``quant_conv.*`` (the half transformers loads into
  ``model.vqmodel``), ``quantize.embedding.weight`` and ``post_quant_conv.*`` (here and in
  transformers). A taming training checkpoint may also carry ``loss.*`` (LPIPS and discriminator);
  upstream loads with ``strict=False``, so they are skipped here by name.

Why a module here rather than a setting of LlamaGen's ``vq_layers.Decoder``: the blocks are the
same (GroupNorm 32 / eps 1e-6, swish, pre-activation resnet blocks with a 1x1 ``nin_shortcut``,
single-head 1x1-conv attention scaled by ``1/sqrt(C)``, nearest x2 + 3x3 up-sampling) and are
reused from :mod:`decodelab.vision.tokenizers.vq_layers`; what differs is the arrangement.
LlamaGen's decoder always puts attention after every block of its lowest level and names levels
from the lowest resolution (``conv_blocks.{i}.res.{j}``, ``mid.{0,1,2}``), while Chameleon's has
attention by resolution (none at all) and taming's names (``up.{i}.block.{j}``, ``mid.block_1``).
The arrangement below is that second layout, so the release loads without renaming.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decodelab.config import register_to_config
from decodelab.hub import PretrainedMixin, load_state_dict_strict, read_torch_checkpoint
from decodelab.registry import register_architecture
from decodelab.vision.tokenizers.vq_layers import (
    NORM_GROUPS,
    AttnBlock,
    ResnetBlock,
    Upsample,
    VectorQuantizer,
    group_norm,
)

__all__ = [
    "CHAMELEON_VQ_CONFIG",
    "VQ_CHECKPOINT",
    "VQ_CONFIG_FILE",
    "ChameleonVQDecoder",
    "find_chameleon_vq",
    "import_chameleon_vq",
    "read_chameleon_vq_yaml",
]

VQ_CHECKPOINT, VQ_CONFIG_FILE = "vqgan.ckpt", "vqgan.yaml"
#: Where a checkpoint directory may hold the release's files (facebook/chameleon keeps them in ``tokenizer/``).
VQ_SUBDIRS = (".", "tokenizer")
#: The released VQ-GAN's decoder side (``vqgan.yaml``).
CHAMELEON_VQ_CONFIG: dict[str, Any] = dict(
    codebook_size=8192, embed_dim=256, z_channels=256, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
    attn_resolutions=(), resolution=512, out_channels=3, attn_type="vanilla",
)  # fmt: skip
#: Keys of ``vqgan.ckpt`` that belong to the encoder half (loaded by transformers), not to this module.
ENCODER_PREFIXES = ("encoder.", "quant_conv.")
#: Training-only entries of a taming checkpoint (perceptual loss, discriminator), skipped as upstream does.
TRAINING_PREFIXES = ("loss.",)
ATTN_TYPES = ("vanilla", "none")


class _Mid(nn.Module):
    """The bottleneck: ``block_1``, ``attn_1`` (absent for ``attn_type="none"``), ``block_2``."""

    def __init__(self, channels: int, attention: bool, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels) if attention else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _UpLevel(nn.Module):
    """One decoder level: ``block`` (resnet blocks), ``attn`` (one per block, or none), ``upsample``."""

    def __init__(
        self, in_channels: int, out_channels: int, n_blocks: int, attention: bool, upsample: bool, dropout: float
    ) -> None:
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(in_channels if j == 0 else out_channels, out_channels, dropout) for j in range(n_blocks)
        )
        self.attn = nn.ModuleList(AttnBlock(out_channels) for _ in range(n_blocks if attention else 0))
        self.upsample = Upsample(out_channels) if upsample else None

    def forward(self, x: Tensor) -> Tensor:
        for j, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[j](x)
        return x if self.upsample is None else self.upsample(x)


class TamingDecoder(nn.Module):
    """taming-transformers' decoder layout: ``[B, z_channels, h, w]`` -> ``[B, out_channels, h*f, w*f]``.

    ``f = 2 ** (len(ch_mult) - 1)``. Level ``i`` (``up[i]``) has width ``ch * ch_mult[i]`` and
    resolution ``resolution / 2**i``; it holds attention blocks when that resolution is in
    ``attn_resolutions``.
    """

    def __init__(
        self,
        out_channels: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        z_channels: int,
        attn_resolutions: Sequence[int],
        resolution: int,
        mid_attention: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = [ch * m for m in ch_mult]
        n = len(widths)
        self.conv_in = nn.Conv2d(z_channels, widths[-1], 3, padding=1)
        self.mid = _Mid(widths[-1], mid_attention, dropout)
        attn = {int(r) for r in attn_resolutions}
        self.up = nn.ModuleList(
            _UpLevel(widths[min(i + 1, n - 1)], widths[i], num_res_blocks + 1, resolution // 2**i in attn, i != 0,
                     dropout)
            for i in range(n)
        )  # fmt: skip
        self.norm_out = group_norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):  # lowest resolution first
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


@register_architecture
class ChameleonVQDecoder(nn.Module, PretrainedMixin):
    """Chameleon's VQ-GAN decoder half: codes ``[B, h, w]`` -> images ``[B, 3, 16h, 16w]`` in about ``[-1, 1]``.

    Holds ``quantize.embedding`` (the codebook), ``post_quant_conv`` and ``decoder`` under the keys
    of the released ``vqgan.ckpt`` (see the module docstring). Defaults are the release's
    (:data:`CHAMELEON_VQ_CONFIG`). Calling the module decodes (it is the ``vq_decoder`` of
    :class:`~decodelab.vision.adapters.chameleon.ChameleonAdapter`).

    Args:
        codebook_size: codes ``K`` (``n_embed``).
        embed_dim: code dimension.
        z_channels: decoder input width (``post_quant_conv`` maps ``embed_dim`` to it).
        ch, ch_mult, num_res_blocks: decoder widths (``ch * ch_mult[i]``) and depth (``num_res_blocks + 1``
            resnet blocks per level, as taming).
        attn_resolutions: feature resolutions with attention blocks (Chameleon: none).
        resolution: the training image size (only places ``attn_resolutions``).
        out_channels: image channels (``out_ch``).
        attn_type: ``"vanilla"`` (attention in the bottleneck, Chameleon) or ``"none"``.

    Raises:
        ValueError: on sizes that cannot build a network.
    """

    @register_to_config
    def __init__(
        self,
        *,
        codebook_size: int = 8192,
        embed_dim: int = 256,
        z_channels: int = 256,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (),
        resolution: int = 512,
        out_channels: int = 3,
        attn_type: str = "vanilla",
    ) -> None:
        super().__init__()
        if attn_type not in ATTN_TYPES:
            raise ValueError(f"attn_type must be one of {ATTN_TYPES}, got {attn_type!r}")
        for label, value in (("codebook_size", codebook_size), ("embed_dim", embed_dim), ("z_channels", z_channels),
                             ("ch", ch), ("resolution", resolution), ("out_channels", out_channels)):  # fmt: skip
            if int(value) < 1:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        if int(num_res_blocks) < 0:
            raise ValueError(f"num_res_blocks must be >= 0, got {num_res_blocks!r}")
        if not ch_mult or any(int(m) < 1 for m in ch_mult):
            raise ValueError(f"ch_mult must be a non-empty list of positive integers, got {list(ch_mult)!r}")
        widths = [ch * int(m) for m in ch_mult]
        if any(w % NORM_GROUPS for w in widths):
            raise ValueError(
                f"every width ch * ch_mult[i] must be a multiple of {NORM_GROUPS} (GroupNorm), got {widths}"
            )
        self.ch_mult = tuple(int(m) for m in ch_mult)
        self.quantize = VectorQuantizer(codebook_size, embed_dim, l2_norm=False, show_usage=False)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.decoder = TamingDecoder(out_channels, ch, self.ch_mult, num_res_blocks, z_channels, attn_resolutions,
                                     resolution, mid_attention=attn_type == "vanilla")  # fmt: skip

    @property
    def codebook_size(self) -> int:
        return self.quantize.codebook_size

    @property
    def embed_dim(self) -> int:
        return self.quantize.embed_dim

    @property
    def upsample_factor(self) -> int:
        """Pixels per code along each side: ``2 ** (len(ch_mult) - 1)`` (16 for Chameleon)."""
        return 2 ** (len(self.ch_mult) - 1)

    def quantize_tokens_to_latents(self, tokens: Tensor) -> Tensor:
        """Codebook rows of ``tokens [B, h, w]``: ``[B, embed_dim, h, w]`` (upstream ``get_codebook_entry``)."""
        if not isinstance(tokens, Tensor) or tokens.dim() != 3 or tokens.is_floating_point():
            got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"expected integer codes [B, h, w], got {got}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {self.codebook_size}), got [{int(tokens.min())}, {int(tokens.max())}]"
            )
        w = self.quantize.embedding.weight
        return w[tokens.to(w.device).long()].permute(0, 3, 1, 2).contiguous()

    def decode_latents(self, latents: Tensor) -> Tensor:
        """Quantized latents ``[B, embed_dim, h, w]`` -> images (``post_quant_conv``, then the decoder)."""
        if latents.dim() != 4 or latents.shape[1] != self.embed_dim:
            raise ValueError(f"expected latents [B, {self.embed_dim}, h, w], got {tuple(latents.shape)}")
        return self.decoder(self.post_quant_conv(latents))

    def decode(self, tokens: Tensor) -> Tensor:
        """Codes ``[B, h, w]`` -> images ``[B, out_channels, h*f, w*f]``, not clamped (upstream clamps to [-1, 1])."""
        return self.decode_latents(self.quantize_tokens_to_latents(tokens))

    def forward(self, tokens: Tensor) -> Tensor:
        return self.decode(tokens)

    @classmethod
    def from_transformers(
        cls, vqvae: nn.Module, decoder_state: Mapping[str, Tensor] | str | Path, **overrides: Any
    ) -> ChameleonVQDecoder:
        """Build from transformers' ``ChameleonVQVAE`` (codebook, ``post_quant_conv``, sizes) plus decoder weights.

        The keys both hold (``quantize.embedding.weight``, ``post_quant_conv.*``) come from ``vqvae``
        (e.g. ``model.model.vqmodel`` of a ``ChameleonForConditionalGeneration``); ``decoder.*``
        comes from ``decoder_state`` (a state dict, or a ``vqgan.ckpt``-style file). When
        ``decoder_state`` also holds an overlapping key its value must equal the transformers one:
        a different codebook means a decoder from another VQ-GAN.

        Args:
            vqvae: a transformers ``ChameleonVQVAE``.
            decoder_state: the ``decoder.*`` weights (other keys as in :func:`import_chameleon_vq`).
            **overrides: constructor arguments the transformers config does not hold (``out_channels``).

        Raises:
            CheckpointMismatchError: naming every missing, unexpected or mis-shaped key.
            ValueError: when an overlapping key differs between the two sources.
        """
        cfg = vqvae.config
        if getattr(cfg, "double_latent", False):
            raise ValueError("a ChameleonVQVAE with double_latent=True is not Chameleon's VQ-GAN")
        kwargs = dict(
            codebook_size=cfg.num_embeddings, embed_dim=cfg.embed_dim, z_channels=cfg.latent_channels,
            ch=cfg.base_channels, ch_mult=tuple(cfg.channel_multiplier), num_res_blocks=cfg.num_res_blocks,
            attn_resolutions=tuple(cfg.attn_resolutions or ()), resolution=cfg.resolution,
            attn_type="vanilla" if cfg.attn_type == "vanilla" else "none",
        )  # fmt: skip
        kwargs.update(overrides)
        model = cls(**kwargs)
        if isinstance(decoder_state, (str, Path)):
            source, state = str(decoder_state), read_torch_checkpoint(decoder_state)
        else:
            source, state = "decoder_state", dict(decoder_state)
        own = vqvae.state_dict()
        needed = [k for k in model.state_dict() if not k.startswith("decoder.")]
        missing = [k for k in needed if k not in own]
        if missing:
            raise ValueError(f"the transformers VQ model lacks {', '.join(missing)}")
        shared = {k: own[k] for k in needed}
        differ = [k for k in shared if k in state and not _same(state[k], shared[k])]
        if differ:
            raise ValueError(
                f"{source} and the transformers ChameleonVQVAE disagree on {', '.join(sorted(differ))}: the decoder "
                "weights come from another VQ-GAN than the model's"
            )
        merged = {**_decoder_side(state), **shared}
        load_state_dict_strict(model, merged, source=f"{source} + transformers ChameleonVQVAE")
        return model.eval()


def _same(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.float(), b.float().to(a.device))


def _decoder_side(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The keys this module holds; the encoder half and training-only entries of the release are set aside."""
    return {k: v for k, v in state.items() if not k.startswith(ENCODER_PREFIXES + TRAINING_PREFIXES)}


def read_chameleon_vq_yaml(path: str | Path) -> dict[str, Any]:
    """Constructor arguments of :class:`ChameleonVQDecoder` from a release ``vqgan.yaml``.

    Reads ``model.params.{n_embed, embed_dim}`` and ``model.params.ddconfig.{ch, ch_mult,
    num_res_blocks, attn_resolutions, z_channels, resolution, out_ch}`` (``attn_type`` if present).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: for a file that is not a taming VQ-GAN config, or ``double_z: true``.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VQ-GAN config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
        params = data["model"]["params"]
        dd = params["ddconfig"]
        out = dict(
            codebook_size=int(params["n_embed"]), embed_dim=int(params["embed_dim"]), z_channels=int(dd["z_channels"]),
            ch=int(dd["ch"]), ch_mult=tuple(int(m) for m in dd["ch_mult"]), num_res_blocks=int(dd["num_res_blocks"]),
            attn_resolutions=tuple(int(r) for r in dd.get("attn_resolutions") or ()),
            resolution=int(dd["resolution"]), out_channels=int(dd.get("out_ch", 3)),
        )  # fmt: skip
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"{path} is not a taming VQ-GAN config (expected model.params.{{n_embed, embed_dim, ddconfig}}): {e!r}"
        ) from e
    if dd.get("double_z"):
        raise ValueError(f"{path}: double_z is true, which Chameleon's VQ-GAN is not")
    if "attn_type" in dd:
        out["attn_type"] = str(dd["attn_type"])
    return out


def import_chameleon_vq(path: str | Path, config: str | Path | None = None, **kwargs: Any) -> ChameleonVQDecoder:
    """Load the decoder half of a released Chameleon ``vqgan.ckpt`` strictly (read with ``weights_only=True``).

    Sizes come from, in order: ``kwargs``; ``config`` (a ``vqgan.yaml``; default: ``vqgan.yaml``
    beside ``path`` when it exists); the release's :data:`CHAMELEON_VQ_CONFIG`. ``codebook_size``
    and ``embed_dim`` are read from ``quantize.embedding.weight`` when neither sets them.

    ``encoder.*`` and ``quant_conv.*`` (the half transformers' ``ChameleonVQVAE`` loads) and
    ``loss.*`` (training only) are set aside by prefix; every other key must match this module
    exactly. TorchScript or other code-carrying archives are refused before anything is read.

    Returns:
        The decoder in eval mode (float32 as stored); save it natively with ``save_pretrained``.

    Raises:
        FileNotFoundError: when ``path`` (or an explicit ``config``) does not exist.
        ValueError: for a code-carrying archive or a file that is not a weights-only state dict.
        CheckpointMismatchError: naming every missing, unexpected or mis-shaped key.
    """
    path = Path(path)
    state = read_torch_checkpoint(path)  # refuses code archives, weights_only=True, unwraps "state_dict"
    cfg = dict(CHAMELEON_VQ_CONFIG)
    yaml_path = Path(config) if config is not None else path.with_name(VQ_CONFIG_FILE)
    if config is not None or yaml_path.is_file():
        cfg.update(read_chameleon_vq_yaml(yaml_path))
    else:
        codebook = state.get("quantize.embedding.weight")
        if codebook is not None and codebook.dim() == 2:
            cfg.update(codebook_size=int(codebook.shape[0]), embed_dim=int(codebook.shape[1]))
    cfg.update(kwargs)
    model = ChameleonVQDecoder(**cfg)
    load_state_dict_strict(model, _decoder_side(state), source=str(path))
    return model.eval()


def find_chameleon_vq(directory: str | Path) -> Path | None:
    """``vqgan.ckpt`` in ``directory`` or its ``tokenizer/`` folder (the release's layout), else ``None``."""
    for sub in VQ_SUBDIRS:
        candidate = Path(directory) / sub / VQ_CHECKPOINT
        if candidate.is_file():
            return candidate
    return None
