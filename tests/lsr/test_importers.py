"""Importers: random models saved in the upstream key layouts load strictly and answer identically."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from decodelab.hub import CheckpointMismatchError
from decodelab.vision.lsr import GBLSRSR, LIIF, LTE, GBLSRNative, make_cell
from decodelab.vision.lsr.encoders import SWINIR_TEST
from decodelab.vision.lsr.importers import (
    import_checkpoint,
    import_gblsr_native,
    import_gblsr_sr,
    import_liif_lte,
)


def _same_outputs(a, b, *, cells: bool = True) -> None:
    x = torch.rand(1, 3, 13, 17, generator=torch.Generator().manual_seed(0))
    coords = torch.rand(1, 25, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1
    cell = make_cell((30, 40), 25).unsqueeze(0) if cells else None
    with torch.no_grad():
        torch.testing.assert_close(a.query(a.encode(x), coords, cell), b.query(b.encode(x), coords, cell))


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model.eval()


# GB-LSR's LocalSpectralArm keys for P = 8 (3 stride-2 stages), written out from upstream's Encoder:
# [conv, GN, SiLU] + 3 x [conv s2, GN, SiLU] + [conv]  ->  conv at 0, 3, 6, 9, 12; GN at 1, 4, 7, 10.
UPSTREAM_NATIVE_KEYS = (
    {f"encoder.net.{i}.{p}" for i in (0, 1, 3, 4, 6, 7, 9, 10, 12) for p in ("weight", "bias")}
    | {f"decoder.{m}.{p}" for m in ("coeff_proj", "adaptivity.proj") for p in ("weight", "bias")}
    | {"decoder.global_s_raw"}
)  # fmt: skip


def test_gblsr_native_layouts(tmp_path) -> None:
    model = _randomise(GBLSRNative(patch_size=8, dim=16, p_max=4, groups=4))
    sd = model.state_dict()
    assert set(sd) == UPSTREAM_NATIVE_KEYS
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "m.safetensors"))
    torch.save({"state_dict": sd, "config": {"arm": "local_spectral", "patch_size": 8}, "seed": 0}, tmp_path / "t.pt")
    torch.save(sd, tmp_path / "bare.pt")
    for f in ("m.safetensors", "t.pt", "bare.pt"):
        loaded = import_gblsr_native(tmp_path / f, groups=4)
        assert loaded.config["patch_size"] == 8 and loaded.config["p_max"] == 4 and loaded.config["dim"] == 16
        _same_outputs(model, loaded, cells=False)
    assert isinstance(import_checkpoint(tmp_path / "t.pt", groups=4), GBLSRNative)


def test_gblsr_native_fixed_mode_needs_the_mode(tmp_path) -> None:
    model = _randomise(GBLSRNative(patch_size=8, dim=16, p_max=4, groups=4, bandwidth_mode="fixed_midpoint"))
    torch.save(model.state_dict(), tmp_path / "f.pt")
    with pytest.raises(ValueError, match="pass bandwidth_mode"):
        import_gblsr_native(tmp_path / "f.pt", groups=4)
    _same_outputs(model, import_gblsr_native(tmp_path / "f.pt", bandwidth_mode="fixed_midpoint", groups=4), cells=False)


def _run_config(**overrides) -> dict:
    """A GB-LSR trainer ``RunConfig`` as ``asdict`` writes it into ``model.pt`` (field names and defaults
    from KempnerInstitute/gblsr ``training/trainer.py``), for the tiny P8 / D16 / 4x4 model."""
    cfg = {
        "experiment_id": "tiny", "run_dir": "runs/tiny__seed0", "arm": "local_spectral", "seed": 0,
        "total_steps": 200, "batch_size": 8, "lr": 2.0e-4, "weight_decay": 0.0, "grad_clip": 1.0,
        "log_every": 20, "val_every": 0, "num_val_images": 64, "num_val_curve_images": 64,
        "data": {"dtd_root": "", "div2k_root": "", "image_size": 256, "patch_size": 8},
        "image_size": 256, "patch_size": 8, "d_feat": 16, "n_encoder_layers": 3, "p_max": 4,
        "family": "fourier", "s_e_lo": 0.25, "s_e_hi": 2.0, "p_soft_lo": 1.0, "p_soft_hi": 16.0,
        "adapt_bandwidth": True, "adapt_order": True, "bandwidth_mode": None, "lambda_point": 1.0,
        "loss_name": "mse", "charbonnier_eps": 1.0e-3, "n_global_freq": 128, "decoder_hidden": 256,
        "decoder_layers": 3, "dump_locality": False, "save_checkpoint": True,
    }  # fmt: skip
    cfg.update(overrides)
    return cfg


def _save_trainer_checkpoint(path, model: GBLSRNative, config: dict) -> None:
    """The trainer's ``model.pt`` layout: state dict, arm, seed, experiment id, git commit, config."""
    torch.save({"state_dict": model.state_dict(), "arm": config["arm"], "seed": 0, "experiment_id": "tiny",
                "git_commit": "unknown", "config": config}, path)  # fmt: skip


