"""A Very Deep VAE (Child, ICLR 2021, arXiv 2011.10650) in openai/vdvae's parameter layout, for Brain-Diffuser.

Brain-Diffuser's stage 1 (Ozcelik & VanRullen 2023, ``scripts/vdvae_extract_features.py`` and
``scripts/vdvae_reconstruct_images.py``) uses openai/vdvae's ImageNet-64 model
(``imagenet64-iter-1600000-model-ema.th``) in two ways, both implemented here:

- **encode** (:meth:`VeryDeepVAE.encode_latents`): the encoder runs bottom-up, the decoder runs
  top-down with the posterior, and the ``z`` of the first 31 decoder blocks is kept, each flattened
  (``[B, zdim, r, r] -> [B, zdim r^2]``) and concatenated in block order: 2 x 16 + 4 x 256 +
  8 x 1,024 + 16 x 4,096 + 1 x 16,384 = 91,168 values. That ``z`` is upstream's
  ``draw_gaussian_diag_samples(qm, qv)``, a **posterior sample** ``qm + exp(qv) * eps`` (``qv`` is a
  log standard deviation), so Brain-Diffuser's targets are stochastic; ``sample=False`` keeps the
  posterior mean ``qm`` instead (a decodelab option, not Brain-Diffuser's).
- **decode** (:meth:`VeryDeepVAE.decode_latents`): upstream's ``forward_manual_latents``: the first
  blocks take the given ``z``, the others draw ``z`` from their prior ``pm + t exp(pv) eps``
  (Brain-Diffuser passes ``t=None``, i.e. temperature 1; upstream implements ``t`` as
  ``pv + log t``, the same value), then the output net **samples** the discretized mixture of
  logistics as upstream's ``DmolNet.sample`` (Gumbel-max component choice, a logistic draw
  clipped to [-1, 1], channels coupled R -> G -> B). ``sample_output=False`` (a decodelab addition,
  not upstream) takes the most probable component and its location instead, which with
  ``temperature=0`` makes decoding deterministic without a generator.

Pixel scaling (upstream ``data.py`` ``set_up_data``, branch ``imagenet64``, repeated in
Brain-Diffuser's ``vdvae/model_utils.py``): the encoder input is ``(x + shift) * scale`` with ``x``
the 0..255 pixel value, ``shift = -115.92961967`` and ``scale = 1 / 69.37404``; here images come in
[0, 1] and ``x = 255 * image``. The output net's sample ``s`` in [-1, 1] becomes
``(s + 1) * 127.5`` clipped to 0..255 and cast to ``uint8`` upstream; here ``(s + 1) / 2`` in [0, 1]
as float (``floor(255 * out)`` is upstream's ``uint8``).

Parameter names equal upstream's state-dict keys (``encoder.in_conv``, ``encoder.enc_blocks.i.c1..c4``,
``decoder.dec_blocks.i.{enc,prior,resnet}.c1..c4``, ``decoder.dec_blocks.i.z_proj``,
``decoder.bias_xs.j``, ``decoder.out_net.out_conv``, ``decoder.gain``, ``decoder.bias``), so
upstream files load strictly (:func:`load_vdvae`). Upstream ``train_helpers.save_model`` stores
``ema_vae.state_dict()`` (plain keys) in ``*-model-ema.th`` and the DDP-wrapped model's
(``module.``-prefixed keys) in ``*-model.th``; both load. openai/vdvae was read for these facts
(``vae.py``, ``vae_helpers.py``, ``hps.py``, ``data.py``, ``train_helpers.py``); no code was taken.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decodelab.hub import load_state_dict_strict, read_torch_checkpoint

__all__ = [
    "VDVAE_IMAGENET64_FILE",
    "VDVAE_IMAGENET64_URL",
    "VDVAE_PRESETS",
    "VDVAEConfig",
    "VeryDeepVAE",
    "load_vdvae",
    "parse_layer_string",
]

VDVAE_IMAGENET64_FILE = "imagenet64-iter-1600000-model-ema.th"
#: Where openai/vdvae's README ("ImageNet 64") publishes the file; decodelab never downloads it.
VDVAE_IMAGENET64_URL = (
    "https://openaipublic.blob.core.windows.net/very-deep-vaes-assets/vdvae-assets-2/" + VDVAE_IMAGENET64_FILE
)

#: ``None`` (global RNG), one generator for the batch, or one generator per row (a row's draws then
#: do not depend on the rest of its batch).
Generators = torch.Generator | Sequence[torch.Generator] | None


# ------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class VDVAEConfig:
    """A VDVAE's architecture (upstream ``hps.py`` names) plus its pixel scaling and Brain-Diffuser's layer count.

    Attributes:
        image_size, image_channels: the image side and channels (the output net models RGB: 3).
        width: channels of every resolution not named in ``custom_width_str``.
        zdim: latent channels per decoder block.
        enc_blocks: encoder blocks, ``"<res>x<n>"`` (n residual blocks) or ``"<res>d<k>"`` (a residual
            block followed by ``k`` x ``k`` average pooling).
        dec_blocks: decoder blocks, ``"<res>x<n>"`` or ``"<res>m<low>"`` (a block that first adds the
            nearest-upsampled state of resolution ``low``).
        bottleneck_multiple: the inner width of a block is ``int(width * bottleneck_multiple)``.
        custom_width_str: ``"<res>:<width>,..."`` overrides (a lower resolution may not be narrower).
        no_bias_above: resolutions up to this one start from a learned state (``bias_xs``), others from zeros.
        num_mixtures: logistic mixture components of the output net.
        shift, scale: encoder input ``(pixel_0_255 + shift) * scale``.
        latent_layers: how many top-down blocks' ``z`` form the latent vector (Brain-Diffuser: 31).
    """

    image_size: int = 64
    image_channels: int = 3
    width: int = 512
    zdim: int = 16
    enc_blocks: str = "64x11,64d2,32x20,32d2,16x9,16d2,8x8,8d2,4x7,4d4,1x5"
    dec_blocks: str = "1x2,4m1,4x3,8m4,8x7,16m8,16x15,32m16,32x31,64m32,64x12"
    bottleneck_multiple: float = 0.25
    custom_width_str: str = ""
    no_bias_above: int = 64
    num_mixtures: int = 10
    shift: float = -115.92961967
    scale: float = 1.0 / 69.37404
    latent_layers: int = 31

    def widths(self) -> dict[int, int]:
        """Channels per resolution (every resolution of the block strings)."""
        custom = {}
        for item in filter(None, self.custom_width_str.split(",")):
            res, w = item.split(":")
            custom[int(res)] = int(w)
        resos = {r for r, _ in parse_layer_string(self.enc_blocks) + parse_layer_string(self.dec_blocks)}
        resos |= {r // k for r, k in parse_layer_string(self.enc_blocks) if k}
        return {r: custom.get(r, self.width) for r in sorted(resos | set(custom))}

    def latent_shapes(self) -> list[tuple[int, int, int]]:
        """``(zdim, r, r)`` of the first ``latent_layers`` decoder blocks, in order."""
        return [(self.zdim, r, r) for r, _ in parse_layer_string(self.dec_blocks)[: self.latent_layers]]

    @property
    def latent_dim(self) -> int:
        """Length of the flat latent vector (91,168 for ``imagenet64``)."""
        return sum(c * h * w for c, h, w in self.latent_shapes())

    def validate(self) -> None:
        """Raise ``ValueError`` for block strings the network cannot be built from."""
        enc, dec, w = parse_layer_string(self.enc_blocks), parse_layer_string(self.dec_blocks), self.widths()
        if self.image_channels != 3:
            raise ValueError(f"the output net models RGB images: image_channels must be 3, got {self.image_channels}")
        if not enc or enc[0][0] != self.image_size or not dec or dec[-1][0] != self.image_size:
            raise ValueError(f"enc_blocks must start and dec_blocks end at image_size {self.image_size}")
        if w[self.image_size] != self.width:
            raise ValueError("custom_width_str may not change the width of image_size (the output net uses width)")
        for res, k in enc:
            if k and w[res // k] < w[res]:
                raise ValueError(f"width of {res // k} ({w[res // k]}) is below that of {res} ({w[res]})")
        for res, low in dec:
            if low and (res % low or w[low] < w[res]):
                raise ValueError(f"mixin {res}m{low}: {low} must divide {res} and be at least as wide")
        if not 0 <= self.latent_layers <= len(dec):
            raise ValueError(f"latent_layers must be in [0, {len(dec)}], got {self.latent_layers}")


#: ``imagenet64``: upstream ``hps.py`` preset ``imagenet64`` (``i64``, inheriting ``i32``: width 512,
#: zdim 16; argument defaults: bottleneck 0.25, no custom widths, no_bias_above 64, 10 mixtures),
#: ``data.py`` scaling, Brain-Diffuser's 31 layers. ``test``: 16 px, width 8, with a down-sampling
#: block per resolution, mixins, 1 x 1 blocks at resolution 1, wider low resolutions and a
#: resolution without ``bias_xs``. ``test-imagenet64-layout``: ImageNet-64's block strings and
#: zdim at width 16 (the 91,168-value latent of a model that runs in milliseconds).
VDVAE_PRESETS: dict[str, VDVAEConfig] = {
    "imagenet64": VDVAEConfig(),
    "test": VDVAEConfig(
        image_size=16,
        width=8,
        zdim=2,
        enc_blocks="16x1,16d2,8x1,8d2,4x1,4d4,1x1",
        dec_blocks="1x1,4m1,4x1,8m4,8x1,16m8,16x1",
        custom_width_str="1:16,4:12",
        no_bias_above=8,
        num_mixtures=2,
        latent_layers=4,
    ),
    "test-imagenet64-layout": VDVAEConfig(width=16),
}


def parse_layer_string(s: str) -> list[tuple[int, int | None]]:
    """``"64x2,64d2,4m1,1"`` -> ``[(64, None), (64, None), (64, 2), (4, 1), (1, None)]`` (upstream's format)."""
    out: list[tuple[int, int | None]] = []
    for item in filter(None, (p.strip() for p in s.split(","))):
        try:
            if "x" in item:
                res, n = item.split("x")
                out += [(int(res), None)] * int(n)
            elif "m" in item or "d" in item:
                res, k = item.split("m" if "m" in item else "d")
                out.append((int(res), int(k)))
            else:
                out.append((int(item), None))
        except ValueError:
            raise ValueError(
                f"bad block {item!r} in {s!r}: expected <res>x<n>, <res>d<k>, <res>m<low> or <res>"
            ) from None
    return out


def _resolve(config: VDVAEConfig | str) -> VDVAEConfig:
    if isinstance(config, VDVAEConfig):
        return config
    if config not in VDVAE_PRESETS:
        raise ValueError(f"unknown VDVAE preset {config!r}; known: {sorted(VDVAE_PRESETS)}")
    return VDVAE_PRESETS[config]


# ------------------------------------------------------------------------------------ randomness
def _draw(kind: str, shape: Sequence[int], generator: Generators, like: Tensor) -> Tensor:
    """``randn`` or ``rand`` of ``shape`` (batch first) on ``like``'s device and dtype, per-row when given a list."""
    fn = torch.randn if kind == "normal" else torch.rand
    if generator is None:
        return fn(tuple(shape), device=like.device).to(like.dtype)
    if isinstance(generator, torch.Generator):
        return fn(tuple(shape), generator=generator, device=generator.device).to(like.device, like.dtype)
    rows = [fn(tuple(shape[1:]), generator=g, device=g.device).to(like.device) for g in generator]
    return torch.stack(rows).to(like.dtype)


def _check_generators(generator: Generators, batch: int) -> None:
    if generator is not None and not isinstance(generator, torch.Generator) and len(generator) != batch:
        raise ValueError(f"got {len(generator)} generators for a batch of {batch}: pass one, one per row, or None")


# ---------------------------------------------------------------------------------------- blocks
def _conv(c_in: int, c_out: int, kernel: int, zero_weights: bool = False) -> nn.Conv2d:
    """Upstream ``get_conv``: PyTorch's default init, zero bias, optionally zero weights."""
    conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)
    with torch.no_grad():
        conv.bias.zero_()
        if zero_weights:
            conv.weight.zero_()
    return conv


