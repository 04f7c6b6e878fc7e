"""Brain captioning with GIT (vision tower bypassed), end to end on a tiny random GitForCausalLM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from decodelab.neuro.captioning import BrainCaptioner, feature_pass_through

WORDS = ["a", "photo", "of", "red", "green", "circle", "square", "and", "two", "dog", "cat", "on", "the", "mat"]
IMAGE, PATCH = 16, 8  # 2 x 2 patches + CLS = 5 image tokens


@pytest.fixture(scope="module")
def tiny_git(tmp_path_factory) -> Path:
    from transformers import BertTokenizerFast, CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    root = tmp_path_factory.mktemp("tiny-git")
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])})
    assert len(tok) == 5 + len(WORDS) and tok.unk_token_id not in tok("a red circle")["input_ids"]
    proc = GitProcessor(CLIPImageProcessor(size={"shortest_edge": IMAGE}, crop_size=IMAGE), tok)
    torch.manual_seed(0)
    cfg = GitConfig(
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=IMAGE, patch_size=PATCH),
        vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, bos_token_id=2, eos_token_id=3, pad_token_id=0, initializer_range=0.5,
    )  # fmt: skip
    GitForCausalLM(cfg).save_pretrained(root / "git")
    proc.save_pretrained(root / "git")
    return root / "git"


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


def test_true_features_give_exactly_the_tokens_of_generate(tiny_git: Path):
    cap = BrainCaptioner.from_pretrained(tiny_git, max_length=10)
    px = _images(4, 0)
    feats = cap.image_features(px, batch_size=3)
    assert feats.shape == (4, 5, 16)
    tower = cap.model.git.image_encoder
    for beams in (1, 2):
        ref = cap.model.generate(pixel_values=px, max_length=10, num_beams=beams, do_sample=False)
        ids = cap.generate_ids(feats, num_beams=beams)
        torch.testing.assert_close(ids, ref, rtol=0, atol=0)
    assert len({tuple(r.tolist()) for r in ids}) > 1  # the captions do depend on the image
    assert cap.model.git.image_encoder is tower  # the vision tower is back


def test_vision_tower_restored_after_an_error(tiny_git: Path):
    cap = BrainCaptioner.from_pretrained(tiny_git)
    tower = cap.model.git.image_encoder
    with pytest.raises(Exception):  # noqa: B017 - any generate error
        cap.generate_ids(torch.zeros(1, 5, 16), max_length="x")
    assert cap.model.git.image_encoder is tower
    with pytest.raises(ValueError, match="GitForCausalLM"):
        with feature_pass_through(torch.nn.Linear(2, 2)):
            pass


def test_fmri_to_captions_end_to_end(tiny_git: Path):
    """A linear simulated brain: ridge recovers the features, so the decoded captions are the true ones."""
    cap = BrainCaptioner.from_pretrained(tiny_git, alpha=1e-2, max_length=8)
    px_train, px_test = _images(150, 1), _images(5, 2)
    f_train, f_test = cap.image_features(px_train), cap.image_features(px_test)
    rng = np.random.default_rng(0)
    mix = rng.standard_normal((5 * 16, 120)) / np.sqrt(80)  # features -> 120 voxels, full column rank
    brain_train = f_train.flatten(1).numpy() @ mix
    brain_test = f_test.flatten(1).numpy() @ mix
    cap.fit(brain_train, f_train)
    assert cap.feature_shape_ == (5, 16)
    pred = cap.predict_features(brain_test)
    torch.testing.assert_close(pred, f_test, atol=1e-3, rtol=1e-3)
    captions = cap.predict(brain_test, batch_size=2)
    truth = cap.caption_features(f_test)
    assert captions == truth
    assert all(isinstance(c, str) for c in captions) and any(c for c in captions)
    assert all(w in WORDS for c in captions for w in c.split())
    # a brain that carries no information decodes one caption for every image
    flat = BrainCaptioner.from_pretrained(tiny_git, max_length=8).fit(
        rng.random((150, 1)) * np.ones((150, 120)), f_train
    )
    blank = flat.predict(np.zeros((3, 120)))
    assert len(set(blank)) == 1


def test_ids_without_tokenizer_and_errors(tiny_git: Path, tmp_path: Path):
    from transformers import GitForCausalLM

    cap = BrainCaptioner(GitForCausalLM.from_pretrained(tiny_git), max_length=6)
    ids = cap.caption_features(torch.randn(2, 5, 16))
    assert isinstance(ids, torch.Tensor) and ids.shape[0] == 2 and ids.shape[1] <= 6
    with pytest.raises(ValueError, match=r"\[n, 5, 16\]"):
        cap.caption_features(torch.randn(2, 4, 16))
    with pytest.raises(ValueError, match="fit"):
        cap.predict_features(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="brain must be"):
        cap.fit(np.zeros((3, 4)), torch.zeros(2, 5, 16))
    with pytest.raises(FileNotFoundError, match="config.json"):
        BrainCaptioner.from_pretrained(tmp_path / "missing")
