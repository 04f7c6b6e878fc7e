"""The console script: generate, listings, bench decode, demo (on the tiny untrained pipeline)."""

from __future__ import annotations

import json

import torch
from PIL import Image

from decodelab.cli import main


def test_generate_writes_pngs_and_record(tmp_path, capsys) -> None:
    out = tmp_path / "gen"
    rc = main(["generate", "--model", "test-c2i", "--class-id", "1", "3", "--num-images", "2",
               "--decoder", "sjd", "--decoder-arg", "window=8", "--decoder-arg", "init=vertical",
               "--seed", "5", "--out", str(out)])  # fmt: skip
    assert rc == 0
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 4
    assert Image.open(pngs[0]).size == (16, 16)
    rec = json.loads((out / "record.json").read_text())
    assert rec["model"] == "test-c2i" and rec["decoder"] == "sjd" and rec["seed"] == 5
    assert rec["decoder_kwargs"]["window"] == 8 and rec["decoder_kwargs"]["init"] == "vertical"
    assert rec["trained"] is False
    assert 1 <= rec["nfe"] <= 16
    assert [i["condition"] for i in rec["images"]] == [1, 1, 3, 3]
    assert "untrained" in capsys.readouterr().out


def test_generate_is_reproducible(tmp_path) -> None:
    for d in ("a", "b"):
        assert (
            main(["generate", "--model", "test-c2i", "--class-id", "2", "--seed", "9", "--out", str(tmp_path / d)]) == 0
        )
    a = (tmp_path / "a" / "0000_class2.png").read_bytes()
    assert a == (tmp_path / "b" / "0000_class2.png").read_bytes()


def test_bad_input_exits_with_a_clear_error(tmp_path, capsys) -> None:
    assert main(["generate", "--model", "test-c2i", "--class-id", "99", "--out", str(tmp_path)]) == 2
    assert "out of range" in capsys.readouterr().err
    assert (
        main(["generate", "--model", "test-c2i", "--class-id", "1", "--decoder", "nope", "--out", str(tmp_path)]) == 2
    )
    assert "unknown decoder 'nope'" in capsys.readouterr().err
    assert main(["generate", "--model", "no-such-model", "--class-id", "1", "--out", str(tmp_path)]) == 2
    assert main(["generate", "--model", "test-c2i", "--class-id", "1", "--decoder-arg", "windw=3",
                 "--decoder", "sjd", "--out", str(tmp_path)]) == 2  # fmt: skip
    assert "valid arguments" in capsys.readouterr().err


def test_listings(capsys) -> None:
    assert main(["decoders"]) == 0
    text = capsys.readouterr().out
    for name in ("ar", "jacobi", "sjd", "sjd_coupled"):
        assert f"  {name} " in text
    assert "[lossless]" in text and "[greedy_equals_ar]" in text and "(decodelab.speculative.sjd)" in text
    assert main(["models", "llamagen_*"]) == 0
    text = capsys.readouterr().out
    assert "llamagen_gpt_b" in text and "llamagen_vq_16" in text and "test_c2i" in text
    assert "(decodelab.vision.models.gpt)" in text


def test_bench_decode_json(tmp_path) -> None:
    path = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        rc = main(["bench", "decode", "--model", "test-c2i", "--decoders", "ar,jacobi,sjd:window=4", "--num-images",
                   "3", "--batch-size", "2", "--repeats", "1", "--threads", "1", "--json", str(path)])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    rep = json.loads(path.read_text())
    assert rep["threads"] == 1  # the thread count is part of the record
    decs = rep["decoders"]
    assert set(decs) == {"ar", "jacobi", "sjd:window=4"}
    assert decs["ar"]["mean_nfe_per_image"] == 16 and decs["ar"]["step_compression"] == 1.0
    assert decs["sjd:window=4"]["settings"]["window"] == 4
    assert [decs[d]["expectation"] for d in ("ar", "jacobi", "sjd:window=4")] == ["reference", "greedy_equals_ar",
                                                                                 "lossless"]  # fmt: skip
    from decodelab.vision.bench import format_table

    table = format_table(rep).splitlines()
    assert table[0].split()[:2] == ["decoder", "output"]
    assert [line.split()[1] for line in table[2:]] == ["reference", "greedy", "lossless"]
    for r in decs.values():
        assert r["mean_nfe_per_image"] <= 16
        assert abs(r["step_compression"] - 16 / r["mean_nfe_per_image"]) < 1e-9
        assert sum(int(k) * v for k, v in r["accepted_histogram"].items()) == 3 * 16  # every token fixed once


def test_demo_writes_report(tmp_path) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--model", "test-c2i", "--num-images", "4", "--decoders", "ar,jacobi,sjd",
            "--no-brain"]  # fmt: skip
    assert main(argv) == 0
    page = (out / "index.html").read_text()
    assert "<svg" in page and "test-c2i" in page
    # the output column says what each decoder's tokens are; the greedy gallery says why it looks different
    assert "<td>sample (reference)</td>" in page and "<td>sample, same distribution as ar</td>" in page
    assert "<td>greedy: argmax tokens of ar</td>" in page and page.count("Greedy decoding:") == 1
    assert page.index("Greedy decoding:") > page.index("<h4>jacobi")
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["test-c2i"]["decoders"]) == {"ar", "jacobi", "sjd"}
    assert summary["threads"] == 1  # batch 1: one thread, measured faster for small models
    assert (out / "test-c2i_sjd.png").is_file()