class Block(nn.Module):
    """GELU-conv bottleneck: 1x1 -> (3x3 | 1x1) -> (3x3 | 1x1) -> 1x1, optional residual and average pooling."""

    def __init__(
        self,
        c_in: int,
        c_mid: int,
        c_out: int,
        *,
        down_rate: int | None = None,
        residual: bool = False,
        use_3x3: bool = True,
        zero_last: bool = False,
    ) -> None:
        super().__init__()
        k = 3 if use_3x3 else 1
        self.down_rate, self.residual = down_rate, residual
        self.c1 = _conv(c_in, c_mid, 1)
        self.c2 = _conv(c_mid, c_mid, k)
        self.c3 = _conv(c_mid, c_mid, k)
        self.c4 = _conv(c_mid, c_out, 1, zero_weights=zero_last)

    def forward(self, x: Tensor) -> Tensor:
        h = self.c4(F.gelu(self.c3(F.gelu(self.c2(F.gelu(self.c1(F.gelu(x))))))))
        out = x + h if self.residual else h
        return F.avg_pool2d(out, self.down_rate) if self.down_rate else out


class Encoder(nn.Module):
    """Bottom-up: ``in_conv`` then ``enc_blocks``; returns the last activation at each resolution."""

    def __init__(self, config: VDVAEConfig) -> None:
        super().__init__()
        self.widths = config.widths()
        self.in_conv = _conv(config.image_channels, config.width, 3)
        spec = parse_layer_string(config.enc_blocks)
        blocks = []
        for res, down in spec:
            w = self.widths[res]
            b = Block(w, int(w * config.bottleneck_multiple), w, down_rate=down, residual=True, use_3x3=res > 2)
            with torch.no_grad():
                b.c4.weight.mul_(math.sqrt(1.0 / len(spec)))
            blocks.append(b)
        self.enc_blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        """``x [B, 3, S, S]`` (already scaled) -> ``{resolution: [B, width_r, r, r]}``."""
        x = self.in_conv(x)
        acts = {x.shape[-1]: x}
        for block in self.enc_blocks:
            x = block(x)
            w = self.widths[x.shape[-1]]
            if x.shape[1] < w:  # a down-sampling step into a wider resolution: zero-pad the channels
                x = F.pad(x, (0, 0, 0, 0, 0, w - x.shape[1]))
            acts[x.shape[-1]] = x
        return acts


