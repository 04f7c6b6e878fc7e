"""Loading the MCW-Net authors' checkpoints: state dicts, wrappers, pickled DataParallel modules."""

from __future__ import annotations

import os
import sys
import types

import pytest
import torch
from torch import nn

from decodelab.derain import import_mcwnet, read_mcwnet_state_dict, test_mcwnet, to_upstream_state_dict
from decodelab.hub import CheckpointMismatchError


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = test_mcwnet()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # every tensor distinct, non-local W included
    return m


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("wrap", ["plain", "module_prefix", "model_key", "state_dict_key"])
def test_state_dict_layouts_round_trip(tmp_path, wrap: str) -> None:
    src = _model()
    sd = to_upstream_state_dict(src, data_parallel=wrap != "plain")
    obj = {"plain": sd, "module_prefix": sd, "model_key": {"epoch": 3, "model": sd},
           "state_dict_key": {"state_dict": sd, "epoch": 1}}[wrap]  # fmt: skip
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    loaded = import_mcwnet(path, "test_mcwnet")
    assert _same(src, loaded) and not loaded.training


class _FakeUpstreamNet(nn.Module):
    """Stands in for the authors' ``MCW_Net_small.Net``: same state-dict layout, other class."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        for name, child in inner.named_children():
            self.add_module(name, child)
        self.name = "MCW_Net_small"


def test_pickled_dataparallel_module_is_read_without_importing_it(tmp_path, monkeypatch) -> None:
    """The authors' train.py saves {"epoch", "model": nn.DataParallel(Net())} (a pickled module)."""
    fake = types.ModuleType("MCW_Net_small")
    _FakeUpstreamNet.__module__ = "MCW_Net_small"
    _FakeUpstreamNet.__qualname__ = "Net"
    fake.Net = _FakeUpstreamNet
    monkeypatch.setitem(sys.modules, "MCW_Net_small", fake)
    src = _model(1)
    path = tmp_path / "RAIN100H_MCW_small.pth"
    torch.save({"epoch": 250, "model": nn.DataParallel(_FakeUpstreamNet(src))}, path)
    monkeypatch.delitem(sys.modules, "MCW_Net_small")  # the upstream module is not importable here
    with pytest.raises(ValueError, match="weights-only"):
        from decodelab.hub import read_torch_checkpoint

        read_torch_checkpoint(path)
    loaded = import_mcwnet(path, "test_mcwnet")
    assert _same(src, loaded)
    assert next(iter(read_mcwnet_state_dict(path))) == "conv_i.weight"  # "module." stripped


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_restricted_unpickler_runs_no_code(tmp_path) -> None:
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.target = str(marker)
    path = tmp_path / "evil.pth"
    torch.save({"model": evil}, path)
    with pytest.raises(ValueError, match="neither a state dict nor a pickled nn.Module"):
        read_mcwnet_state_dict(path)
    assert not marker.exists()


def test_mismatch_errors_name_the_keys_and_hint_the_size(tmp_path) -> None:
    path = tmp_path / "small.pth"
    torch.save(to_upstream_state_dict(_model()), path)
    with pytest.raises(CheckpointMismatchError, match="shape mismatches") as e:
        import_mcwnet(path, "test_mcwnet", oc=6)
    assert "DCR_block11.0.conv_1.weight" in str(e.value) and "base width is oc=4" in str(e.value)
    sd = to_upstream_state_dict(_model(), data_parallel=False)
    sd.pop("conv_f.bias")
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(CheckpointMismatchError) as e:
        import_mcwnet(path, "test_mcwnet")
    assert "missing keys: conv_f.bias" in str(e.value) and "unexpected keys: extra.weight" in str(e.value)


def test_architecture_is_inferred_from_shapes(tmp_path) -> None:
    src = test_mcwnet(grids=((16, 4), (8, 2), (4, 1), (4, 1)))
    path = tmp_path / "x.pth"
    torch.save(to_upstream_state_dict(src), path)
    m = import_mcwnet(path, None)
    assert m.config["oc"] == 4 and m.config["se_reduction"] == 2 and _same(src, m)


def test_missing_and_unreadable_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="yechanp/MCW-Net"):
        import_mcwnet(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError):
        import_mcwnet(bad)
