"""``--drafter`` / ``--upsampler`` on the command line (MuLo-SD, ``mulo``) and the speed-quality plot script.

A tiny 4x4-token target and its 2x2-token drafter (registry test models) are saved as pipeline
directories; the commands run on them as on the shipped worlds.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import decodelab
import decodelab.vision.pipeline as pipeline_module
from decodelab.cli import build_parser, main
from decodelab.vision.pipeline import ImageGenerationPipeline

REPO = Path(__file__).resolve().parents[2]


def _gpt(seed: int, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = decodelab.create_model("test_gpt", **kw).eval()
    torch.nn.init.normal_(m.output.weight, 0.0, 0.6)
    return m


def _vq(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return decodelab.create_model("test_vq").eval()


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """(target pipeline directory without a drafter, drafter pipeline directory)."""
    target = ImageGenerationPipeline(_gpt(0), _vq(10), info={"name": "tiny"}).save_pretrained(tmp_path / "target")
    low = ImageGenerationPipeline(_gpt(1, block_size=4), _vq(11), info={"name": "tiny-lowres"})
    return target, low.save_pretrained(tmp_path / "drafter")


def test_generate_with_a_drafter_records_it_and_its_forwards(dirs, tmp_path) -> None:
    target, drafter = dirs
    out = tmp_path / "gen"
    rc = main(["generate", "--model", str(target), "--class-id", "1", "4", "--decoder", "mulo",
               "--decoder-arg", "tau=0.05", "--drafter", str(drafter), "--upsampler", "bilinear",
               "--seed", "2", "--out", str(out)])  # fmt: skip
    assert rc == 0
    rec = json.loads((out / "record.json").read_text())
    assert rec["decoder"] == "mulo" and rec["drafter"] == str(drafter) and rec["upsampler"] == "bilinear"
    nfe = rec["decode"][0]["nfe_by_model"]
    assert nfe["target"] == rec["nfe"] and nfe["drafter"] >= 2
    assert len(list(out.glob("*.png"))) == 2 and Image.open(next(out.glob("*.png"))).size == (16, 16)


def test_missing_drafter_errors_name_the_asset_and_the_training_config(dirs, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(pipeline_module, "ASSETS_DIR", tmp_path / "assets")  # no drafter assets installed
    rc = main(["generate", "--model", "fmnist-c2i", "--class-id", "1", "--decoder", "mulo", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("decodelab generate: error: the drafter 'fmnist-c2i-lowres' of fmnist-c2i")
    assert "decodelab train --config configs/embedded/fmnist-c2i-lowres-gpt.yaml" in err
    assert "configs/embedded/fmnist-c2i-lowres-vq.yaml" in err and len(err.strip().splitlines()) == 1
    target, _ = dirs
    rc = main(["bench", "decode", "--model", str(target), "--drafter", "shapes-t2i-lowres", "--decoders", "ar,mulo",
               "--num-images", "1", "--repeats", "1"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "'shapes-t2i-lowres'" in err
    assert "decodelab train --config configs/embedded/shapes-t2i-lowres-gpt.yaml" in err
    rc = main(["sample", "--model", str(target), "--num-samples", "2", "--decoder", "mulo", "--out",
               str(tmp_path / "s"), "--no-progress"])  # fmt: skip
    assert rc == 2 and "tiny has no drafter" in capsys.readouterr().err
    assert not (tmp_path / "s" / "manifest.json").exists()
    rc = main(["generate", "--model", str(target), "--class-id", "1", "--decoder", "mulo", "--drafter",
               str(target), "--out", str(tmp_path)])  # fmt: skip
    assert rc == 2 and "4x4 token grid but tiny 4x4" in capsys.readouterr().err


def test_bench_decode_reports_drafter_forwards_and_per_decoder_upsamplers(dirs, tmp_path, capsys) -> None:
    target, drafter = dirs
    path = tmp_path / "bench.json"
    rc = main(["bench", "decode", "--model", str(target), "--drafter", str(drafter), "--decoders",
               "ar,sjd,mulo:tau=0.05:k=2,mulo:tau=0.05:k=2:upsampler=nearest", "--num-images", "2", "--repeats",
               "1", "--threads", "1", "--json", str(path)])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "drf/img" in text
    rep = json.loads(path.read_text())["decoders"]
    assert set(rep) == {"ar", "sjd", "mulo:tau=0.05:k=2", "mulo:tau=0.05:k=2:upsampler=nearest"}
    for label in ("mulo:tau=0.05:k=2", "mulo:tau=0.05:k=2:upsampler=nearest"):
        r = rep[label]
        assert r["settings"]["tau"] == 0.05 and r["settings"]["k"] == 2 and "upsampler" not in r["settings"]
        assert r["forwards_by_model"]["drafter"] > 0 and r["forwards_by_model"]["target"] == r["batch_forwards"]
        assert r["components"]["drafter"] == str(drafter)
    assert rep["mulo:tau=0.05:k=2"]["components"]["upsampler"] == "bicubic"
    assert rep["mulo:tau=0.05:k=2:upsampler=nearest"]["components"]["upsampler"] == "nearest"
    assert "drafter" not in rep["sjd"]["forwards_by_model"] and rep["sjd"]["components"] == {}
    rc = main(["bench", "decode", "--model", str(target), "--decoders", "ar,sjd:upsampler=lsr", "--num-images", "1",
               "--repeats", "1"])  # fmt: skip
    assert rc == 2 and "runs no drafter" in capsys.readouterr().err


def test_bench_pairs_take_the_drafter_of_their_model(dirs, tmp_path) -> None:
    target, drafter = dirs
    path = tmp_path / "pairs.json"
    pairs = f"{target}:ar,{target}:mulo:tau=0.05:drafter={drafter}"
    assert main(["bench", "decode", "--pairs", pairs, "--num-images", "2", "--repeats", "1", "--json", str(path)]) == 0
    rep = json.loads(path.read_text())["decoders"]
    assert rep[f"{target}:mulo:tau=0.05:drafter={drafter}"]["forwards_by_model"]["drafter"] > 0


def test_sample_resumes_with_a_drafter(dirs, tmp_path) -> None:
    target, drafter = dirs
    out = tmp_path / "s"
    args = ["sample", "--model", str(target), "--num-samples", "4", "--batch-size", "2", "--decoder", "mulo",
            "--drafter", str(drafter), "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    rec = json.loads((out / "sample_record.json").read_text())
    assert rec["sampling_run"]["settings"]["drafter"] == str(drafter) and rec["sampling_run"]["generated"] == 4
    assert main(args) == 0
    assert json.loads((out / "sample_record.json").read_text())["sampling_run"]["resumed"] == 4
    assert main([*args, "--upsampler", "bilinear"]) == 2  # other settings: refused


@pytest.mark.parametrize(
    "argv",
    [["eval", "fmnist", "--model", "m", "--out", "o"], ["eval", "shapes", "--model", "m", "--out", "o"],
     ["eval", "geneval", "--shapes-prompts", "1", "--out", "o"], ["sample", "--model", "m", "--num-samples", "1",
     "--out", "o"], ["bench", "decode", "--model", "m"], ["generate", "--model", "m", "--class-id", "1"]],
    ids=["eval-fmnist", "eval-shapes", "eval-geneval", "sample", "bench", "generate"],
)  # fmt: skip
def test_every_generating_command_takes_drafter_and_upsampler(argv) -> None:
    args = build_parser().parse_args([*argv, "--drafter", "d", "--upsampler", "lsr"])
    assert args.drafter == "d" and args.upsampler == "lsr"


# --------------------------------------------------------------------------- the speed-quality plot
def test_plot_speed_quality_matches_evaluations_to_bench_decoders(tmp_path, monkeypatch, capsys) -> None:
    bench = {"model": "shapes-t2i", "num_images": 4, "batch_size": 1, "threads": 2, "decoders": {
        "ar": {"decoder": "ar", "settings": {}, "components": {}, "wall_speedup": 1.0, "step_compression": 1.0,
               "mean_nfe_per_image": 256.0},
        "mulo:tau=0.05": {"decoder": "mulo", "settings": {"tau": 0.05, "k": 1}, "components": {
            "drafter": "shapes-t2i-lowres", "upsampler": "bicubic"}, "wall_speedup": 1.8, "step_compression": 3.0,
            "mean_nfe_per_image": 85.0, "forwards_per_image_by_model": {"target": 85.0, "drafter": 70.0}},
    }}  # fmt: skip
    (tmp_path / "bench.json").write_text(json.dumps(bench))

    def evaluation(name: str, decoder: str, kwargs: dict, extra: dict, score: float) -> str:
        doc = {"generation": {"settings": {"decoder": decoder, "decoder_kwargs": kwargs, **extra}},
               "metrics": {"geneval_overall (shapes detector)": score, "num_images": 24}}  # fmt: skip
        (tmp_path / name).write_text(json.dumps(doc))
        return str(tmp_path / name)

    q = [evaluation("ar.json", "ar", {}, {}, 0.71),
         evaluation("mulo.json", "mulo", {"tau": 0.05, "k": 1}, {"drafter": "shapes-t2i-lowres",
                    "upsampler": "bicubic"}, 0.69),
         evaluation("other.json", "mulo", {"tau": 0.2, "k": 1}, {}, 0.1)]  # fmt: skip
    out = tmp_path / "plot.png"
    script = REPO / "benchmarks" / "plot_speed_quality.py"
    monkeypatch.setattr(sys, "argv", [str(script), str(tmp_path / "bench.json"), "--quality", *q, "--out", str(out)])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(script), run_name="__main__")
    assert e.value.code == 0
    assert "2 decoders, y = geneval_overall (shapes detector)" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 400
    mod = runpy.run_path(str(script))
    res = mod["plot"]([tmp_path / "bench.json"], q, tmp_path / "p2.png")
    assert res["panels"][0]["points"] == {"ar": [1.0, 0.71], "mulo:tau=0.05": [1.8, 0.69]}
    res = mod["plot"]([tmp_path / "bench.json"], [], tmp_path / "p3.png")  # no evaluations: speed only
    assert res["panels"][0]["metric"] is None and res["panels"][0]["points"]["mulo:tau=0.05"] == [85.0, 1.8]
    assert mod["main"]([str(tmp_path / "bench.json"), "--quality", q[0], "--metric", "fid", "--out",
                        str(tmp_path / "p4.png")]) == 2  # fmt: skip


def test_demo_adds_mulo_for_a_pipeline_with_a_drafter(dirs, tmp_path) -> None:
    target, drafter = dirs
    pipe = ImageGenerationPipeline.from_pretrained(target)
    pipe.set_drafter(str(drafter))
    carried = pipe.save_pretrained(tmp_path / "carried")
    out = tmp_path / "demo"
    mulo = "mulo:tau=0.05:k=2:drafter_decoder=sjd"
    rc = main(["demo", "--out", str(out), "--model", str(carried), "--model", str(target), "--num-images", "2",
               "--decoders", "ar,sjd", "--mulo", mulo, "--no-restoration", "--no-brain"])  # fmt: skip
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary[str(carried)]["decoders"]) == {"ar", "sjd", mulo}
    assert set(summary[str(target)]["decoders"]) == {"ar", "sjd"}  # no drafter: no mulo row
    assert summary[str(carried)]["decoders"][mulo]["forwards_per_image_by_model"]["drafter"] >= 1
    assert "drafter)" in (out / "index.html").read_text()
