"""Hostile checkpoints: no loader runs code from a file, and no ``torch.load`` in ``src/`` may unpickle freely."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch

SRC = Path(__file__).resolve().parents[1] / "src" / "decodelab"


class _Payload(torch.nn.Module):
    """A TorchScript module whose ``__setstate__`` writes a file (``torch.from_file(shared=True)``)."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.buf = torch.zeros(1)  # an attribute, so TorchScript keeps the write below (no dead-code removal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.target = state[0]
        self.training = state[1]
        self.buf = torch.from_file(state[0], shared=True, size=8, dtype=torch.uint8)
        self.buf.fill_(65)


def _torchscript_payload(tmp_path: Path, suffix: str) -> tuple[Path, Path]:
    marker = tmp_path / f"pwned{suffix.replace('.', '_')}"
    path = tmp_path / f"evil{suffix}"
    torch.jit.save(torch.jit.script(_Payload(str(marker))), str(path))
    return path, marker


def test_payload_really_writes_when_loaded_by_torch_jit(tmp_path) -> None:
    """The payload is live: ``torch.jit.load`` creates the marker file (so the tests below mean something)."""
    path, marker = _torchscript_payload(tmp_path, ".pt")
    torch.jit.load(str(path))
    assert marker.read_bytes() == b"A" * 8


def _loaders():
    from decodelab.derain import import_mcwnet, read_mcwnet_state_dict
    from decodelab.derain.infer import load_derainer
    from decodelab.eval.features import (
        load_alexnet,
        load_efficientnet_b1,
        load_efficientnet_lite0,
        load_fid_inception,
        load_inception_v3,
    )
    from decodelab.eval.quality import load_lpips
    from decodelab.hub import read_torch_checkpoint
    from decodelab.train.common import load_checkpoint
    from decodelab.vision.adapters.chameleon_vq import import_chameleon_vq
    from decodelab.vision.lsr.importers import import_checkpoint, import_gblsr_native, import_liif_lte, read_state_dict
    from decodelab.vision.models.gpt import import_llamagen_gpt
    from decodelab.vision.models.nar import import_nar
    from decodelab.vision.tokenizers.vq import import_llamagen_vq

    return {
        "import_mcwnet": lambda p: import_mcwnet(p, "test_mcwnet"),
        "import_mcwnet_inferred": lambda p: import_mcwnet(p, None),
        "read_mcwnet_state_dict": read_mcwnet_state_dict,
        "load_derainer": load_derainer,
        "read_torch_checkpoint": read_torch_checkpoint,
        "train_resume": load_checkpoint,
        "lsr_import_checkpoint": import_checkpoint,
        "lsr_import_gblsr_native": import_gblsr_native,
        "lsr_import_liif_lte": import_liif_lte,
        "lsr_read_state_dict": read_state_dict,
        "import_llamagen_gpt": lambda p: import_llamagen_gpt(p, "test_gpt"),
        "import_llamagen_vq": lambda p: import_llamagen_vq(p, "test_vq"),
        "import_nar": lambda p: import_nar(p, "test_nar"),
        "import_chameleon_vq": import_chameleon_vq,
        "load_lpips": lambda p: load_lpips(p, check_hash=False),
        "load_lpips_heads": lambda p: load_lpips(p, heads_weights=p, check_hash=False),
        "load_fid_inception": lambda p: load_fid_inception(p, check_hash=False),
        "load_efficientnet_lite0": lambda p: load_efficientnet_lite0(p, check_hash=False),
        "load_alexnet": lambda p: load_alexnet(p, check_hash=False),
        "load_inception_v3": lambda p: load_inception_v3(p, check_hash=False),
        "load_efficientnet_b1": lambda p: load_efficientnet_b1(p, check_hash=False),
    }


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".tar"])
@pytest.mark.parametrize("loader", sorted(_loaders()))
def test_torchscript_checkpoint_runs_nothing(tmp_path, loader: str, suffix: str) -> None:
    path, marker = _torchscript_payload(tmp_path, suffix)
    with pytest.raises((ValueError, FileNotFoundError)):
        _loaders()[loader](path)
    assert not marker.exists(), f"{loader} executed code from a TorchScript archive"


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".tar"])
def test_torchscript_checkpoint_through_the_cli_runs_nothing(tmp_path, suffix: str, capsys) -> None:
    from PIL import Image

    from decodelab.cli import main

    path, marker = _torchscript_payload(tmp_path, suffix)
    img = tmp_path / "in.png"
    Image.new("RGB", (16, 16), (120, 30, 200)).save(img)
    rc = main(["derain", str(img), "--out", str(tmp_path / "out"), "--model", str(path)])
    assert rc == 2 and not marker.exists()
    assert "TorchScript" in capsys.readouterr().err
    rc = main(["eval", "derain", "--data", "synthetic", "--max-images", "1", "--model", str(path)])
    assert rc == 2 and not marker.exists()
    for command in (["upscale", str(img), "--scale", "2"], ["reconstruct", str(img), "--size", "20x20"]):
        rc = main([*command, "--out", str(tmp_path / "x.png"), "--model", str(path)])
        assert rc == 2 and not marker.exists(), command
        assert "TorchScript" in capsys.readouterr().err


