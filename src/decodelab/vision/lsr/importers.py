"""Load upstream checkpoints of GB-LSR, LIIF and LTE into decodelab's models, strictly.

Every file is read without arbitrary unpickling (``safetensors``, or ``torch.load(weights_only=True)``)
and checked key by key and shape by shape (:func:`decodelab.hub.load_state_dict_strict`): a
missing, unexpected or mis-shaped tensor is an error naming it. Architecture sizes are inferred
from the tensor shapes; what shapes cannot tell (bandwidth mode without ``global_s_raw``, basis
family, order mask, local ensemble, data normalisation) comes from the run config a checkpoint
carries (GB-LSR's trainer saves its ``RunConfig``) or is an argument.

Layouts:

- **GB-LSR native** (``LocalSpectralArm``; github.com/KempnerInstitute/gblsr, HF
  ``KempnerInstituteAI/gblsr``): ``encoder.net.{i}``, ``decoder.coeff_proj``,
  ``decoder.adaptivity.proj``, ``decoder.global_s_raw`` (global-scalar mode only). A ``.safetensors``
  file, a bare state dict ``.pt``, or the trainer's ``model.pt``: ``{"state_dict", "config", "arm",
  "seed", ...}`` whose ``config`` is the run's ``RunConfig`` as a dict (``training/trainer.py``).
- **GB-LSR SR** (``GBLSRScalarASR``): ``encoder.{sfe_1,sfe_2,rdbs.i.dense_layers.j.conv,
  rdbs.i.local_feature_fusion,gff_1x1,gff_3x3}``, ``decoder.coeff_proj`` (1x1 conv), ``decoder.log_s_e``.
- **LIIF / LTE** (github.com/yinboc/liif, github.com/jaewon-lee-b/lte): ``{"model": {"name": "liif" |
  "lte" | "lte-fast", "args": {...}, "sd": state_dict}, ...}`` with encoders ``edsr-baseline`` (keys as
  here, plus EDSR's unused ``sub_mean``/``add_mean`` mean-shift convolutions, which are skipped),
  ``rdn`` (``SFENet1``, ``RDBs.i.convs.j.conv.0``, ``RDBs.i.LFF``, ``GFF.{0,1}``, renamed here) or
  ``swinir`` (SwinIR-LIIF / SwinIR-LTE; sizes read from the tensors; upstream's stored
  ``relative_position_index`` and shifted-window ``attn_mask`` buffers are checked against the ones
  computed here, then dropped). ``lte-fast`` (LTE+, ``models/ltep.py``) is LTE with the frequency
  channels paired as ``(m, m + K)`` and its MLP as 1x1 convolutions (``layers.{0,2,4,6}``), reshaped
  into :class:`~decodelab.vision.lsr.lte.LTE`'s ``imnet``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from decodelab.hub import load_state_dict_strict, read_torch_checkpoint, refuse_code_archive
from decodelab.vision.lsr.base import ContinuousImageModel
from decodelab.vision.lsr.encoders import relative_position_index, shifted_window_mask
from decodelab.vision.lsr.gblsr import GBLSRSR, GBLSRNative
from decodelab.vision.lsr.liif import LIIF
from decodelab.vision.lsr.lte import LTE

__all__ = [
    "LIIF_LTE_MODELS",
    "import_checkpoint",
    "import_gblsr_native",
    "import_gblsr_sr",
    "import_liif_lte",
    "native_kwargs_from_run_config",
    "read_state_dict",
    "rename_liif_rdn_keys",
]

#: LIIF's RDN module names -> decodelab's (GB-LSR's) RDN names.
_LIIF_RDN_RULES = [
    (r"^encoder\.SFENet1\.", "encoder.sfe_1."),
    (r"^encoder\.SFENet2\.", "encoder.sfe_2."),
    (r"^encoder\.RDBs\.(\d+)\.convs\.(\d+)\.conv\.0\.", r"encoder.rdbs.\1.dense_layers.\2.conv."),
    (r"^encoder\.RDBs\.(\d+)\.LFF\.", r"encoder.rdbs.\1.local_feature_fusion."),
    (r"^encoder\.GFF\.0\.", "encoder.gff_1x1."),
    (r"^encoder\.GFF\.1\.", "encoder.gff_3x3."),
]
_RDN_CONFIGS = {"A": (20, 6, 32), "B": (16, 8, 64)}  # (blocks D, layers C, growth G), from LIIF's rdn.py


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` file or a weights-only ``.pt``/``.pth`` (wrappers unwrapped).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when it is not a readable weights file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"could not read {path} as safetensors: {e}") from e
    return read_torch_checkpoint(path)


def _count(state: Mapping[str, Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.match(k))})


def _p_max(n_coeff: int, where: str) -> int:
    p = int(round((n_coeff / 3) ** 0.5))
    if 3 * p * p != n_coeff:
        raise ValueError(f"{where}: {n_coeff} coefficient channels is not 3 * p_max^2")
    return p


#: GBLSRNative argument <- the RunConfig field(s) of GB-LSR's trainer it is built from.
_RUN_CONFIG_FIELDS = {
    "patch_size": "patch_size",
    "dim": "d_feat",
    "p_max": "p_max",
    "family": "family",
    "s_range": "s_e_lo/s_e_hi",
    "p_soft_range": "p_soft_lo/p_soft_hi",
    "adapt_order": "adapt_order",
    "bandwidth_mode": "bandwidth_mode/adapt_bandwidth",
}


def _load_weights_only(path: Path) -> Any:
    """``torch.load(weights_only=True)`` after refusing code-carrying archives."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    refuse_code_archive(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"could not read {path} as a weights-only torch checkpoint: {e}") from e