class DecBlock(nn.Module):
    """One top-down block: posterior ``enc``, ``prior`` (also a state update), ``z_proj``, ``resnet``."""

    def __init__(self, config: VDVAEConfig, res: int, mixin: int | None, n_blocks: int) -> None:
        super().__init__()
        self.base, self.mixin, self.zdim = res, mixin, config.zdim
        self.width = w = config.widths()[res]
        mid, k3 = int(w * config.bottleneck_multiple), res > 2
        self.enc = Block(2 * w, mid, 2 * self.zdim, use_3x3=k3)
        self.prior = Block(w, mid, 2 * self.zdim + w, use_3x3=k3, zero_last=True)
        self.z_proj = _conv(self.zdim, w, 1)
        self.resnet = Block(w, mid, w, residual=True, use_3x3=k3)
        with torch.no_grad():
            self.z_proj.weight.mul_(math.sqrt(1.0 / n_blocks))
            self.resnet.c4.weight.mul_(math.sqrt(1.0 / n_blocks))

    def state(self, xs: dict[int, Tensor], batch: int, like: Tensor) -> Tensor:
        """The incoming state ``[B, w, r, r]``: this resolution's (zeros if none yet) plus the mixin's upsampled."""
        x = xs.get(self.base)
        if x is None:
            x = like.new_zeros(batch, self.width, self.base, self.base)
        if self.mixin is not None:
            x = x + F.interpolate(xs[self.mixin][:, : self.width], scale_factor=self.base // self.mixin)
        return x

    def prior_step(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(pm, p_logstd, x + prior's state update)``."""
        pm, plogstd, dx = self.prior(x).split([self.zdim, self.zdim, self.width], dim=1)
        return pm, plogstd, x + dx

    def posterior(self, x: Tensor, acts: Tensor) -> tuple[Tensor, Tensor]:
        """``(qm, q_logstd)`` from the state and the encoder's activation at this resolution."""
        qm, qlogstd = self.enc(torch.cat([x, acts], dim=1)).chunk(2, dim=1)
        return qm, qlogstd

    def finish(self, x: Tensor, z: Tensor) -> Tensor:
        """The outgoing state: ``resnet(x + z_proj(z))``."""
        return self.resnet(x + self.z_proj(z))


class DmolNet(nn.Module):
    """The output net: a 1x1 conv to the parameters of a discretized mixture of logistics per pixel.

    Channel layout of ``out_conv`` (upstream's NHWC unpacking, channel-first here): ``M`` mixture
    logits, then per colour channel ``c`` (R, G, B) ``M`` means, ``M`` log scales and ``M``
    coupling coefficients (``tanh``): G's mean adds ``a_R * R``, B's adds ``b_R * R + c_G * G``.
    """

    def __init__(self, config: VDVAEConfig) -> None:
        super().__init__()
        self.m = config.num_mixtures
        self.out_conv = _conv(config.width, 10 * self.m, 1)

    def forward(self, px_z: Tensor) -> Tensor:
        """``[B, width, S, S]`` -> raw parameters ``[B, 10 M, S, S]``."""
        return self.out_conv(px_z)

    def sample(self, px_z: Tensor, generator: Generators = None, *, mode: bool = False) -> Tensor:
        """Images ``[B, 3, S, S]`` in [-1, 1]: upstream's sampling, or with ``mode`` its deterministic counterpart."""
        p = self(px_z)
        b, _, h, w = p.shape
        logits, rest = p[:, : self.m], p[:, self.m :].reshape(b, 3, 3 * self.m, h, w)
        if mode:
            comp = logits.argmax(dim=1)
        else:  # Gumbel-max with upstream's uniform range
            eps = _draw("uniform", (b, self.m, h, w), generator, p) * (1 - 2e-5) + 1e-5
            comp = (logits - torch.log(-torch.log(eps))).argmax(dim=1)
        idx = comp[:, None, None].expand(b, 3, 1, h, w)  # [B, 3, 1, H, W]
        mean = rest[:, :, : self.m].gather(2, idx)[:, :, 0]
        log_scale = rest[:, :, self.m : 2 * self.m].gather(2, idx)[:, :, 0].clamp(min=-7.0)
        coef = torch.tanh(rest[:, :, 2 * self.m :]).gather(2, idx)[:, :, 0]
        if mode:
            x = mean
        else:  # a logistic draw; like upstream, not rounded to 8 bits
            u = _draw("uniform", (b, 3, h, w), generator, p) * (1 - 2e-5) + 1e-5
            x = mean + torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))
        r = x[:, 0].clamp(-1, 1)
        g = (x[:, 1] + coef[:, 0] * r).clamp(-1, 1)
        bl = (x[:, 2] + coef[:, 1] * r + coef[:, 2] * g).clamp(-1, 1)
        return torch.stack([r, g, bl], dim=1)


class Decoder(nn.Module):
    """Top-down: ``bias_xs`` (learned starting states), ``dec_blocks``, ``gain``/``bias`` and ``out_net``."""

    def __init__(self, config: VDVAEConfig) -> None:
        super().__init__()
        self.config = config
        spec = parse_layer_string(config.dec_blocks)
        self.dec_blocks = nn.ModuleList(DecBlock(config, res, mixin, len(spec)) for res, mixin in spec)
        widths = config.widths()
        resos = sorted({res for res, _ in spec if res <= config.no_bias_above})
        self.bias_xs = nn.ParameterList(nn.Parameter(torch.zeros(1, widths[r], r, r)) for r in resos)
        self.out_net = DmolNet(config)
        self.gain = nn.Parameter(torch.ones(1, config.width, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, config.width, 1, 1))

    def initial_states(self, batch: int) -> dict[int, Tensor]:
        """``{resolution: [B, w, r, r]}`` from ``bias_xs``."""
        return {b.shape[-1]: b.expand(batch, -1, -1, -1) for b in self.bias_xs}

    def posterior_latents(
        self, acts: dict[int, Tensor], n_layers: int, *, sample: bool = True, generator: Generators = None
    ) -> list[Tensor]:
        """The ``z`` (posterior samples, or means without ``sample``) of the first ``n_layers`` blocks."""
        ref = acts[self.config.image_size]
        batch, xs, zs = ref.shape[0], self.initial_states(ref.shape[0]), []
        for block in self.dec_blocks[:n_layers]:
            x = block.state(xs, batch, ref)
            qm, qlogstd = block.posterior(x, acts[block.base])
            _, _, x = block.prior_step(x)
            z = qm + torch.exp(qlogstd) * _draw("normal", qm.shape, generator, qm) if sample else qm
            xs[block.base] = block.finish(x, z)
            zs.append(z)
        return zs

    def from_latents(
        self,
        latents: Sequence[Tensor],
        batch: int,
        *,
        temperature: float = 1.0,
        generator: Generators = None,
    ) -> Tensor:
        """``px_z [B, width, S, S]``: block ``i`` uses ``latents[i]``, later blocks draw from their prior."""
        ref = self.gain
        xs = self.initial_states(batch)
        for i, block in enumerate(self.dec_blocks):
            x = block.state(xs, batch, ref)
            pm, plogstd, x = block.prior_step(x)
            if i < len(latents):
                z = latents[i]
            elif temperature > 0:
                z = pm + temperature * torch.exp(plogstd) * _draw("normal", pm.shape, generator, pm)
            else:
                z = pm
            xs[block.base] = block.finish(x, z)
        return xs[self.config.image_size] * self.gain + self.bias


# ----------------------------------------------------------------------------------------- model
class VeryDeepVAE(nn.Module):
    """openai/vdvae's ``VAE`` (``encoder`` + ``decoder``) with Brain-Diffuser's latent interface.

    Satisfies :class:`decodelab.neuro.brain_diffuser.VDVAE`. Inputs may live on any device; they are
    moved to the model's, and outputs come back on the input's device as float32 (:meth:`sample`: on the CPU).

    Args:
        config: a :class:`VDVAEConfig` or a preset name from :data:`VDVAE_PRESETS`.
    """

    def __init__(self, config: VDVAEConfig | str = "imagenet64") -> None:
        super().__init__()
        self.config = _resolve(config)
        self.config.validate()
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)

    @property
    def latent_shapes(self) -> list[tuple[int, int, int]]:
        """``(zdim, r, r)`` of each kept latent layer."""
        return self.config.latent_shapes()

    @property
    def latent_dim(self) -> int:
        """Length of :meth:`encode_latents`' vectors."""
        return self.config.latent_dim

    def preprocess(self, images: Tensor) -> Tensor:
        """Images in [0, 1] -> encoder input ``(255 images + shift) * scale`` (upstream's ImageNet-64 scaling)."""
        c = self.config
        if images.ndim != 4 or tuple(images.shape[1:]) != (c.image_channels, c.image_size, c.image_size):
            raise ValueError(
                f"expected images [B, {c.image_channels}, {c.image_size}, {c.image_size}] in [0, 1], "
                f"got {tuple(images.shape)}; resize them to {c.image_size} x {c.image_size} first"
            )
        p = self.decoder.gain
        return (images.to(p.device, p.dtype) * 255.0 + c.shift) * c.scale

    @torch.no_grad()
    def encode_latents(self, images: Tensor, *, sample: bool = True, generator: Generators = None) -> Tensor:
        """Images ``[B, 3, S, S]`` in [0, 1] -> ``[B, latent_dim]`` (the kept layers' ``z``, flat, in order).

        Args:
            images: RGB images in [0, 1] at the model's size (64 x 64 for ``imagenet64``).
            sample: a posterior sample as Brain-Diffuser (default), or the posterior mean.
            generator: the posterior noise (one generator, one per row, or ``None``).
        """
        _check_generators(generator, images.shape[0])
        acts = self.encoder(self.preprocess(images))
        zs = self.decoder.posterior_latents(acts, self.config.latent_layers, sample=sample, generator=generator)
        if not zs:
            return images.new_zeros(images.shape[0], 0, dtype=torch.float32)
        return torch.cat([z.flatten(1) for z in zs], dim=1).float().to(images.device)

    def split_latents(self, latents: Tensor) -> list[Tensor]:
        """``[B, latent_dim]`` -> per layer ``[B, zdim, r, r]`` on the model's device (Brain-Diffuser's reshaping)."""
        if latents.ndim != 2 or latents.shape[1] != self.latent_dim:
            raise ValueError(f"expected latents [B, {self.latent_dim}], got {tuple(latents.shape)}")
        p = self.decoder.gain  # the model's device and dtype
        sizes = [c * h * w for c, h, w in self.latent_shapes]
        parts = latents.to(p.device, p.dtype).split(sizes, dim=1)
        return [part.reshape(-1, *shape) for part, shape in zip(parts, self.latent_shapes)]

    @torch.no_grad()
    def decode_latents(
        self,
        latents: Tensor,
        temperature: float = 1.0,
        generator: Generators = None,
        *,
        sample_output: bool = True,
    ) -> Tensor:
        """``[B, latent_dim]`` -> images ``[B, 3, S, S]`` in [0, 1] (upstream ``forward_manual_latents`` + ``sample``).

        Args:
            latents: the kept layers' ``z``, flat (e.g. ridge predictions).
            temperature: prior temperature of the remaining layers (Brain-Diffuser: 1; 0: prior means).
            generator: the prior and output noise (one generator, one per row, or ``None``).
            sample_output: sample the output mixture as upstream (default), or take its mode
                component's location (deterministic; decodelab's addition).
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        _check_generators(generator, latents.shape[0])
        zs = self.split_latents(latents)
        px_z = self.decoder.from_latents(zs, latents.shape[0], temperature=temperature, generator=generator)
        out = self.decoder.out_net.sample(px_z, generator, mode=not sample_output)
        return ((out + 1.0) / 2.0).clamp(0, 1).float().to(latents.device)

    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, generator: Generators = None, *, sample_output: bool = True
    ) -> Tensor:
        """``n`` unconditional images ``[n, 3, S, S]`` in [0, 1] on the CPU (upstream ``forward_uncond_samples``)."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        _check_generators(generator, n)
        px_z = self.decoder.from_latents([], n, temperature=temperature, generator=generator)
        out = self.decoder.out_net.sample(px_z, generator, mode=not sample_output)
        return ((out + 1.0) / 2.0).clamp(0, 1).float().cpu()