@pytest.mark.parametrize(
    ("run_fields", "mode"),
    [
        ({"bandwidth_mode": "global_scalar"}, "global_scalar"),
        ({"bandwidth_mode": "fixed_midpoint"}, "fixed_midpoint"),
        ({"bandwidth_mode": "local_linear"}, "local_linear"),
        ({"bandwidth_mode": "local_logspace"}, "local_logspace"),
        ({"bandwidth_mode": None, "adapt_bandwidth": True}, "local_linear"),  # trainer's default mapping
        ({"bandwidth_mode": None, "adapt_bandwidth": False}, "fixed_midpoint"),
    ],
)
def test_gblsr_native_trainer_checkpoint_builds_from_its_run_config(tmp_path, run_fields: dict, mode: str) -> None:
    """family="cosine", adapt_order=False, other ranges and each bandwidth mode: no argument needed."""
    config = _run_config(family="cosine", adapt_order=False, s_e_lo=0.5, s_e_hi=3.0, p_soft_lo=2.0, **run_fields)
    model = _randomise(GBLSRNative(patch_size=8, dim=16, p_max=4, bandwidth_mode=mode, family="cosine",
                                   adapt_order=False, s_range=(0.5, 3.0), p_soft_range=(2.0, 16.0)))  # fmt: skip
    _save_trainer_checkpoint(tmp_path / "model.pt", model, config)
    loaded = import_checkpoint(tmp_path / "model.pt")
    assert isinstance(loaded, GBLSRNative)
    cfg = loaded.config
    assert (cfg["bandwidth_mode"], cfg["family"], cfg["adapt_order"]) == (mode, "cosine", False)
    assert tuple(cfg["s_range"]) == (0.5, 3.0) and tuple(cfg["p_soft_range"]) == (2.0, 16.0)
    assert (cfg["patch_size"], cfg["dim"], cfg["p_max"], cfg["groups"]) == (8, 16, 4, 8)
    _same_outputs(model, loaded, cells=False)
    # what the defaults would have given (fourier basis, order mask on): a different model
    defaults = GBLSRNative(patch_size=8, dim=16, p_max=4, bandwidth_mode=mode)
    defaults.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 13, 17, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (defaults.eval().reconstruct(x, clamp=False) - loaded.reconstruct(x, clamp=False)).abs().max() > 1e-3
    # arguments that agree are accepted; ones that contradict the run config are refused, naming the field
    assert import_gblsr_native(tmp_path / "model.pt", family="cosine", bandwidth_mode=mode).config["family"] == "cosine"
    with pytest.raises(ValueError, match="family='fourier' contradicts .*RunConfig family"):
        import_gblsr_native(tmp_path / "model.pt", family="fourier")
    with pytest.raises(ValueError, match="adapt_order=True contradicts .*RunConfig adapt_order"):
        import_checkpoint(tmp_path / "model.pt", adapt_order=True)
    other = "global_scalar" if mode != "global_scalar" else "fixed_midpoint"
    with pytest.raises(ValueError, match=f"bandwidth_mode='{other}' contradicts .*bandwidth_mode/adapt_bandwidth"):
        import_gblsr_native(tmp_path / "model.pt", bandwidth_mode=other)


def test_gblsr_native_run_config_disagreements_are_refused(tmp_path) -> None:
    model = _randomise(GBLSRNative(patch_size=8, dim=16, p_max=4))
    _save_trainer_checkpoint(tmp_path / "wrong.pt", model, _run_config(patch_size=32, bandwidth_mode="global_scalar"))
    with pytest.raises(ValueError, match="RunConfig patch_size=32 but the weights have patch_size=8"):
        import_gblsr_native(tmp_path / "wrong.pt")
    _save_trainer_checkpoint(tmp_path / "mlp.pt", model, _run_config(arm="global_fourier_mlp"))
    with pytest.raises(ValueError, match="arm='global_fourier_mlp' is not supported"):
        import_checkpoint(tmp_path / "mlp.pt")