def _read_native(path: Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """A GB-LSR native file's tensors and, for the trainer's ``model.pt``, its run config."""
    if path.suffix == ".safetensors":
        return read_state_dict(path), None
    obj = _load_weights_only(path)
    trainer = isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping)
    if trainer and isinstance(obj.get("config"), Mapping):
        state = {str(k): v for k, v in obj["state_dict"].items()}
        if not state or not all(isinstance(v, Tensor) for v in state.values()):
            raise ValueError(f"{path}: 'state_dict' does not hold tensors")
        config = dict(obj["config"])
        if "arm" in obj and "arm" not in config:
            config["arm"] = obj["arm"]
        return state, config
    if isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return {str(k): v for k, v in obj.items()}, None
    return read_torch_checkpoint(path), None  # other wrappers ({"model": ...}, ...)


def native_kwargs_from_run_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`GBLSRNative` arguments fixed by GB-LSR's trainer ``RunConfig`` (only the fields present).

    The trainer builds ``LocalSpectralArm`` from ``patch_size``, ``d_feat``, ``p_max``, ``family``,
    ``s_e_lo``/``s_e_hi``, ``p_soft_lo``/``p_soft_hi``, ``adapt_order`` and the bandwidth mode:
    ``bandwidth_mode`` when set, else ``adapt_bandwidth`` (default true) picks ``local_linear``
    and ``false`` picks ``fixed_midpoint``. GroupNorm groups (8) and the mask sharpness (4) are not
    run-config fields: the trainer always uses those defaults.

    Raises:
        ValueError: for the ``global_fourier_mlp`` control arm or a field of the wrong type.
    """
    arm = config.get("arm", "local_spectral")
    if arm != "local_spectral":
        raise ValueError(f"RunConfig arm={arm!r} is not supported: decodelab implements GB-LSR's 'local_spectral' "
                         "arm (LocalSpectralArm), not the global Fourier-MLP control")  # fmt: skip
    out: dict[str, Any] = {}
    try:
        for key, field in (("patch_size", "patch_size"), ("dim", "d_feat"), ("p_max", "p_max")):
            if field in config:
                out[key] = int(config[field])
        if "family" in config:
            out["family"] = str(config["family"])
        if "adapt_order" in config:
            out["adapt_order"] = bool(config["adapt_order"])
        for key, lo, hi, default in (("s_range", "s_e_lo", "s_e_hi", (0.25, 2.0)),
                                     ("p_soft_range", "p_soft_lo", "p_soft_hi", (1.0, 16.0))):  # fmt: skip
            if lo in config or hi in config:
                out[key] = (float(config.get(lo, default[0])), float(config.get(hi, default[1])))
        if config.get("bandwidth_mode") is not None:
            out["bandwidth_mode"] = str(config["bandwidth_mode"])
        elif "bandwidth_mode" in config or "adapt_bandwidth" in config:
            out["bandwidth_mode"] = "local_linear" if bool(config.get("adapt_bandwidth", True)) else "fixed_midpoint"
    except (TypeError, ValueError) as e:
        raise ValueError(f"RunConfig field of the wrong type: {e}") from e
    return out


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    return a == b


def import_gblsr_native(path: str | Path, bandwidth_mode: str | None = None, **kwargs: Any) -> GBLSRNative:
    """Load a released GB-LSR native-reconstruction checkpoint (``LocalSpectralArm``).

    A checkpoint written by GB-LSR's trainer carries its ``RunConfig``; the model is then built from
    it (:func:`native_kwargs_from_run_config`: bandwidth mode, basis family, order mask, ranges), so
    no argument is needed. Arguments that agree with the config are accepted, ones that contradict
    it are refused.

    Args:
        path: ``.safetensors`` or ``.pt``.
        bandwidth_mode: needed only for a file without a run config and without
            ``decoder.global_s_raw`` (``fixed_midpoint``, ``local_linear`` and ``local_logspace``
            cannot be told apart by their tensors).
        **kwargs: other :class:`GBLSRNative` arguments (``groups``, ``adapt_order``, ``family``, ...).

    Raises:
        ValueError: for a file of another layout, a missing ``bandwidth_mode``, an argument that
            contradicts the checkpoint's run config (naming the field), or mismatching tensors.
    """
    path = Path(path)
    state, run_config = _read_native(path)
    from_config = {} if run_config is None else native_kwargs_from_run_config(run_config)
    if "encoder.net.0.weight" not in state or "decoder.coeff_proj.weight" not in state:
        raise ValueError(f"{path} is not a GB-LSR native checkpoint (no encoder.net.0 / decoder.coeff_proj)")
    explicit = dict(kwargs, **({} if bandwidth_mode is None else {"bandwidth_mode": bandwidth_mode}))
    for key, value in explicit.items():
        if key in from_config and not _same_value(value, from_config[key]):
            raise ValueError(
                f"{path}: {key}={value!r} contradicts the checkpoint's run config (RunConfig "
                f"{_RUN_CONFIG_FIELDS[key]} gives {key}={from_config[key]!r}); drop the argument, the config "
                "builds the model the run trained"
            )
    n_conv = _count(state, r"^encoder\.net\.(\d+)\.weight$") // 2 + 1  # conv + GN per stage, final conv alone
    shapes = {
        "patch_size": 2 ** (n_conv - 2),
        "dim": int(state["encoder.net.0.weight"].shape[0]),
        "p_max": _p_max(int(state["decoder.coeff_proj.weight"].shape[0]), str(path)),
    }
    for key, value in shapes.items():
        if key in explicit and explicit[key] != value:
            raise ValueError(f"{path}: {key}={explicit[key]!r} but the weights have {key}={value}; drop the argument")
        if key in from_config and from_config[key] != value:
            raise ValueError(f"{path}: RunConfig {_RUN_CONFIG_FIELDS[key]}={from_config[key]} but the weights have "
                             f"{key}={value}; the file's config and tensors disagree")  # fmt: skip
    args = {**from_config, **explicit, **shapes}
    if "bandwidth_mode" not in args:
        if "decoder.global_s_raw" not in state:
            raise ValueError(
                f"{path} has no decoder.global_s_raw and no run config: pass bandwidth_mode='fixed_midpoint', "
                "'local_linear' or 'local_logspace' (the run's bandwidth_mode)"
            )
        args["bandwidth_mode"] = "global_scalar"
    model = GBLSRNative(**args)
    load_state_dict_strict(model, state, source=str(path))
    return model.eval()


def import_gblsr_sr(path: str | Path, local_ensemble: bool = True, **kwargs: Any) -> GBLSRSR:
    """Load a released GB-LSR SR checkpoint (``GBLSRScalarASR``: RDN + coefficient conv + ``log_s_e``).

    Args:
        path: ``.safetensors`` or ``.pt``.
        local_ensemble: the variant's ensemble setting (``False`` for the ``noLE`` checkpoints).
        **kwargs: other :class:`GBLSRSR` arguments (``data_norm``, ``family``).
    """
    state = read_state_dict(path)
    if "decoder.log_s_e" not in state or "encoder.sfe_1.weight" not in state:
        raise ValueError(f"{path} is not a GB-LSR SR checkpoint (no encoder.sfe_1 / decoder.log_s_e)")
    encoder = _rdn_spec_from_state(state)
    p_max = _p_max(int(state["decoder.coeff_proj.weight"].shape[0]), str(path))
    model = GBLSRSR(encoder=encoder, p_max=p_max, local_ensemble=local_ensemble, **kwargs)
    load_state_dict_strict(model, state, source=str(path))
    return model.eval()


def _rdn_spec_from_state(state: Mapping[str, Tensor]) -> dict[str, Any]:
    return {
        "name": "rdn",
        "num_features": int(state["encoder.sfe_1.weight"].shape[0]),
        "growth_rate": int(state["encoder.rdbs.0.dense_layers.0.conv.weight"].shape[0]),
        "num_rdbs": _count(state, r"^encoder\.rdbs\.(\d+)\."),
        "num_layers_per_rdb": _count(state, r"^encoder\.rdbs\.0\.dense_layers\.(\d+)\."),
    }


def rename_liif_rdn_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """LIIF/LTE RDN key names (``encoder.SFENet1``, ``encoder.RDBs.i.convs.j.conv.0``, ...) -> decodelab's."""
    out = {}
    for key, value in state.items():
        for pattern, repl in _LIIF_RDN_RULES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def _read_spec_checkpoint(path: Path) -> dict[str, Any]:
    obj = _load_weights_only(path)
    spec = obj.get("model") if isinstance(obj, Mapping) else None
    if not isinstance(spec, Mapping) or not {"name", "args", "sd"} <= set(spec):
        raise ValueError(f"{path} is not a LIIF/LTE checkpoint ({{'model': {{'name', 'args', 'sd'}}}} expected)")
    return dict(spec)