# --------------------------------------------------------------------------------------- loading
def load_vdvae(
    path: str | os.PathLike[str] | None,
    config: VDVAEConfig | str = "imagenet64",
    *,
    device: str | torch.device = "cpu",
) -> VeryDeepVAE:
    """An openai/vdvae checkpoint (``*-model-ema.th``, or ``*-model.th`` with ``module.`` keys), loaded strictly.

    Args:
        path: the local file (for Brain-Diffuser: :data:`VDVAE_IMAGENET64_FILE`).
        config: the architecture it was trained with (default ``imagenet64``).
        device: where the model goes.

    Returns:
        The model in eval mode, without gradients.

    Raises:
        FileNotFoundError: no file at ``path`` (the message names the file and where it is published).
        ValueError: not a weights-only torch state dict (code archives are refused before reading);
            :class:`decodelab.hub.CheckpointMismatchError` (a ``ValueError``): missing, unexpected
            or mis-shaped keys, every one named.
    """
    p = Path(path).expanduser() if path is not None else None
    if p is None or not p.is_file():
        raise FileNotFoundError(
            f"VDVAE weights not found at {p}: Brain-Diffuser's stage 1 uses {VDVAE_IMAGENET64_FILE} from openai/vdvae "
            f"(https://github.com/openai/vdvae, README 'ImageNet 64': {VDVAE_IMAGENET64_URL}); download it on a "
            "machine with network access and pass its path (config key vdvae)"
        )
    try:
        state = read_torch_checkpoint(p)
    except ValueError as e:
        raise ValueError(f"{p} is not a VDVAE weights file: {e}") from e
    state = {k.removeprefix("module."): v for k, v in state.items()}  # *-model.th was saved through DDP
    model = VeryDeepVAE(config)
    load_state_dict_strict(model, state, source=str(p))
    return model.to(device).eval().requires_grad_(False)