def test_bench_decode_defaults_to_one_thread_at_batch_1_only(tmp_path) -> None:
    from decodelab.cli.bench import BATCH1_THREADS

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        main(["bench", "decode", "--model", "test-c2i", "--decoders", "ar", "--num-images", "1", "--repeats", "1",
              "--json", str(tmp_path / "b1.json")])  # fmt: skip
        assert json.loads((tmp_path / "b1.json").read_text())["threads"] == BATCH1_THREADS == 1
        torch.set_num_threads(2)
        main(["bench", "decode", "--model", "test-c2i", "--decoders", "ar", "--num-images", "2", "--repeats", "1",
              "--batch-size", "2", "--json", str(tmp_path / "b2.json")])  # fmt: skip
        assert json.loads((tmp_path / "b2.json").read_text())["threads"] == 2  # batches keep torch's choice
        torch.set_num_threads(2)
        main(["bench", "decode", "--model", "test-c2i", "--decoders", "ar", "--num-images", "1", "--repeats", "1"])
        assert torch.get_num_threads() == 2  # the command's thread count does not leak into the caller
    finally:
        torch.set_num_threads(threads)


def _tiny_nar_dir(tmp_path):
    """A saved pipeline of a tiny random NAR model (4x4 grid) on the test VQ."""
    import decodelab
    from decodelab.vision.pipeline import ImageGenerationPipeline

    torch.manual_seed(0)
    tok = decodelab.create_model("test_vq")
    nar = decodelab.create_model("test_nar", vocab_size=tok.codebook_size)
    torch.nn.init.normal_(nar.output.weight, 0.0, 0.3)
    return ImageGenerationPipeline(nar, tok, info={"name": "tiny-nar"}).save_pretrained(tmp_path / "nar")


def test_demo_runs_the_nar_decoders_on_a_nar_pipeline(tmp_path) -> None:
    from decodelab.cli.demo import DEMO_NAR_DECODERS

    nar_dir = _tiny_nar_dir(tmp_path)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--model", str(nar_dir), "--num-images", "2", "--no-restoration",
                 "--no-brain"]) == 0  # fmt: skip
    decs = json.loads((out / "summary.json").read_text())[str(nar_dir)]["decoders"]
    assert list(decs) == DEMO_NAR_DECODERS.split(",") == ["nar"]
    assert decs["nar"]["mean_nfe_per_image"] == 7 and decs["nar"]["step_compression"] == 1.0  # the reference


def test_bench_decode_pairs_compares_models(tmp_path) -> None:
    """``--pairs``: ar and sjd on a GPT against nar on a NAR model, same classes and seeds, one report."""
    nar_dir = _tiny_nar_dir(tmp_path)
    path = tmp_path / "pairs.json"
    pairs = f"test-c2i:ar,test-c2i:sjd:window=4,{nar_dir}:nar"
    threads = torch.get_num_threads()
    try:
        rc = main(["bench", "decode", "--pairs", pairs, "--num-images", "3", "--repeats", "1", "--threads", "1",
                   "--json", str(path)])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    rep = json.loads(path.read_text())
    assert rep["reference"] == "test-c2i:ar" and rep["threads"] == 1 and len(rep["decoders"]) == 3
    r_nar = rep["decoders"][f"{nar_dir}:nar"]
    assert r_nar["decoder"] == "nar" and r_nar["mean_nfe_per_image"] == 7  # 4x4 grid: 2n - 1 forwards
    assert r_nar["step_compression"] == 16 / 7 and rep["decoders"]["test-c2i:ar"]["step_compression"] == 1.0
    assert main(["bench", "decode", "--pairs", "test-c2i", "--num-images", "1"]) == 2  # no decoder named
    assert main(["bench", "decode", "--model", "test-c2i", "--pairs", "test-c2i:ar", "--num-images", "1"]) == 2


def test_demo_histogram_thins_its_axis_and_wraps_its_legend() -> None:
    import re

    from decodelab.cli.demo import histogram_svg

    hists = {f"decoder{i}": {1: 5, 3: 2, 200: 1} for i in range(6)}
    svg = histogram_svg(hists)
    ticks = [int(t) for t in re.findall(r'text-anchor="middle">(\d+)</text>', svg)]
    assert len(ticks) <= 13 and ticks[0] == 1 and ticks[-1] == 200  # not 200 overlapping numbers
    assert len(re.findall(r"<rect ", svg)) == 6 * 200
    legend_y = {float(y) for y in re.findall(r'<text x="[\d.]+" y="([\d.]+)" font-size="11"', svg)}
    assert len(legend_y) == 2  # six names, three to a row
    width = float(re.search(r'<svg [^>]*width="(\d+)"', svg).group(1))
    xs = [float(x) for x in re.findall(r'<text x="([\d.]+)" y="[\d.]+" font-size="11"', svg)]
    assert max(xs) < width - 100  # every legend name starts inside the picture