def _encoder_from_spec(spec: Mapping[str, Any], path: Path, state: Mapping[str, Tensor]) -> dict[str, Any]:
    name, args = spec.get("name"), dict(spec.get("args") or {})
    if name == "swinir":  # LTE's make_swinir ignores its arguments: the sizes are the tensors'
        return _swinir_spec_from_state(state, path)
    if not args.get("no_upsampling", False):
        raise ValueError(f"{path}: the encoder has an upsampler (no_upsampling is false); LIIF/LTE encoders do not")
    if name == "edsr-baseline":
        return {"name": "edsr_baseline", "n_resblocks": int(args.get("n_resblocks", 16)),
                "n_feats": int(args.get("n_feats", 64)), "res_scale": float(args.get("res_scale", 1))}  # fmt: skip
    if name == "rdn":
        if int(args.get("RDNkSize", 3)) != 3:
            raise ValueError(f"{path}: only RDNkSize=3 is supported")
        d, c, g = _RDN_CONFIGS[str(args.get("RDNconfig", "B"))]
        return {"name": "rdn", "num_features": int(args.get("G0", 64)), "growth_rate": g, "num_rdbs": d,
                "num_layers_per_rdb": c}  # fmt: skip
    raise ValueError(f"{path}: encoder {name!r} is not supported (edsr-baseline, rdn and swinir are)")


