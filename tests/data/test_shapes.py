"""Shapes world: GenEval-format prompts, layouts that satisfy them, rendering, determinism."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from decodelab.datasets import shapes as sw
from decodelab.registry import DATASETS


def test_vocab():
    assert len(sw.SHAPES) >= 4 and len(sw.COLORS) >= 6
    assert sw.FAMILIES == ("single_object", "two_object", "counting", "colors", "position", "color_attr")
    assert set(sw.VOCAB) >= {"shapes", "colors", "families", "relations"}
    assert all(len(rgb) == 3 for rgb in sw.PALETTE.values())
    # colours are far apart in RGB
    rgb = np.asarray(list(sw.PALETTE.values()), dtype=float)
    d = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)
    assert d[~np.eye(len(rgb), dtype=bool)].min() > 80
    assert 14 <= min(sw.OBJECT_SIZES) and max(sw.OBJECT_SIZES) <= 26


@pytest.mark.parametrize("family", sw.FAMILIES)
def test_prompt_format(family):
    rng = np.random.default_rng(0)
    for _ in range(40):
        md = sw.sample_prompt(rng, family)
        assert md["tag"] == family and md["prompt"].startswith("a photo of ")
        assert json.loads(json.dumps(md)) == md  # plain JSON, like evaluation_metadata.jsonl
        inc = md["include"]
        sw.validate_metadata(md)
        if family == "single_object":
            assert len(inc) == 1 and inc[0]["count"] == 1 and "color" not in inc[0]
            assert md["prompt"] == f"a photo of a {inc[0]['class']}"
        elif family == "two_object":
            assert [r["count"] for r in inc] == [1, 1] and inc[0]["class"] != inc[1]["class"]
        elif family == "counting":
            n = inc[0]["count"]
            assert 2 <= n <= 4 and md["exclude"] == [{"class": inc[0]["class"], "count": n + 1}]
            assert sw.PLURALS[inc[0]["class"]] in md["prompt"]
        elif family == "colors":
            assert inc[0]["color"] in sw.COLORS and inc[0]["color"] in md["prompt"]
        elif family == "position":
            rel, target = inc[1]["position"]
            assert target == 0 and rel in sw.RELATIONS and "position" not in inc[0]
            # "a photo of a <include[1]> <rel> a <include[0]>"
            assert md["prompt"] == f"a photo of a {inc[1]['class']} {rel} a {inc[0]['class']}"
        elif family == "color_attr":
            assert inc[0]["class"] != inc[1]["class"] and inc[0]["color"] != inc[1]["color"]
        if family != "counting":
            assert "exclude" not in md


def test_articles_and_unknown_family():
    md = {"tag": "colors", "include": [{"class": "cross", "count": 1, "color": "orange"}]}
    rng = np.random.default_rng(1)
    prompts = {sw.sample_prompt(rng, "colors")["prompt"] for _ in range(300)}
    assert any(p.startswith("a photo of an orange ") for p in prompts)
    assert sw.PLURALS["cross"] == "crosses"
    with pytest.raises(ValueError, match="family"):
        sw.sample_prompt(rng, "spatial")
    assert sw.sample_scene(md, rng)[0].color == "orange"


def _gap(a, b):
    return max(a[0] - b[2], b[0] - a[2], a[1] - b[3], b[1] - a[3])


@pytest.mark.parametrize("size", [64, 96])
def test_scenes_satisfy_metadata(size):
    rng = np.random.default_rng(5)
    for i in range(300):
        md = sw.sample_prompt(rng, sw.FAMILIES[i % 6])
        objs = sw.sample_scene(md, rng, size=size)
        assert Counter(o.shape for o in objs) == Counter({r["class"]: r["count"] for r in md["include"]})
        for r in md["include"]:
            if "color" in r:
                assert all(o.color == r["color"] for o in objs if o.shape == r["class"])
        for o in objs:
            x0, y0, x1, y1 = o.bbox
            assert 0 <= x0 and 0 <= y0 and x1 <= size and y1 <= size
            assert 14 * size / 64 <= o.size <= 26 * size / 64
        for a in range(len(objs)):
            for b in range(a):
                assert _gap(objs[a].bbox, objs[b].bbox) >= sw.MIN_GAP * size / 64 - 1e-9
        if md["tag"] == "position":
            rel = md["include"][1]["position"][0]
            assert sw.relative_position(objs[1].bbox, objs[0].bbox) == {rel}


def test_unsatisfiable_or_bad_metadata():
    rng = np.random.default_rng(0)
    bad = {
        "tag": "counting",
        "include": [{"class": "circle", "count": 3}],
        "exclude": [{"class": "circle", "count": 3}],
        "prompt": "x",
    }
    with pytest.raises(ValueError, match="unsatisfiable"):
        sw.sample_scene(bad, rng)
    with pytest.raises(ValueError, match="not a shape"):
        sw.sample_scene({"include": [{"class": "dog", "count": 1}]}, rng)
    with pytest.raises(ValueError, match="position"):
        sw.sample_scene({"include": [{"class": "circle", "count": 1, "position": ["left of", 0]}]}, rng)
    with pytest.raises(ValueError, match="lay out"):
        sw.sample_scene({"include": [{"class": "square", "count": 40}]}, rng, max_attempts=3)


def test_relative_position_rule():
    a, b = (0, 0, 10, 10), (20, 0, 30, 10)
    assert sw.relative_position(a, b) == {"left of"}
    assert sw.relative_position(b, a) == {"right of"}
    assert sw.relative_position((0, 0, 10, 10), (0, 20, 10, 30)) == {"above"}
    assert sw.relative_position((0, 30, 10, 40), (0, 0, 10, 10)) == {"below"}
    assert sw.relative_position((0, 0, 10, 10), (30, 30, 40, 40)) == {"left of", "above"}
    # centre offset 1.5 px < margin 0.1 * (10 + 10) = 2 px: no relation at all
    assert sw.relative_position((0, 0, 10, 10), (1.5, 0, 11.5, 10)) == set()


def test_render_scene():
    objs = [sw.ShapeObject("square", "red", (16.0, 16.0), 20.0), sw.ShapeObject("circle", "blue", (46.5, 46.5), 20.0)]
    img = sw.render_scene(objs)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == sw.BACKGROUND and tuple(img[63, 0]) == sw.BACKGROUND
    assert tuple(img[16, 16]) == sw.PALETTE["red"] and tuple(img[46, 46]) == sw.PALETTE["blue"]
    # interiors are the pure colour; anti-aliased edges blend with the background only
    assert np.all(img[8:24, 8:24] == sw.PALETTE["red"])
    pil = sw.render_scene([o.to_dict() for o in objs], size=64, as_pil=True)
    assert pil.size == (64, 64) and np.array_equal(np.asarray(pil), img)
    for shape in sw.SHAPES:
        one = sw.render_scene([sw.ShapeObject(shape, "white", (32.0, 32.0), 24.0)])
        assert tuple(one[32, 32]) == sw.PALETTE["white"] and tuple(one[5, 5]) == sw.BACKGROUND
    with pytest.raises(ValueError, match="color"):
        sw.render_scene([sw.ShapeObject("square", "teal", (32.0, 32.0), 20.0)])
    assert sw.ShapeObject.from_dict(objs[0].to_dict()) == objs[0]


def test_dataset_items_and_determinism():
    ds = sw.ShapesWorld(num_samples=24, seed=7)
    item = ds[5]
    assert set(item) == {"image", "caption", "metadata", "objects"}
    x = item["image"]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    assert item["caption"] == item["metadata"]["prompt"]
    # same seed -> same item, whatever was accessed before
    fresh = sw.ShapesWorld(num_samples=24, seed=7)
    for j in (3, 11, 0):
        fresh[j]
    again = fresh[5]
    assert torch.equal(again["image"], x) and again["metadata"] == item["metadata"]
    assert again["objects"] == item["objects"]
    other = sw.ShapesWorld(num_samples=24, seed=8)
    assert not all(torch.equal(other[i]["image"], ds[i]["image"]) for i in range(6))
    tags = Counter(ds[i]["metadata"]["tag"] for i in range(len(ds)))
    assert tags == Counter({f: 4 for f in sw.FAMILIES})  # balanced
    assert ds[-1]["caption"] == ds[23]["caption"]
    with pytest.raises(IndexError):
        ds[24]


def test_dataset_options_and_loader():
    ds = sw.ShapesWorld(num_samples=6, seed=0, size=48, families=("counting", "position"))
    assert {ds[i]["metadata"]["tag"] for i in range(6)} == {"counting", "position"}
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=sw.collate_shapes)
    batch = next(iter(loader))
    assert batch["image"].shape == (3, 3, 48, 48) and len(batch["caption"]) == 3
    with pytest.raises(ValueError, match="families"):
        sw.ShapesWorld(families=("dogs",))
    created = DATASETS.create("shapes_world", num_samples=2, seed=1, size=None)
    assert isinstance(created, sw.ShapesWorld) and created.size == 64
    assert DATASETS.get("shapes_world").kind == "text-image"


def test_prompt_set_and_jsonl(tmp_path):
    recs = sw.make_prompt_set(10, seed=3, path=tmp_path / "p" / "evaluation_metadata.jsonl")
    assert len(recs) == 60 and [r["tag"] for r in recs[::10]] == list(sw.FAMILIES)
    assert sw.read_jsonl(tmp_path / "p" / "evaluation_metadata.jsonl") == recs
    assert sw.make_prompt_set(10, seed=3) == recs
    uniq = sw.make_prompt_set(50, seed=3, unique=True, families=("single_object",))
    assert len(uniq) == len(sw.SHAPES)
    with pytest.raises(FileNotFoundError, match="make_prompt_set"):
        sw.read_jsonl(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(recs[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=":2:"):
        sw.read_jsonl(bad)
    with pytest.raises(ValueError, match="family"):
        sw.make_prompt_set(2, families=("nope",))
