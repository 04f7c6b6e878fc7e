"""Symbolic detector and GenEval rules for the shapes world."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from decodelab.datasets import shapes as sw
from decodelab.eval import shapes_geneval as sg
from decodelab.registry import METRICS


def det(shape, color="red", box=(10, 10, 20, 20), score=1.0):
    x0, y0, x1, y1 = box
    return sg.Detection(shape, color, tuple(map(float, box)), ((x0 + x1) / 2, (y0 + y1) / 2), 100, score)


def md(tag, include, exclude=None):
    out = {"tag": tag, "include": include, "prompt": "test"}
    if exclude is not None:
        out["exclude"] = exclude
    return out


# ------------------------------------------------------------------------------------------- rules


def test_counting_is_exact():
    meta = md("counting", [{"class": "circle", "count": 2}], [{"class": "circle", "count": 3}])
    two = [det("circle", box=(0, 0, 10, 10)), det("circle", box=(20, 0, 30, 10))]
    assert sg.evaluate_detections(two, meta)[0]
    ok, reason = sg.evaluate_detections(two + [det("circle", box=(40, 0, 50, 10))], meta)
    assert not ok and "circle<3, found 3" in reason
    ok, reason = sg.evaluate_detections(two[:1], meta)
    assert not ok and "circle>=2, found 1" in reason


def test_counting_uses_the_stricter_threshold():
    low = [det("square", score=0.95), det("square", box=(30, 30, 40, 40), score=0.5)]
    counting = md("counting", [{"class": "square", "count": 2}], [{"class": "square", "count": 3}])
    assert not sg.evaluate_detections(low, counting)[0]  # 0.5 <= 0.9: not counted
    assert sg.evaluate_detections(low, md("two_object", [{"class": "square", "count": 2}]))[0]
    assert not sg.evaluate_detections(
        [det("square", score=0.2)], md("single_object", [{"class": "square", "count": 1}])
    )[0]


def test_non_counting_include_is_at_least():
    extra = [det("triangle"), det("triangle", box=(30, 30, 40, 40))]
    assert sg.evaluate_detections(extra, md("single_object", [{"class": "triangle", "count": 1}]))[0]


def test_two_object_needs_both():
    meta = md("two_object", [{"class": "circle", "count": 1}, {"class": "cross", "count": 1}])
    assert sg.evaluate_detections([det("circle"), det("cross", box=(30, 30, 40, 40))], meta)[0]
    ok, reason = sg.evaluate_detections([det("circle"), det("square", box=(30, 30, 40, 40))], meta)
    assert not ok and "cross>=1" in reason


def test_color_rule():
    meta = md("colors", [{"class": "diamond", "count": 1, "color": "blue"}])
    assert sg.evaluate_detections([det("diamond", "blue")], meta)[0]
    ok, reason = sg.evaluate_detections([det("diamond", "green")], meta)
    assert not ok and "blue diamond" in reason
    # only the top-`count` detections are checked (GenEval): a more confident wrong colour fails
    ranked = [det("diamond", "green", score=0.99), det("diamond", "blue", box=(30, 30, 40, 40), score=0.8)]
    assert not sg.evaluate_detections(ranked, meta)[0]
    attr = md(
        "color_attr",
        [{"class": "circle", "count": 1, "color": "red"}, {"class": "square", "count": 1, "color": "white"}],
    )
    swapped = [det("circle", "white"), det("square", "red", box=(30, 30, 40, 40))]
    assert not sg.evaluate_detections(swapped, attr)[0]
    right = [det("circle", "red"), det("square", "white", box=(30, 30, 40, 40))]
    assert sg.evaluate_detections(right, attr)[0]


def test_position_rule_and_margin():
    meta = md(
        "position", [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["left of", 0]}]
    )
    square = det("square", box=(30, 10, 40, 20))
    assert sg.evaluate_detections([square, det("circle", box=(5, 10, 15, 20))], meta)[0]
    # centre offset 1.5 px is below the 0.1 * (10 + 10) = 2 px margin: not "left of"
    ok, reason = sg.evaluate_detections([square, det("circle", box=(28.5, 10, 38.5, 20))], meta)
    assert not ok and "left of" in reason
    # right of instead of left of
    assert not sg.evaluate_detections([square, det("circle", box=(50, 10, 60, 20))], meta)[0]
    # no reference object: fails with GenEval's "no target" reason
    ok, reason = sg.evaluate_detections([det("circle", box=(5, 10, 15, 20))], meta)
    assert not ok and "no target" in reason
    # a larger margin turns a clear relation into none
    assert not sg.evaluate_detections([square, det("circle", box=(18, 10, 28, 20))], meta, position_threshold=0.6)[0]


def test_exclude_rule():
    meta = md("single_object", [{"class": "circle", "count": 1}], [{"class": "cross", "count": 1}])
    assert sg.evaluate_detections([det("circle")], meta)[0]
    ok, reason = sg.evaluate_detections([det("circle"), det("cross", box=(30, 30, 40, 40))], meta)
    assert not ok and "cross<1" in reason


def test_max_objects_cap():
    many = [det("circle", box=(i, 0, i + 2, 2)) for i in range(0, 60, 3)]
    meta = md("counting", [{"class": "circle", "count": 17}], [{"class": "circle", "count": 18}])
    assert not sg.evaluate_detections(many, meta)[0]  # at most 16 kept per class


# ---------------------------------------------------------------------------------------- detector


def test_detects_rendered_objects():
    objs = [
        sw.ShapeObject("circle", "red", (14.0, 14.0), 22.0),
        sw.ShapeObject("square", "yellow", (48.0, 14.0), 19.0),
        sw.ShapeObject("triangle", "green", (14.0, 48.0), 22.0),
        sw.ShapeObject("diamond", "pink", (48.0, 48.0), 22.0),
        sw.ShapeObject("cross", "blue", (32.0, 31.0), 16.0),
    ]
    dets = sg.detect_objects(sw.render_scene(objs))
    assert len(dets) == 5
    for o in objs:
        (d,) = [d for d in dets if d.color == o.color]
        assert d.shape == o.shape and d.score > 0.9
        np.testing.assert_allclose(d.bbox, o.bbox, atol=1.0)
    assert sg.detect_objects(np.full((64, 64, 3), sw.BACKGROUND, np.uint8)) == []


def test_unlike_any_shape_scores_low():
    img = np.full((64, 64, 3), sw.BACKGROUND, np.uint8)
    img[20:26, 10:50] = sw.PALETTE["green"]  # a 40x6 bar
    (d,) = sg.detect_objects(img)
    assert d.color == "green" and d.score < 0.3
    assert not sg.score_image(img, md("single_object", [{"class": d.shape, "count": 1}]))["correct"]


def test_input_formats():
    item = sw.ShapesWorld(num_samples=6, seed=2)[3]
    r_tensor = sg.score_image(item["image"], item["metadata"])
    img = sw.render_scene(item["objects"])
    r_pil = sg.score_image(Image.fromarray(img), item["metadata"])
    r_float01 = sg.score_image(torch.from_numpy(img).permute(2, 0, 1) / 255.0, item["metadata"])
    assert r_tensor["correct"] and r_pil["correct"] and r_float01["correct"]
    assert [d.to_dict() for d in r_tensor["detections"]] == [d.to_dict() for d in r_pil["detections"]]
    with pytest.raises(ValueError, match="RGB"):
        sg.to_uint8_image(np.zeros((4, 4, 5)))


def test_noise_blobs_are_ignored_and_fallback_matches(monkeypatch):
    ds = sw.ShapesWorld(num_samples=12, seed=4)
    images = [ds.sample(i)[2].copy() for i in range(12)]
    images[0][0:2, 0:2] = sw.PALETTE["red"]  # 4 px speck: below min_area
    fast = [[d.to_dict() for d in sg.detect_objects(im)] for im in images]
    monkeypatch.setattr(sg, "_ndimage", None)  # pure-Python connected components
    slow = [[d.to_dict() for d in sg.detect_objects(im)] for im in images]
    assert fast == slow
    assert len(fast[0]) == len(ds.sample(0)[1])


def test_touching_objects_of_two_colors_are_split():
    objs = [sw.ShapeObject("square", "red", (20.0, 32.0), 20.0), sw.ShapeObject("square", "blue", (40.0, 32.0), 20.0)]
    dets = sg.detect_objects(sw.render_scene(objs))
    assert sorted((d.color, d.shape) for d in dets) == [("blue", "square"), ("red", "square")]


# ------------------------------------------------------------------------- ground-truth validation


def _blur(img: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(0.7)))


def _down_up(img: np.ndarray) -> np.ndarray:
    small = Image.fromarray(img).resize((32, 32), Image.BILINEAR)
    return np.asarray(small.resize((64, 64), Image.BILINEAR))


@pytest.fixture(scope="module")
def ground_truth():
    """200 rendered samples per family."""
    ds = sw.ShapesWorld(num_samples=1200, seed=2024)
    return [ds.sample(i) for i in range(len(ds))]


@pytest.mark.parametrize(
    ("degrade", "bar"), [(None, 0.98), (_blur, 0.95), (_down_up, 0.95)], ids=["clean", "blur", "down-up"]
)
def test_ground_truth_scores(ground_truth, degrade, bar):
    images = [im if degrade is None else degrade(im) for _, _, im in ground_truth]
    res = sg.score_batch(images, [m for m, _, _ in ground_truth])
    assert set(res["per_task"]) == set(sw.FAMILIES)
    assert all(n == 200 for n in np.unique([r["tag"] for r in res["per_image"]], return_counts=True)[1])
    low = {t: s for t, s in res["per_task"].items() if s < bar}
    assert not low, f"task scores below {bar}: {low}"
    assert res["overall"] == pytest.approx(np.mean(list(res["per_task"].values())))


def test_score_batch_summary_and_metric():
    ds = sw.ShapesWorld(num_samples=6, seed=1)
    items = [ds[i] for i in range(6)]
    metas = [it["metadata"] for it in items]
    wrong = dict(metas[0], include=[{"class": "cross", "count": 4}], tag="counting")
    images = torch.stack([it["image"] for it in items])
    res = sg.score_batch(images, [wrong] + metas[1:])
    assert res["num_images"] == 6 and not res["per_image"][0]["correct"]
    assert res["per_task"]["counting"] == 0.5  # item 2 is counting and correct, `wrong` is not
    assert res["overall"] == pytest.approx(np.mean(list(res["per_task"].values())))
    assert res["image_accuracy"] == pytest.approx(5 / 6)
    assert res["prompt_accuracy"] == pytest.approx(5 / 6)
    dup = sg.score_batch([images[1], images[0]], [metas[1], metas[1]])  # same prompt, one image right
    assert dup["prompt_accuracy"] == 1.0 and dup["image_accuracy"] == 0.5
    with pytest.raises(ValueError, match="metadata"):
        sg.score_batch(images[:2], metas)
    metric = METRICS.create("shapes_geneval")
    assert METRICS.get("shapes_geneval").kind == "geneval"
    assert metric(images, metas)["overall"] == 1.0