def _swinir_spec_from_state(state: Mapping[str, Tensor], path: Path) -> dict[str, Any]:
    """SwinIR sizes from the tensors of an upstream SwinIR-LIIF / SwinIR-LTE state dict."""
    if "encoder.absolute_pos_embed" in state:
        raise ValueError(f"{path}: SwinIR with an absolute position embedding (ape=True) is not supported")
    if "encoder.conv_first.weight" in state and "encoder.layers.0.conv.weight" not in state:
        raise ValueError(f"{path}: SwinIR with resi_connection='3conv' is not supported (LTE's SwinIR uses '1conv')")
    groups = _count(state, r"^encoder\.layers\.(\d+)\.")
    if groups == 0:
        raise ValueError(f"{path}: not a SwinIR encoder state dict (no encoder.layers.*)")
    try:
        embed = int(state["encoder.conv_first.weight"].shape[0])
        blk = "encoder.layers.{}.residual_group.blocks.0."
        tables = [state[blk.format(i) + "attn.relative_position_bias_table"] for i in range(groups)]
        table = int(tables[0].shape[0])
        block_rx = r"^encoder\.layers\.{}\.residual_group\.blocks\.(\d+)\."
        spec = {
            "name": "swinir",
            "embed_dim": embed,
            "depths": [_count(state, block_rx.format(i)) for i in range(groups)],
            "num_heads": [int(t.shape[1]) for t in tables],
            "window_size": (math.isqrt(table) + 1) // 2,
            "mlp_ratio": int(state[blk.format(0) + "mlp.fc1.weight"].shape[0]) / embed,
            "num_feat": int(state["encoder.conv_before_upsample.0.weight"].shape[0]),
        }  # fmt: skip
    except KeyError as e:
        raise ValueError(f"{path}: not a SwinIR encoder state dict (no {e.args[0]})") from None
    if (2 * spec["window_size"] - 1) ** 2 != table:
        raise ValueError(f"{path}: not a SwinIR encoder state dict (relative position table of {table} rows)")
    return spec


