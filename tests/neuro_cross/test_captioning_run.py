"""Shapes-world brain captioning: the caption grammar, nearest-caption decoding and the run on a tiny tree."""

from __future__ import annotations

import json

import numpy as np
import pytest

from decodelab.datasets.shapes import ShapesWorld
from decodelab.eval.captions import parse_shapes_caption
from decodelab.neuro.runs.crosssubject import decode_captions, shapes_grammar_captions


def test_grammar_is_the_worlds_caption_set():
    grammar = shapes_grammar_captions()
    # 5 single + 20 two-object + 15 counting + 40 colours + 80 position + 1120 colour-attribution captions
    assert len(grammar) == len(set(grammar)) == 5 + 20 + 15 + 40 + 80 + 1120
    assert all(parse_shapes_caption(c) is not None for c in grammar)
    world = ShapesWorld(300, seed=3)
    assert {world.sample(i)[0]["prompt"] for i in range(300)} <= set(grammar)
    assert len(shapes_grammar_captions(max_count=6)) == len(grammar) + 10
    with pytest.raises(ValueError, match="max_count"):
        shapes_grammar_captions(max_count=9)


def test_decode_captions_picks_the_nearest_after_centring():
    bank = np.eye(4) + 10.0  # a large shared offset that only centring removes
    caps = ["a", "b", "c", "d"]
    pred = np.array([[0.1, 0.0, 0.9, 0.0], [0.0, 0.0, 0.0, 2.0]]) + 10.0
    assert decode_captions(pred, bank, caps, bank.mean(0)) == ["c", "d"]


class _RenderPipeline:
    """A stand-in for shapes-t2i: draws each caption's scene with the world's renderer."""

    tokenizer = None

    def __call__(self, prompts, seed=0):
        from types import SimpleNamespace

        from PIL import Image

        from decodelab.datasets.shapes import render_scene, sample_scene

        imgs = []
        for i, p in enumerate(prompts):
            objs = sample_scene(parse_shapes_caption(p), np.random.default_rng([seed, i]), size=64)
            imgs.append(Image.fromarray(render_scene(objs, 64)))
        return SimpleNamespace(images=imgs)


def test_caption_experiment_tiny(tiny_shapes, tmp_path, text_encoder):
    from decodelab.neuro.runs.crosssubject import caption_experiment
    from decodelab.neuro.simulate_fmri import world_captions

    grammar = shapes_grammar_captions()[:160]  # every family but colour attribution (speed)
    sentence = lambda texts: world_captions([[t] for t in texts], text_encoder)  # noqa: E731 (MiniLM mean pooling)
    res = caption_experiment(
        tiny_shapes, tmp_path, 1, pipeline=_RenderPipeline(), text_encoder=text_encoder, n_grid=4,
        grammar=grammar, sentence_model=sentence,
    )  # fmt: skip
    assert (
        json.loads((tmp_path / "neuro_captioning.json").read_text())["caption_attributes"] == res["caption_attributes"]
    )
    assert (tmp_path / "neuro_captioning_grid.png").is_file()
    assert res["n_test"] == 12 and res["grammar_size"] == 160
    assert res["caption_attributes"]["n_object"] == 12
    for key in (
        "caption_attributes",
        "caption_attributes_chance_shuffled",
        "caption_attributes_chance_uniform_grammar",
    ):
        for name, v in res[key].items():
            assert name.startswith("n_") or v is None or 0.0 <= v <= 1.0
    assert 0 <= res["caption_metrics"]["sentence_cosine"] <= 1.0 + 1e-6
    # uniform draws from 160 captions rarely match a whole record
    assert res["caption_attributes_chance_uniform_grammar"]["exact"] < 0.1
    # the detector reads the world's own images (the ceiling) and the renderer's images as the world draws them
    assert res["image_geneval_true_images_ceiling"]["image_accuracy"] >= 0.9
    assert 0.0 <= res["image_geneval_vs_true_caption"]["image_accuracy"] <= 1.0
    assert len(res["examples"]) == 4 and all(parse_shapes_caption(e["decoded"]) for e in res["examples"])


def test_caption_experiment_rejects_other_worlds(tiny_fmnist, tmp_path):
    from decodelab.neuro.runs.crosssubject import caption_experiment

    with pytest.raises(ValueError, match="shapes-world"):
        caption_experiment(tiny_fmnist, tmp_path, 1, pipeline=_RenderPipeline())
