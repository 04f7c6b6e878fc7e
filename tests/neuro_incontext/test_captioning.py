"""Brain captioning with GIT (vision tower bypassed), end to end on a tiny random GitForCausalLM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from decodelab.neuro.captioning import (
    BrainCaptioner,
    BrainDepthDecoder,
    depth_to_control_images,
    feature_pass_through,
    generate_images,
    load_controlnet_pipeline,
)

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


# ------------------------------------------------------------------------------------ images


@pytest.fixture(scope="module")
def tiny_controlnet_pipe(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny random Stable Diffusion + depth-ControlNet pair saved in diffusers' folder layouts."""
    open_clip = pytest.importorskip("open_clip")
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        DDIMScheduler,
        StableDiffusionControlNetPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("tiny-sd")
    bpe = open_clip.tokenizer.SimpleTokenizer()
    special = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    (root / "vocab.json").write_text(json.dumps({special.get(k, k): v for k, v in bpe.encoder.items()}))
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (root / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tokenizer = CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=77)
    torch.manual_seed(0)
    blocks = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, cross_attention_dim=16,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), attention_head_dim=4)  # fmt: skip
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4,
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), **blocks)  # fmt: skip
    controlnet = ControlNetModel(in_channels=4, conditioning_embedding_out_channels=(8, 16), **blocks)
    with torch.no_grad():  # a trained ControlNet's zero convolutions are not zero any more
        for param in controlnet.parameters():
            if not param.any():
                param.normal_(0.0, 0.3)
    vae = AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                        norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2)  # fmt: skip
    text = CLIPTextModel(CLIPTextConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, projection_dim=16))  # fmt: skip
    pipe = StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, controlnet=controlnet,
        scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(root / "sd")
    controlnet.save_pretrained(root / "controlnet")
    return root / "sd", root / "controlnet"


def test_depth_decoder_recovers_a_linear_depth_code():
    rng = np.random.default_rng(0)
    depth = rng.random((80, 16, 16)).astype(np.float32)  # [n, H, W] -> area-resized to 8 x 8
    small = torch.nn.functional.interpolate(torch.from_numpy(depth)[:, None], size=(8, 8), mode="area")[:, 0]
    mix = rng.standard_normal((64, 100))
    brain = small.flatten(1).numpy() @ mix
    dec = BrainDepthDecoder(size=8, alpha=1e-3).fit(brain[:70], depth[:70])
    np.testing.assert_allclose(dec.predict(brain[70:]), small[70:].numpy(), atol=5e-3)
    with pytest.raises(ValueError, match="fit"):
        BrainDepthDecoder().predict(brain)
    with pytest.raises(ValueError, match=r"\[n, H, W\]"):
        BrainDepthDecoder().fit(brain, depth[:, 0])


def test_depth_to_control_images():
    d = np.stack([np.tile(np.linspace(2.0, 4.0, 8), (8, 1)), np.full((8, 8), 3.0)])
    a, b = depth_to_control_images(d, 16)
    assert a.size == (16, 16) and a.mode == "RGB"
    arr = np.asarray(a)
    assert arr[:, 0].max() <= 10 and arr[:, -1].min() >= 245  # min-max scaled, left near to right far
    assert np.all(np.asarray(b) == 128)  # a flat map is mid-grey


def test_controlnet_images_from_captions_and_depth(tiny_controlnet_pipe):
    sd, cn = tiny_controlnet_pipe
    pipe = load_controlnet_pipeline(sd, cn)
    depth = np.stack([np.tile(np.linspace(0, 1, 16), (16, 1)), np.tile(np.linspace(0, 1, 16)[:, None], (1, 16))])
    kw = dict(num_inference_steps=2, guidance_scale=2.0, seed=3)
    imgs = generate_images(pipe, ["a red circle", "a dog"], depth, batch_size=2, **kw)
    assert len(imgs) == 2 and imgs[0].size == (16, 16)
    # per-image generators: an image does not depend on its batch
    alone = generate_images(pipe, ["a dog"], depth[1:], seed=4, num_inference_steps=2, guidance_scale=2.0)
    np.testing.assert_allclose(np.asarray(alone[0], dtype=float), np.asarray(imgs[1], dtype=float), atol=2)
    # the depth map steers the image (ControlNet on) and is ignored at conditioning scale 0
    swapped = generate_images(pipe, ["a red circle", "a dog"], depth[::-1], batch_size=2, **kw)
    assert np.abs(np.asarray(swapped[0], dtype=float) - np.asarray(imgs[0], dtype=float)).max() > 0
    off = [generate_images(pipe, ["a red circle"], d[None], controlnet_conditioning_scale=0.0, **kw)[0] for d in depth]
    np.testing.assert_array_equal(np.asarray(off[0]), np.asarray(off[1]))
    with pytest.raises(ValueError, match="depth maps"):
        generate_images(pipe, ["a", "b"], depth[:1], **kw)


def test_controlnet_pipeline_missing_folders_name_the_file(tmp_path: Path, tiny_controlnet_pipe):
    sd, cn = tiny_controlnet_pipe
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_controlnet_pipeline(tmp_path, cn)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_controlnet_pipeline(sd, tmp_path)