def _drop_swinir_buffers(state: Mapping[str, Tensor], window: int, path: Path) -> dict[str, Tensor]:
    """Check upstream's stored ``relative_position_index`` / ``attn_mask`` buffers, then drop them.

    decodelab computes both (the mask for each input size); a stored copy that differs would mean a
    SwinIR of another kind, so it is an error rather than silently ignored.
    """
    out, index = {}, relative_position_index(window)
    for key, value in state.items():
        if key.startswith("encoder.") and key.endswith(".attn.relative_position_index"):
            if not torch.equal(value.long(), index):
                raise ValueError(f"{path}: {key} is not Swin's relative position index for window {window}")
            continue
        if key.startswith("encoder.") and key.endswith(".attn_mask"):
            side = math.isqrt(value.shape[0]) * window  # upstream stores the mask of its square img_size
            mask = shifted_window_mask(side, side, window, window // 2)
            if value.shape != mask.shape or not torch.equal(value.float(), mask):
                raise ValueError(f"{path}: {key} is not the shifted-window mask of window {window}")
            continue
        out[key] = value
    return out


def _conv_mlp_to_imnet(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``lte-fast``'s 1x1-conv MLP ``layers.{i}`` -> :class:`LTE`'s ``imnet.layers.{i}`` (Linear weights)."""
    out = {}
    for key, value in state.items():
        if key.startswith("layers."):
            key = "imnet." + key
            if value.dim() == 4 and value.shape[2:] == (1, 1):
                value = value[:, :, 0, 0]
        out[key] = value
    return out


#: Upstream model names this importer reads.
LIIF_LTE_MODELS = ("liif", "lte", "lte-fast")


def import_liif_lte(path: str | Path, data_norm: tuple[float, float] = (0.5, 0.5)) -> LIIF | LTE:
    """Load a LIIF, LTE or LTE+ (``lte-fast``) ``.pth`` checkpoint (``{'model': {'name', 'args', 'sd'}}``).

    Encoders: EDSR-baseline, RDN and SwinIR (SwinIR-LIIF / SwinIR-LTE).

    Args:
        path: the checkpoint (e.g. ``edsr-baseline-liif.pth``, ``rdn-lte.pth``, ``swinir-lte.pth``).
        data_norm: the training ``data_norm`` (LIIF/LTE configs: ``sub 0.5, div 0.5``).

    Raises:
        ValueError: for another layout, an unsupported model or encoder (named), or mismatching tensors.
    """
    path = Path(path)
    spec = _read_spec_checkpoint(path)
    name = spec["name"]
    if name not in LIIF_LTE_MODELS:
        raise ValueError(f"{path}: model {name!r} is not supported; decodelab reads {', '.join(LIIF_LTE_MODELS)} "
                         "checkpoints")  # fmt: skip
    args = dict(spec["args"])
    state = {k: v for k, v in dict(spec["sd"]).items() if not k.startswith(("encoder.sub_mean.", "encoder.add_mean."))}
    encoder = _encoder_from_spec(args.get("encoder_spec") or {}, path, state)
    if encoder["name"] == "swinir":
        state = _drop_swinir_buffers(state, encoder["window_size"], path)
    state = rename_liif_rdn_keys(state)
    model: LIIF | LTE
    if name == "lte-fast":
        if int(args.get("out_dim", 3)) != 3:
            raise ValueError(f"{path}: lte-fast with out_dim {args.get('out_dim')} is not supported (RGB: 3)")
        hidden_dim = int(args.get("hidden_dim", 256))
        model = LTE(encoder=encoder, hidden_dim=hidden_dim, hidden=[hidden_dim] * int(args.get("num_layer", 3)),
                    freq_layout="halves", data_norm=data_norm)  # fmt: skip
        state = _conv_mlp_to_imnet(state)
    else:
        imnet = dict(args.get("imnet_spec") or {})
        hidden = list((imnet.get("args") or {}).get("hidden_list", []))
        if imnet.get("name") != "mlp" or int((imnet.get("args") or {}).get("out_dim", 3)) != 3:
            raise ValueError(f"{path}: {name}'s imnet_spec must be an 'mlp' with out_dim 3, got {imnet}")
        if name == "liif":
            model = LIIF(encoder=encoder, hidden=hidden, local_ensemble=bool(args.get("local_ensemble", True)),
                         feat_unfold=bool(args.get("feat_unfold", True)),
                         cell_decode=bool(args.get("cell_decode", True)), data_norm=data_norm)  # fmt: skip
        else:
            model = LTE(encoder=encoder, hidden_dim=int(args.get("hidden_dim", 256)), hidden=hidden,
                        data_norm=data_norm)  # fmt: skip
    load_state_dict_strict(model, state, source=str(path))
    return model.eval()


def import_checkpoint(path: str | Path, **kwargs: Any) -> ContinuousImageModel:
    """Detect the layout of an upstream checkpoint and load it (see the module docstring).

    Raises:
        ValueError: when the layout is none of GB-LSR native, GB-LSR SR, LIIF or LTE.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        try:
            _read_spec_checkpoint(path)
            return import_liif_lte(path, **kwargs)
        except ValueError as e:
            if "is not a LIIF/LTE checkpoint" not in str(e):
                raise
    state = read_state_dict(path)
    if "encoder.net.0.weight" in state:
        return import_gblsr_native(path, **kwargs)
    if "decoder.log_s_e" in state:
        return import_gblsr_sr(path, **kwargs)
    raise ValueError(
        f"{path}: unrecognised layout (keys start {sorted(state)[:5]}); expected a GB-LSR native, GB-LSR SR, "
        "LIIF or LTE checkpoint"
    )