def test_gblsr_sr_layout(tmp_path) -> None:
    enc = {"name": "rdn", "num_features": 8, "growth_rate": 4, "num_rdbs": 3, "num_layers_per_rdb": 2}
    model = _randomise(GBLSRSR(encoder=enc, p_max=4, local_ensemble=False))
    expected = {"encoder.sfe_1", "encoder.sfe_2", "encoder.gff_1x1", "encoder.gff_3x3", "decoder.coeff_proj"}
    expected |= {f"encoder.rdbs.{i}.dense_layers.{j}.conv" for i in range(3) for j in range(2)}
    expected |= {f"encoder.rdbs.{i}.local_feature_fusion" for i in range(3)}
    assert set(model.state_dict()) == {f"{m}.{p}" for m in expected for p in ("weight", "bias")} | {"decoder.log_s_e"}
    save_file(model.state_dict(), str(tmp_path / "sr.safetensors"))
    loaded = import_gblsr_sr(tmp_path / "sr.safetensors", local_ensemble=False)
    assert loaded.config["encoder"] == enc and loaded.config["p_max"] == 4
    _same_outputs(model, loaded)
    assert isinstance(import_checkpoint(tmp_path / "sr.safetensors", local_ensemble=False), GBLSRSR)


def _liif_upstream_sd(model: torch.nn.Module, rdn: bool) -> dict[str, torch.Tensor]:
    """decodelab keys -> yinboc/liif keys (EDSR mean-shift convs added; RDN modules renamed)."""
    sd = {}
    for k, v in model.state_dict().items():
        if rdn:
            k = k.replace("encoder.sfe_1.", "encoder.SFENet1.").replace("encoder.sfe_2.", "encoder.SFENet2.")
            k = re.sub(r"encoder\.rdbs\.(\d+)\.dense_layers\.(\d+)\.conv\.", r"encoder.RDBs.\1.convs.\2.conv.0.", k)
            k = re.sub(r"encoder\.rdbs\.(\d+)\.local_feature_fusion\.", r"encoder.RDBs.\1.LFF.", k)
            k = k.replace("encoder.gff_1x1.", "encoder.GFF.0.").replace("encoder.gff_3x3.", "encoder.GFF.1.")
        sd[k] = v
    if not rdn:  # EDSR's (unused, frozen) MeanShift convolutions are in the upstream state dict
        for name in ("sub_mean", "add_mean"):
            sd[f"encoder.{name}.weight"] = torch.eye(3).view(3, 3, 1, 1)
            sd[f"encoder.{name}.bias"] = torch.zeros(3)
    return sd


def _save_spec(path, name: str, args: dict, sd: dict) -> None:
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=1e-4)
    spec = {"name": name, "args": args, "sd": sd}
    torch.save({"model": spec, "optimizer": {"name": "adam", "args": {"lr": 1e-4}, "sd": opt.state_dict()},
                "epoch": 7}, path)  # fmt: skip