def test_torchscript_refusal_names_the_problem(tmp_path) -> None:
    from decodelab.derain import import_mcwnet

    path, _ = _torchscript_payload(tmp_path, ".pth")
    with pytest.raises(ValueError, match="TorchScript"):
        import_mcwnet(path, None)


def test_legacy_format_pickled_module_still_reads(tmp_path) -> None:
    """A pre-1.6 (non-zip) ``torch.save`` file of a state dict is read by the restricted reader."""
    from decodelab.derain import read_mcwnet_state_dict, test_mcwnet, to_upstream_state_dict

    torch.manual_seed(0)
    sd = to_upstream_state_dict(test_mcwnet())
    path = tmp_path / "legacy.pth"
    # a non-tensor entry makes weights_only reading fail and sends the file to the restricted reader
    torch.save({"epoch": 3, "model": sd, "note": {1, 2}}, path, _use_new_zipfile_serialization=False)
    got = read_mcwnet_state_dict(path)
    assert got.keys() == {k.removeprefix("module.") for k in sd}
    assert all(torch.equal(got[k.removeprefix("module.")], v) for k, v in sd.items())


def _torch_load_calls() -> list[tuple[Path, int, ast.Call]]:
    calls = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                base = node.func.value
                if isinstance(base, ast.Name) and base.id == "torch":
                    calls.append((path, node.lineno, node))
    return calls


def _weights_only_ok(call: ast.Call) -> bool:
    kw = {k.arg: k.value for k in call.keywords}
    value = kw.get("weights_only")
    return isinstance(value, ast.Constant) and value.value is True


def test_no_torch_load_without_weights_only_true_in_src() -> None:
    calls = _torch_load_calls()
    assert calls, "the scan found no torch.load call at all: it is not looking at the package"
    bad = [f"{p.relative_to(SRC)}:{line}" for p, line, c in calls if not _weights_only_ok(c)]
    assert not bad, f"torch.load without weights_only=True: {bad}"


def test_weights_only_scan_catches_a_bad_call() -> None:
    """The scan above fails on ``weights_only=False`` and on a missing argument (it can fail)."""
    for src in ("torch.load(p, weights_only=False)", "torch.load(p)", "torch.load(p, weights_only=flag)"):
        call = ast.parse(src).body[0].value
        assert not _weights_only_ok(call), src
    assert _weights_only_ok(ast.parse("torch.load(p, map_location='cpu', weights_only=True)").body[0].value)


def test_no_pickle_module_argument_anywhere_in_src() -> None:
    """``torch.load(pickle_module=...)`` hands TorchScript archives to ``torch.jit.load``: never use it."""
    hits = [f"{p.relative_to(SRC)}" for p in SRC.rglob("*.py") if "pickle_module" in p.read_text()]
    assert not hits, hits


def test_payload_marker_is_not_created_by_merely_writing(tmp_path) -> None:
    path, marker = _torchscript_payload(tmp_path, ".pt")
    assert path.is_file() and not marker.exists() and os.path.getsize(path) > 0
