"""Tests for ImageGenerationPipeline on the tiny random ``test-c2i`` pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import decodelab
from decodelab.vision.pipeline import ImageGenerationPipeline, PipelineOutput, load_pipeline, tensor_to_pil


@pytest.fixture(scope="module")
def pipe() -> ImageGenerationPipeline:
    return load_pipeline("test-c2i")


def as_arrays(out: PipelineOutput) -> list[np.ndarray]:
    return [np.asarray(im) for im in out.images]


def test_registered_and_listed() -> None:
    assert "test_c2i" in decodelab.list_pipelines()
    assert isinstance(decodelab.load_pipeline("test-c2i"), ImageGenerationPipeline)


def test_generates_pil_images_of_the_tokenizer_output_size(pipe: ImageGenerationPipeline) -> None:
    out = pipe(classes=[1, 2, 3], seed=0)
    side = pipe.model.grid_size * pipe.tokenizer.upsample_factor
    assert len(out.images) == 3 and out.conditions == [1, 2, 3]
    for im in out.images:
        assert isinstance(im, Image.Image) and im.size == (side, side) and im.mode == "RGB"
    assert out.tokens.shape == (3, pipe.model.grid_size, pipe.model.grid_size)
    # The images are the tokenizer's decoding of the returned tokens.
    with torch.no_grad():
        decoded = tensor_to_pil(pipe.tokenizer.decode(out.tokens))
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(decoded, out.images))
    assert out.decode.decoder == "ar" and out.nfe == pipe.model.num_tokens
    assert out.settings["sampling"]["cfg_scale"] == 2.0  # the pipeline's default
    assert out.settings["seed"] == 0 and out.settings["pipeline"] == "test-c2i"


def test_same_seed_same_images_different_seed_differs(pipe: ImageGenerationPipeline) -> None:
    a = pipe(classes=[4, 5], seed=3)
    b = pipe(classes=[4, 5], seed=3)
    c = pipe(classes=[4, 5], seed=4)
    assert torch.equal(a.tokens, b.tokens)
    assert all(np.array_equal(x, y) for x, y in zip(as_arrays(a), as_arrays(b)))
    assert not torch.equal(a.tokens, c.tokens)


def test_sampling_overrides_are_used(pipe: ImageGenerationPipeline) -> None:
    greedy = pipe(classes=[6, 6], seed=0, top_k=1)
    assert torch.equal(greedy.tokens[0], greedy.tokens[1])  # greedy ignores the random stream
    assert torch.equal(pipe(classes=[6], seed=99, top_k=1).tokens[0], greedy.tokens[0])
    assert greedy.settings["sampling"]["top_k"] == 1
    out = pipe(classes=[6], seed=0, cfg_scale=1.0, temperature=0.5, output_type="tensor")
    assert out.images == [] and out.settings["sampling"]["cfg_scale"] == 1.0


def test_num_images_and_batch_size_do_not_change_an_image(pipe: ImageGenerationPipeline) -> None:
    full = pipe(classes=[1, 7], num_images=3, seed=5)
    assert full.conditions == [1, 1, 1, 7, 7, 7] and len(full.images) == 6 and len(full.outputs) == 1
    one_by_one = pipe(classes=[1, 7], num_images=3, seed=5, batch_size=1)
    assert one_by_one.nfe == 6 * pipe.model.num_tokens and one_by_one.decode.extras["batches"] == 6
    uneven = pipe(classes=[1, 7], num_images=3, seed=5, batch_size=4)
    assert uneven.decode.extras["batches"] == 2 and uneven.decode.accepted.shape == (2 * pipe.model.num_tokens, 6)
    refilled = pipe(classes=[1, 7], num_images=3, seed=5, batch_size=4, decoder="sjd")
    assert refilled.decode.extras["continuous"] is True
    assert torch.equal(refilled.tokens, pipe(classes=[1, 7], num_images=3, seed=5, decoder="sjd").tokens)
    for other in (one_by_one, uneven):
        assert torch.equal(other.tokens, full.tokens)
        assert all(np.array_equal(x, y) for x, y in zip(as_arrays(other), as_arrays(full)))
    assert not torch.equal(full.tokens[0], full.tokens[1])  # images of one class differ
    # Image 0 of class 1 does not depend on how many images are asked for.
    first = pipe(classes=[1], num_images=1, seed=5)
    assert torch.equal(first.tokens[0], full.tokens[0])


def test_save_and_reload_gives_identical_images(pipe: ImageGenerationPipeline, tmp_path: Path) -> None:
    d = pipe.save_pretrained(tmp_path / "pipe")
    assert (d / "pipeline.json").is_file() and (d / "model" / "model.safetensors").is_file()
    assert (d / "tokenizer" / "config.json").is_file()
    loaded = load_pipeline(str(d))
    assert loaded.defaults == pipe.defaults and loaded.info == pipe.info
    a = pipe(classes=[0, 9], seed=1)
    b = loaded(classes=[0, 9], seed=1)
    assert torch.equal(a.tokens, b.tokens)
    assert all(np.array_equal(x, y) for x, y in zip(as_arrays(a), as_arrays(b)))
    c = ImageGenerationPipeline.from_pretrained(d)(classes=[0, 9], seed=1)
    assert torch.equal(c.tokens, a.tokens)
    assert torch.equal(load_pipeline(d)(classes=[0, 9], seed=1).tokens, a.tokens)  # a Path works too


def test_classes_and_prompts_are_exclusive(pipe: ImageGenerationPipeline) -> None:
    with pytest.raises(ValueError, match="exactly one of classes= .* or prompts="):
        pipe()
    with pytest.raises(ValueError, match="exactly one of"):
        pipe(classes=[1], prompts=["a cat"])
    with pytest.raises(ValueError, match="class-conditional: pass classes="):
        pipe(prompts=["a red circle"])


@pytest.mark.parametrize("bad", [10, -1, [1, 12], [2.5]])
def test_class_id_out_of_range_names_the_valid_range(pipe: ImageGenerationPipeline, bad) -> None:
    with pytest.raises(ValueError, match=r"out of range: valid ids are 0\.\.9"):
        pipe(classes=bad)


def test_other_argument_errors(pipe: ImageGenerationPipeline) -> None:
    with pytest.raises(ValueError, match="num_images"):
        pipe(classes=[1], num_images=0)
    with pytest.raises(ValueError, match="Did you mean 'ar'"):
        pipe(classes=[1], decoder="arr")
    with pytest.raises(ValueError, match="'bogus'"):
        pipe(classes=[1], decoder="ar", decoder_kwargs={"bogus": 1})
    with pytest.raises(ValueError, match="top_p"):
        pipe(classes=[1], top_p=0.0)


def test_unknown_pipeline_name() -> None:
    with pytest.raises(ValueError) as e:
        load_pipeline("test-c2")
    assert "unknown pipeline 'test-c2'" in str(e.value) and "test_c2i" in str(e.value)


def test_missing_pipeline_directory_or_config(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pipeline.json"):
        load_pipeline(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not download implicitly"):
        load_pipeline("someorg/somepipeline")


def test_vocabulary_mismatch_is_refused(pipe: ImageGenerationPipeline) -> None:
    small = decodelab.create_model("test_gpt", vocab_size=32)
    with pytest.raises(ValueError, match=r"vocabulary \(32\).*codebook \(64\)"):
        ImageGenerationPipeline(small, pipe.tokenizer)
    t2i = decodelab.create_model("test_gpt_t2i")
    with pytest.raises(ValueError, match="text_encoder"):
        ImageGenerationPipeline(t2i, pipe.tokenizer)


def test_tensor_to_pil() -> None:
    x = torch.tensor([[[[-1.0, 0.0], [1.0, 2.0]]]])  # [1, 1, 2, 2], one channel -> greyscale
    im = tensor_to_pil(x)[0]
    assert im.mode == "L" and np.array_equal(np.asarray(im), np.array([[0, 128], [255, 255]], dtype=np.uint8))
    rgb = tensor_to_pil(torch.zeros(2, 3, 4, 5))
    assert len(rgb) == 2 and rgb[0].mode == "RGB" and rgb[0].size == (5, 4)