def test_liif_edsr_and_rdn_checkpoints(tmp_path) -> None:
    edsr = _randomise(LIIF(encoder={"name": "edsr_baseline", "n_resblocks": 2, "n_feats": 8}, hidden=[16, 16]))
    args = {"encoder_spec": {"name": "edsr-baseline", "args": {"n_resblocks": 2, "n_feats": 8, "no_upsampling": True}},
            "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16, 16]}}}  # fmt: skip
    _save_spec(tmp_path / "edsr-liif.pth", "liif", args, _liif_upstream_sd(edsr, rdn=False))
    loaded = import_liif_lte(tmp_path / "edsr-liif.pth")
    assert isinstance(loaded, LIIF) and loaded.config["hidden"] == [16, 16]
    _same_outputs(edsr, loaded)
    # RDN config A: (D, C, G) = (20, 6, 32) with G0 = 8
    rdn = _randomise(LIIF(encoder={"name": "rdn", "num_features": 8, "growth_rate": 32, "num_rdbs": 20,
                                   "num_layers_per_rdb": 6}, hidden=[16], local_ensemble=False))  # fmt: skip
    args = {"encoder_spec": {"name": "rdn", "args": {"G0": 8, "RDNconfig": "A", "no_upsampling": True}},
            "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16]}},
            "local_ensemble": False}  # fmt: skip
    _save_spec(tmp_path / "rdn-liif.pth", "liif", args, _liif_upstream_sd(rdn, rdn=True))
    _same_outputs(rdn, import_checkpoint(tmp_path / "rdn-liif.pth"))


def test_lte_checkpoint(tmp_path) -> None:
    lte = _randomise(LTE(encoder={"name": "edsr_baseline", "n_resblocks": 1, "n_feats": 8}, hidden_dim=16, hidden=[8]))
    args = {"encoder_spec": {"name": "edsr-baseline", "args": {"n_resblocks": 1, "n_feats": 8, "no_upsampling": True}},
            "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [8]}}, "hidden_dim": 16}  # fmt: skip
    _save_spec(tmp_path / "lte.pth", "lte", args, _liif_upstream_sd(lte, rdn=False))
    loaded = import_liif_lte(tmp_path / "lte.pth")
    assert isinstance(loaded, LTE)
    _same_outputs(lte, loaded)


def test_lte_fast_checkpoint(tmp_path) -> None:
    """LTE+ (``lte-fast``, ltep.py): 1x1-conv MLP ``layers.{0,2,4,6}``, frequencies paired (m, m + K)."""
    lte = _randomise(LTE(encoder={"name": "edsr_baseline", "n_resblocks": 1, "n_feats": 8}, hidden_dim=16,
                         hidden=[16, 16, 16], freq_layout="halves"))  # fmt: skip
    sd = {}
    for k, v in _liif_upstream_sd(lte, rdn=False).items():  # upstream keeps the MLP as Conv2d(., ., 1)
        sd[k.removeprefix("imnet.")] = v[:, :, None, None] if k.startswith("imnet.") and v.dim() == 2 else v
    assert {"layers.0.weight", "layers.6.bias"} <= set(sd) and sd["layers.0.weight"].shape == (16, 16, 1, 1)
    args = {"encoder_spec": {"name": "edsr-baseline", "args": {"n_resblocks": 1, "n_feats": 8, "no_upsampling": True}},
            "num_layer": 3, "hidden_dim": 16, "out_dim": 3}  # fmt: skip
    _save_spec(tmp_path / "lte-fast.pth", "lte-fast", args, sd)
    loaded = import_checkpoint(tmp_path / "lte-fast.pth")
    assert isinstance(loaded, LTE) and loaded.config["freq_layout"] == "halves" and loaded.config["hidden"] == [16] * 3
    _same_outputs(lte, loaded)


def _upstream_swinir_sd(model: torch.nn.Module, img_size: int = 48) -> dict[str, torch.Tensor]:
    """decodelab's SwinIR-LIIF/LTE state dict plus the buffers upstream stores: every block's
    ``attn.relative_position_index`` and each shifted block's ``attn_mask`` for its ``img_size``
    (taken from timm's Swin block, an independent implementation of the same rule)."""
    st = pytest.importorskip("timm.models.swin_transformer")
    enc = model.encoder
    sd = dict(model.state_dict())
    ws = enc.window_size
    for i, layer in enumerate(enc.layers):
        for j, block in enumerate(layer.residual_group.blocks):
            dim, heads = block.norm1.normalized_shape[0], block.attn.heads
            ref = st.SwinTransformerBlock(dim, (img_size,) * 2, num_heads=heads, window_size=ws, shift_size=block.shift)
            prefix = f"encoder.layers.{i}.residual_group.blocks.{j}."
            sd[prefix + "attn.relative_position_index"] = ref.attn.relative_position_index.clone()
            if block.shift:
                sd[prefix + "attn_mask"] = ref.attn_mask.clone()
    return sd


def test_swinir_lte_and_liif_checkpoints(tmp_path) -> None:
    enc = dict(SWINIR_TEST)
    lte = _randomise(LTE(encoder=enc, hidden_dim=16, hidden=[8]))
    keys = {k.removeprefix("encoder.") for k in lte.state_dict() if k.startswith("encoder.")}
    expected = {"conv_first", "patch_embed.norm", "norm", "conv_after_body", "conv_before_upsample.0"}
    for i, depth in enumerate(enc["depths"]):
        expected.add(f"layers.{i}.conv")
        for j in range(depth):
            b = f"layers.{i}.residual_group.blocks.{j}."
            expected |= {b + m for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")}
    tables = {f"layers.{i}.residual_group.blocks.{j}.attn.relative_position_bias_table"
              for i, d in enumerate(enc["depths"]) for j in range(d)}  # fmt: skip
    assert keys == {f"{m}.{p}" for m in expected for p in ("weight", "bias")} | tables  # upstream's names
    sd = _upstream_swinir_sd(lte)
    masks = [v for k, v in sd.items() if k.endswith("attn_mask")]  # one per shifted block, for 48x48 (144 windows)
    assert len(masks) == 2 and masks[0].shape == (144, 16, 16)
    args = {"encoder_spec": {"name": "swinir", "args": {"no_upsampling": True}},
            "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [8]}}, "hidden_dim": 16}  # fmt: skip
    _save_spec(tmp_path / "swinir-lte.pth", "lte", args, sd)
    loaded = import_checkpoint(tmp_path / "swinir-lte.pth")
    assert isinstance(loaded, LTE) and loaded.config["encoder"] == {**enc, "depths": [2, 2], "num_heads": [2, 3]}
    _same_outputs(lte, loaded)  # a 13x17 input: padded to 16x20 for the 4-pixel windows

    liif = _randomise(LIIF(encoder=enc, hidden=[16]))
    args = {"encoder_spec": {"name": "swinir", "args": {"no_upsampling": True}},
            "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16]}}}  # fmt: skip
    _save_spec(tmp_path / "swinir-liif.pth", "liif", args, _upstream_swinir_sd(liif))
    _same_outputs(liif, import_liif_lte(tmp_path / "swinir-liif.pth"))

    bad = dict(sd)
    key = next(k for k in bad if k.endswith("attn_mask"))
    bad[key] = torch.zeros_like(bad[key])
    _save_spec(tmp_path / "bad.pth", "lte", args | {"imnet_spec": {"name": "mlp", "args": {"hidden_list": [8]}},
                                                    "hidden_dim": 16}, bad)  # fmt: skip
    with pytest.raises(ValueError, match="is not the shifted-window mask"):
        import_liif_lte(tmp_path / "bad.pth")
    three = {k.replace(".conv.weight", ".conv.0.weight") if k.startswith("encoder.layers.") else k: v
             for k, v in sd.items()}  # fmt: skip
    _save_spec(tmp_path / "3conv.pth", "lte", args, three)
    with pytest.raises(ValueError, match="resi_connection='3conv' is not supported"):
        import_liif_lte(tmp_path / "3conv.pth")


def test_bad_checkpoints_are_refused_clearly(tmp_path) -> None:
    lte = _randomise(LTE(encoder={"name": "edsr_baseline", "n_resblocks": 1, "n_feats": 8}, hidden_dim=16, hidden=[8]))
    sd = _liif_upstream_sd(lte, rdn=False)
    del sd["phase.weight"]
    args = {"encoder_spec": {"name": "edsr-baseline", "args": {"n_resblocks": 1, "n_feats": 8, "no_upsampling": True}},
            "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [8]}}, "hidden_dim": 16}  # fmt: skip
    _save_spec(tmp_path / "missing.pth", "lte", args, sd)
    with pytest.raises(CheckpointMismatchError, match="phase.weight"):
        import_liif_lte(tmp_path / "missing.pth")
    swin = {**args, "encoder_spec": {"name": "swinir", "args": {"no_upsampling": True}}}
    _save_spec(tmp_path / "swin.pth", "lte", swin, sd)  # an EDSR state dict under a SwinIR spec
    with pytest.raises(ValueError, match="not a SwinIR encoder"):
        import_liif_lte(tmp_path / "swin.pth")
    _save_spec(tmp_path / "metasr.pth", "metasr", args, sd)
    with pytest.raises(ValueError, match="model 'metasr' is not supported; decodelab reads liif, lte, lte-fast"):
        import_checkpoint(tmp_path / "metasr.pth")
    torch.save({"model": {"name": "liif", "args": args, "sd": sd}, "obj": _Unpicklable()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="weights-only"):
        import_checkpoint(tmp_path / "evil.pth")
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="unrecognised layout"):
        import_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        import_checkpoint(tmp_path / "nope.pth")


class _Unpicklable:
    """A custom class: loading it would need arbitrary unpickling, which weights_only refuses."""
