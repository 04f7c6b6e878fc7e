"""benchmarks/bench_adapters.py runs its whole code path on tiny models (real weights are not available here)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from decodelab.speculative import SamplingConfig
from decodelab.vision.adapters.emu3 import Emu3Adapter

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_adapters.py"


def _script():
    spec = importlib.util.spec_from_file_location("bench_adapters", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_script_on_a_tiny_janus_checkpoint(janus_dir, tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    rc = _script().main(["--model", "janus-pro-1b", "--weights", f"janus-pro-1b={janus_dir}", "--num-prompts", "2",
                         "--window", "4", "--repeats", "1", "--threads", "1", "--prompt-length", "32",
                         "--json", str(out)])  # fmt: skip
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["threads"] == 1
    fam = report["models"]["janus-pro-1b"]
    assert fam["grid"] == [4, 4] and set(fam["decoders"]) == {"ar", "sjd(L=4)", "sjd_coupled(L=4)"}
    ar = fam["decoders"]["ar"]
    assert ar["mean_nfe_per_image"] == 16 and ar["step_compression"] == 1.0
    for r in fam["decoders"].values():
        assert r["lossless"] and 1 <= r["mean_nfe_per_image"] <= 16
        assert r["step_compression"] == 16 / r["mean_nfe_per_image"]
    assert "sjd_coupled(L=4)" in capsys.readouterr().out


def test_bench_model_on_a_family_with_row_eols(make_emu3) -> None:
    ids = torch.tensor([[0, 0, 1, 10, 11, 4, 5], [1, 12, 13, 14, 15, 4, 5]])
    m = Emu3Adapter(make_emu3(head_std=0.3), (3, 4), prompt_length=7, negative_prompt_ids=[1, 20])
    report = _script().bench_model(m, ids, ids != 0, SamplingConfig(cfg_scale=3.0, top_k=8), window=5, repeats=1)
    assert report["num_tokens"] == 12
    assert all(1 <= r["mean_nfe_per_image"] <= 12 for r in report["decoders"].values())


def test_paper_configs_are_valid_bench_options() -> None:
    from decodelab.vision.adapters import ADAPTERS

    mod = _script()
    configs = sorted((SCRIPT.parents[1] / "configs" / "adapters").glob("*.yaml"))
    assert len(configs) >= 4
    for path in configs:
        ap = mod.build_parser()
        args = ap.parse_args(["--config", str(path), "--window", "7"])
        mod.apply_config(ap, args, ["--config", str(path), "--window", "7"])
        assert args.window == 7  # the command line wins over the file
        assert all(m.replace("-", "_") in ADAPTERS for m in args.model), path.name
        assert args.cfg_scale is not None and args.init in ("random", "horizontal", "vertical")


def test_a_config_with_an_unknown_key_is_an_error(tmp_path) -> None:
    import pytest

    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [janus-pro-1b]\nwindw: 16\n")
    mod = _script()
    ap = mod.build_parser()
    with pytest.raises(ValueError, match="unknown option"):
        mod.apply_config(ap, ap.parse_args(["--config", str(bad)]), ["--config", str(bad)])
