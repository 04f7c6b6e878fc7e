"""Caption metrics (METEOR, ROUGE-L, sentence / CLIP text cosine) and shapes-world attribute scoring."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from decodelab.datasets.shapes import FAMILIES, sample_prompt
from decodelab.eval.captions import (
    SentenceEncoder,
    caption_metrics,
    clip_text_cosine,
    embedding_cosine,
    meteor,
    parse_shapes_caption,
    rouge_l,
    sentence_cosine,
    shapes_caption_scores,
    tokenize,
)


def _meteor(p: float, r: float, chunks: int, m: int) -> float:
    fmean = p * r / (0.9 * p + 0.1 * r)
    return fmean * (1 - 0.5 * (chunks / m) ** 3)


# ------------------------------------------------------------------------------------- METEOR


def test_meteor_known_values():
    # identical: one chunk of 6 matches
    assert meteor(["the cat sat on the mat"], ["The cat sat on the mat."])[0] == pytest.approx(1 - 0.5 / 216)
    # all words match but in two chunks
    assert meteor(["a b c d"], ["c d a b"])[0] == pytest.approx(_meteor(1, 1, 2, 4))
    # precision 2/3, recall 1/2, one chunk
    assert meteor(["a b x"], ["a b c d"])[0] == pytest.approx(_meteor(2 / 3, 1 / 2, 1, 2))
    assert meteor(["a b x"], ["a b c d"])[0] == pytest.approx(0.4807692, abs=1e-6)
    # nothing in common / empty caption
    np.testing.assert_array_equal(meteor(["x y", ""], ["a b", "a b"]), [0.0, 0.0])


def test_meteor_best_reference_and_stages():
    # "x y" alone would give 0.238; the best reference wins
    assert meteor(["a b x"], [["x y", "a b c d"]])[0] == pytest.approx(_meteor(2 / 3, 1 / 2, 1, 2))
    assert meteor(["a b x"], [["x y"]])[0] == pytest.approx(_meteor(1 / 3, 1 / 2, 1, 1))
    # the stem stage matches cats ~ cat, the synonym stage feline ~ cat
    exact = meteor(["cats sat"], ["cat sat"])[0]
    assert exact == pytest.approx(_meteor(1 / 2, 1 / 2, 1, 1))
    assert meteor(["cats sat"], ["cat sat"], stemmer=lambda w: w.rstrip("s"))[0] == pytest.approx(_meteor(1, 1, 1, 2))
    syn = meteor(["feline sat"], ["cat sat"], synonyms=lambda w: {"feline"} if w == "cat" else set())
    assert syn[0] == pytest.approx(_meteor(1, 1, 1, 2))


def test_meteor_errors():
    with pytest.raises(ValueError, match="lists of captions"):
        meteor("a b", "a b")
    with pytest.raises(ValueError, match="reference entries"):
        meteor(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="at least one reference"):
        meteor(["a"], [[]])
    assert tokenize("A red-circle, 2x!") == ["a", "red", "circle", "2x"]


# ------------------------------------------------------------------------------------ ROUGE-L


def test_rouge_l_known_values():
    # LCS "the cat on the mat" = 5 of 6 on both sides
    assert rouge_l(["the cat sat on the mat"], ["the cat is on the mat"])[0] == pytest.approx(5 / 6, abs=1e-6)
    # reversed order: LCS 1 of 4
    assert rouge_l(["a b c d"], ["d c b a"])[0] == pytest.approx(0.25, abs=1e-6)
    # precision 2/3, recall 2/4 -> F = 4/7; the best of two references
    assert rouge_l(["a b x"], [["q", "a b c d"]])[0] == pytest.approx(4 / 7, abs=1e-6)
    assert rouge_l(["A b!"], ["a B"])[0] == pytest.approx(1.0)


# --------------------------------------------------------------------------- embedding cosines


class _BagOfWords:
    """A deterministic text model: word counts over a fixed vocabulary."""

    vocab = ("red", "green", "circle", "square", "dog")

    def __call__(self, texts):
        return torch.tensor([[tokenize(t).count(w) for w in self.vocab] for t in texts], dtype=torch.float32)


def test_embedding_cosine_with_an_injected_model():
    model = _BagOfWords()
    out = embedding_cosine(["red circle", "red circle", "dog"], ["red circle", ["green square", "red square"], "red"],
                           model)  # fmt: skip
    assert out[0] == pytest.approx(1.0)
    assert out[1] == pytest.approx(0.5)  # best of 0 and 1/2
    assert out[2] == pytest.approx(0.0)
    np.testing.assert_allclose(clip_text_cosine(["red circle"], ["red"], model), [1 / math.sqrt(2)], rtol=1e-6)

    class Bad:
        def encode_texts(self, texts):
            return torch.zeros(len(texts) + 1, 3)

    with pytest.raises(ValueError, match="embeddings"):
        embedding_cosine(["a"], ["b"], Bad())
    with pytest.raises(ValueError, match="encode_texts"):
        embedding_cosine(["a"], ["b"], object())


WORDS = ["a", "photo", "of", "red", "green", "circle", "square", "and", "two", "circles", "dog"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("tiny-bert")
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])})
    assert len(tok) == 5 + len(WORDS) and tok.unk_token_id not in tok("a red circle")["input_ids"]
    tok.save_pretrained(root)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=5 + len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)  # fmt: skip
    BertModel(cfg).save_pretrained(root)
    return root


def test_sentence_encoder_mean_pooling_ignores_padding(tiny_bert: Path):
    enc = SentenceEncoder(tiny_bert)
    alone = enc.encode_texts(["a red circle"])
    batch = enc.encode_texts(["a red circle", "a photo of two circles and a green square and a dog"])
    assert batch.shape == (2, 16)
    torch.testing.assert_close(batch.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(batch[:1], alone, atol=1e-5, rtol=1e-5)  # padding not pooled
    # the mean over the real tokens ([CLS] ... [SEP]) of the last hidden states
    ids = enc.tokenizer(["a red circle"], return_tensors="pt")
    assert ids["input_ids"].shape == (1, 5) and enc.tokenizer.unk_token_id not in ids["input_ids"]
    hidden = enc.model(**ids).last_hidden_state[0].detach()
    torch.testing.assert_close(alone[0], torch.nn.functional.normalize(hidden.mean(0), dim=0), atol=1e-5, rtol=1e-5)
    scores = sentence_cosine(["a red circle", "a dog"], [["a dog", "a red circle"], "a red circle"], enc)
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    assert scores[1] < 0.9999


def test_sentence_encoder_missing_model_names_the_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        SentenceEncoder(tmp_path / "nowhere")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    open_clip = pytest.importorskip("open_clip")
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("tiny-clip")
    bpe = open_clip.tokenizer.SimpleTokenizer()
    special = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    (root / "vocab.json").write_text(json.dumps({special.get(k, k): v for k, v in bpe.encoder.items()}))
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (root / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    folder = root / "clip"
    CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )  # fmt: skip
    CLIPModel(cfg).save_pretrained(folder)
    return folder


def test_clip_text_cosine_with_a_clip_model(tiny_clip: Path):
    from decodelab.eval.clip_score import ClipModel

    model = ClipModel(tiny_clip)
    preds = ["a photo of a red circle", "a photo of a dog"]
    refs = [["a photo of a dog", "a photo of a red circle"], ["a photo of a red circle"]]
    out = clip_text_cosine(preds, refs, model)
    assert out[0] == pytest.approx(1.0, abs=1e-5)
    e = torch.nn.functional.normalize(model.encode_texts(["a photo of a dog", "a photo of a red circle"]), dim=-1)
    assert out[1] == pytest.approx(float(e[0] @ e[1]), abs=1e-5)
    table = caption_metrics(preds, refs, clip_model=model, sentence_model=_BagOfWords())
    assert set(table) == {"meteor_exact", "rouge_l", "sentence_cosine", "clip_text_cosine", "num_captions"}
    assert table["clip_text_cosine"] == pytest.approx(float(out.mean()))
    assert table["rouge_l"] == pytest.approx(float(rouge_l(preds, refs).mean()))


# ------------------------------------------------------------------------------ shapes world


def test_parse_is_the_inverse_of_the_caption_grammar():
    rng = np.random.default_rng(0)
    for family in FAMILIES:
        for _ in range(25):
            record = sample_prompt(rng, family)
            assert parse_shapes_caption(record["prompt"]) == record
    assert parse_shapes_caption("A photo of a red circle.")["include"] == [
        {"class": "circle", "count": 1, "color": "red"}
    ]
    for bad in ("a photo of a dog", "two circles", "a photo of one circle", "a photo of a circle and",
                "a photo of three circles left of a square", "a photo of an red circle and"):  # fmt: skip
        assert parse_shapes_caption(bad) is None, bad


def test_shapes_caption_scores_on_constructed_cases():
    true = [
        "a photo of three triangles",
        "a photo of a red circle and a green square",
        "a photo of a circle left of a square",
        "a photo of a blue square",
    ]
    preds = [
        "a photo of three circles",  # object wrong, count right
        "a photo of a green circle and a red square",  # objects and colour words right, binding wrong
        "a photo of a square right of a circle",  # the same scene said the other way round
        "an image of something",  # unparseable: wrong everywhere
    ]
    s = shapes_caption_scores(preds, true)
    assert s["object"] == pytest.approx(0.5) and s["n_object"] == 4
    assert s["count"] == pytest.approx(1.0) and s["n_count"] == 1
    assert s["colour"] == pytest.approx(0.5) and s["n_colour"] == 2
    assert s["position"] == pytest.approx(1.0) and s["n_position"] == 1
    assert s["exact"] == pytest.approx(0.25)
    assert s["parsed"] == pytest.approx(0.75) and s["num_captions"] == 4
    assert [r["exact"] for r in s["per_caption"]] == [False, False, True, False]
    # the true records work as well as the true captions
    rng = np.random.default_rng(1)
    records = [sample_prompt(rng, f) for f in FAMILIES]
    perfect = shapes_caption_scores([r["prompt"] for r in records], records)
    assert all(perfect[k] == 1.0 for k in ("object", "count", "colour", "position", "exact"))


def test_shapes_position_rules():
    true = ["a photo of a circle left of a square"]
    assert shapes_caption_scores(["a photo of a circle above a square"], true)["position"] == 0.0
    assert shapes_caption_scores(["a photo of a square left of a circle"], true)["position"] == 0.0
    assert shapes_caption_scores(["a photo of a triangle left of a diamond"], true)["position"] == 1.0
    assert shapes_caption_scores(["a photo of a diamond right of a triangle"], true)["position"] == 1.0
    assert shapes_caption_scores(["a photo of a circle and a square"], true)["position"] == 0.0
    none = shapes_caption_scores(["a photo of a circle"], ["a photo of a circle"])
    assert none["position"] is None and none["n_position"] == 0 and none["count"] is None
    with pytest.raises(ValueError, match="grammar"):
        shapes_caption_scores(["a photo of a circle"], ["a dog"])
    with pytest.raises(ValueError, match="one true record"):
        shapes_caption_scores(["a photo of a circle"], [])
