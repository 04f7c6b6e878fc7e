"""GenEval's networks and CLIP score through their adapters, on tiny random-init models saved offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from decodelab.eval import geneval as ge

transformers = pytest.importorskip("transformers", reason="needs transformers (the text extra)")

COCO_FEW = ["person", "dog", "cat", "car", "bench"]


@pytest.fixture(scope="module")
def mask2former_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    torch.manual_seed(0)
    backbone = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4, image_size=64,
                          out_features=["stage1", "stage2", "stage3", "stage4"])  # fmt: skip
    cfg = Mask2FormerConfig(backbone_config=backbone, hidden_dim=32, mask_feature_size=32, feature_size=32,
                            num_queries=8, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
                            dim_feedforward=64, encoder_feedforward_dim=64, num_labels=len(COCO_FEW),
                            id2label=dict(enumerate(COCO_FEW)), common_stride=4)  # fmt: skip
    path = tmp_path_factory.mktemp("m2f") / "mask2former-tiny"
    Mask2FormerForUniversalSegmentation(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    path = tmp_path_factory.mktemp("clip") / "clip-tiny"
    path.mkdir()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz-":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt")).save_pretrained(path)
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=24, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )  # fmt: skip
    CLIPModel(cfg).save_pretrained(path)
    return path


TINY_OPEN_CLIP = "decodelab-test-tiny-clip"


def _open_clip_state_from_hf(hf: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """Hugging Face CLIPModel tensors renamed (and fused / transposed) into open_clip's CLIP layout."""
    out = {
        "token_embedding.weight": hf["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": hf["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": hf["text_model.final_layer_norm.weight"],
        "ln_final.bias": hf["text_model.final_layer_norm.bias"],
        "text_projection": hf["text_projection.weight"].T,
        "logit_scale": hf["logit_scale"],
        "visual.conv1.weight": hf["vision_model.embeddings.patch_embedding.weight"],
        "visual.class_embedding": hf["vision_model.embeddings.class_embedding"],
        "visual.positional_embedding": hf["vision_model.embeddings.position_embedding.weight"],
        "visual.proj": hf["visual_projection.weight"].T,
    }
    for ours, theirs in (("visual.ln_pre", "vision_model.pre_layrnorm"),
                         ("visual.ln_post", "vision_model.post_layernorm")):  # fmt: skip
        out[f"{ours}.weight"], out[f"{ours}.bias"] = hf[f"{theirs}.weight"], hf[f"{theirs}.bias"]
    for tower, prefix in (("", "text_model"), ("visual.", "vision_model")):
        for i in range(layers):
            a, b = f"{tower}transformer.resblocks.{i}", f"{prefix}.encoder.layers.{i}"
            for kind in ("weight", "bias"):
                out[f"{a}.attn.in_proj_{kind}"] = torch.cat([hf[f"{b}.self_attn.{n}_proj.{kind}"] for n in "qkv"])
                for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                                     ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"),
                                     ("mlp.c_proj", "mlp.fc2")):  # fmt: skip
                    out[f"{a}.{ours}.{kind}"] = hf[f"{b}.{theirs}.{kind}"]
    return {k: v.contiguous() for k, v in out.items()}


@pytest.fixture(scope="module")
def clip_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One random tiny CLIP twice: a Hugging Face folder and the same tensors as an open_clip state dict.

    Both sides use OpenAI's real BPE vocabulary (the one open_clip ships), so the two tokenizers agree.
    """
    open_clip = pytest.importorskip("open_clip")
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("clip-pair")
    bpe = open_clip.tokenizer.SimpleTokenizer()
    special = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    (root / "vocab.json").write_text(json.dumps({special.get(k, k): v for k, v in bpe.encoder.items()}))
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (root / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    hf_dir = root / "hf-clip"
    CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt")).save_pretrained(hf_dir)
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )  # fmt: skip
    hf = CLIPModel(cfg)
    hf.save_pretrained(hf_dir)
    oc_cfg = {"embed_dim": 16, "quick_gelu": True,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16,
                             "mlp_ratio": 2.0},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                           "mlp_ratio": 2.0}}  # fmt: skip
    (root / f"{TINY_OPEN_CLIP}.json").write_text(json.dumps(oc_cfg))
    open_clip.add_model_config(root / f"{TINY_OPEN_CLIP}.json")
    oc_file = root / "tiny-open-clip.safetensors"
    save_file(_open_clip_state_from_hf(hf.state_dict(), layers=1), str(oc_file))
    return hf_dir, oc_file


def test_open_clip_clip_score_equals_the_transformers_path(clip_pair: tuple[Path, Path]):
    from decodelab.eval.clip_score import ClipModel, clip_scores
    from decodelab.eval.geneval_models import ClipColorClassifier

    hf_dir, oc_file = clip_pair
    oc = ClipModel(oc_file, model_name=TINY_OPEN_CLIP)
    hf = ClipModel(hf_dir)
    assert (oc.backend, hf.backend) == ("open_clip", "transformers")
    assert oc.settings()["clip_model"] == TINY_OPEN_CLIP and oc.settings()["clip_weights_sha256"]
    captions = ["a photo of a red dog", "two blue-colored benches", "a photo of a cat " * 30]  # the last > 77 tokens
    hf_ids = hf.tokenizer(captions, truncation=True, max_length=77)["input_ids"]
    oc_ids = oc.tokenizer(captions)
    for row, ids in zip(oc_ids, hf_ids):
        assert row[: len(ids)].tolist() == ids and not row[len(ids) :].any()  # same tokens, zero padding
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in captions]
    torch.testing.assert_close(oc.preprocess(images), hf.preprocess(images), rtol=0, atol=1e-6)
    torch.testing.assert_close(oc.encode_images(images), hf.encode_images(images), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(oc.encode_texts(captions), hf.encode_texts(captions), rtol=1e-4, atol=1e-5)
    assert clip_scores(images, captions, oc) == pytest.approx(clip_scores(images, captions, hf), abs=1e-3)
    assert ClipColorClassifier(oc).head("dog").numpy() == pytest.approx(ClipColorClassifier(hf).head("dog").numpy(),
                                                                         abs=1e-5)  # fmt: skip


def test_open_clip_backend_refuses_wrong_or_code_carrying_files(clip_pair: tuple[Path, Path], tmp_path: Path):
    from safetensors.torch import load_file, save_file

    from decodelab.eval.clip_score import ClipModel

    _, oc_file = clip_pair
    state = load_file(str(oc_file))
    state.pop("visual.proj")
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="visual.proj"):
        ClipModel(tmp_path / "partial.safetensors", model_name=TINY_OPEN_CLIP)
    torch.save({"module." + k: v for k, v in load_file(str(oc_file)).items()}, tmp_path / "ddp.pt")
    assert ClipModel(tmp_path / "ddp.pt", model_name=TINY_OPEN_CLIP).backend == "open_clip"  # DDP prefix removed
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    torch.jit.save(scripted, str(tmp_path / "ViT-L-14.pt"))
    with pytest.raises(ValueError, match="TorchScript"):
        ClipModel(tmp_path / "ViT-L-14.pt", model_name=TINY_OPEN_CLIP)
    with pytest.raises(FileNotFoundError, match="open_clip"):
        ClipModel(tmp_path / "absent.safetensors", backend="open_clip")


def test_mask2former_adapter_decodes_instances(mask2former_dir: Path):
    from decodelab.eval.geneval_models import Mask2FormerDetector

    detector = Mask2FormerDetector(mask2former_dir, shortest_edge=64, longest_edge=96, max_per_image=10)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8))
    dets = detector(image)
    assert 0 < len(dets) <= 10
    assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)
    for d in dets:
        assert d.label in COCO_FEW and 0.0 <= d.score <= 1.0
        assert d.mask.shape == (48, 80) and d.mask.any()
        ys, xs = np.nonzero(d.mask)
        assert d.bbox == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # box = the mask's extent
    assert detector.settings()["detector_weights_sha256"]
    with pytest.raises(FileNotFoundError, match="mask2former-swin-small-coco-instance"):
        Mask2FormerDetector(mask2former_dir.parent / "absent")


def test_masked_crop_composites_over_grey():
    from decodelab.eval.geneval_models import masked_crop

    image = Image.new("RGB", (10, 10), (255, 0, 0))
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:6] = True
    mask[2, 3] = False
    crop = np.asarray(masked_crop(image, ge.Detection("dog", (3, 2, 6, 5), 1.0, mask)))
    assert crop.shape == (3, 3, 3)
    assert tuple(crop[0, 0]) == (0x99, 0x99, 0x99) and tuple(crop[1, 1]) == (255, 0, 0)


def test_clip_adapter_colour_classifier_and_clip_score(clip_dir: Path):
    from decodelab.eval.clip_score import ClipModel, clip_score, clip_scores
    from decodelab.eval.geneval_models import ClipColorClassifier

    model = ClipModel(clip_dir)
    assert model.backend == "transformers" and model.image_size == 32
    images = [Image.new("RGB", (40, 30), c) for c in ("red", "blue")]
    e = model.encode_images(images)
    assert e.shape == (2, 16) and torch.allclose(e.norm(dim=-1), torch.ones(2))
    per = clip_scores(images, ["a red dog", "a blue cat"], model)
    manual = 100 * (e * model.encode_texts(["a red dog", "a blue cat"])).sum(-1)
    assert per == pytest.approx(manual.double().numpy(), rel=1e-5)
    assert clip_score(images, ["a red dog", "a blue cat"], model) == pytest.approx(max(per.mean(), 0.0))
    clf = ClipColorClassifier(model)
    head = clf.head("dog")
    assert head.shape == (10, 16)  # 10 colours, each the normalised mean of 3 templates
    t = model.encode_texts([tpl.format(c="pink", obj="dog") for tpl in ge.COLOR_TEMPLATES]).mean(0)
    assert torch.allclose(head[ge.COLORS.index("pink")], t / t.norm(), atol=1e-6)
    dets = [ge.Detection("dog", (0, 0, 20, 15), 0.9, None), ge.Detection("dog", (20, 15, 40, 30), 0.8, None)]
    colours = clf(images[0], dets, "dog")
    assert len(colours) == 2 and set(colours) <= set(ge.COLORS)
    with pytest.raises(ValueError, match="captions"):
        clip_scores(images, ["one"], model)
    with pytest.raises(FileNotFoundError, match="clip-vit-large-patch14"):
        ClipModel(clip_dir.parent / "absent")


def test_score_folder_with_mask2former_and_clip(mask2former_dir: Path, clip_dir: Path, tmp_path: Path):
    from decodelab.eval.clip_score import ClipModel
    from decodelab.eval.geneval_models import ClipColorClassifier, Mask2FormerDetector

    metas = [{"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}], "prompt": "a red dog"}]
    d = ge.write_prompt_folders(tmp_path, metas)[0]
    Image.new("RGB", (32, 32), (200, 30, 30)).save(d / "samples" / "0000.png")
    seen = []
    clf = ClipColorClassifier(ClipModel(clip_dir))

    def spy(image, dets, cls):
        seen.append((len(dets), cls))
        return clf(image, dets, cls)

    detector = Mask2FormerDetector(mask2former_dir, shortest_edge=64, longest_edge=64)
    res = ge.score_folder(tmp_path, detector, color_classifier=spy, threshold=0.0, progress=False)
    assert res["num_images"] == 1 and res["per_task"].keys() == {"colors"}
    assert any(x["label"] == "dog" for x in res["per_image"][0]["detections"])  # threshold 0 keeps every pair
    assert seen == [(1, "dog")]  # the classifier sees the top dog only
    record = res["per_image"][0]
    assert record["correct"] == (clf(Image.open(d / "samples" / "0000.png"), [max(
        (x for x in detector(Image.open(d / "samples" / "0000.png").convert("RGB")) if x.label == "dog"),
        key=lambda x: x.score)], "dog") == ["red"])  # fmt: skip


def test_eval_clip_cli_on_a_geneval_folder(clip_dir: Path, tmp_path: Path):
    from decodelab.cli import main
    from decodelab.eval.clip_score import ClipModel, clip_score

    metas = [{"tag": "single_object", "include": [{"class": c, "count": 1}], "prompt": f"a photo of a {c}"}
             for c in ("dog", "cat")]  # fmt: skip
    images = []
    for d, colour in zip(ge.write_prompt_folders(tmp_path, metas), ("red", "green")):
        for j in range(2):
            im = Image.new("RGB", (36, 36), colour)
            im.save(d / "samples" / f"{j:04d}.png")
            images.append(im)
    assert main(["eval", "clip", "--images", str(tmp_path), "--clip-weights", str(clip_dir)]) == 0
    res = json.loads((tmp_path / "clip_score.json").read_text())
    captions = [m["prompt"] for m in metas for _ in range(2)]
    assert res["metrics"]["clip_score"] == pytest.approx(clip_score(images, captions, ClipModel(clip_dir)), rel=1e-5)
    assert res["settings"]["num_images"] == 4 and res["settings"]["clip_backend"] == "transformers"
