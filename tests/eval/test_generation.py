"""Resumable generation: an interrupted run continues with identical images."""

from __future__ import annotations

import pytest

import decodelab
from decodelab.eval.generation import CHUNK_BATCHES, generate_to_folder
from decodelab.speculative import SamplingConfig


def test_generation_resumes_identically(tmp_path) -> None:
    pipe = decodelab.load_pipeline("test-c2i")
    conds = [i % 10 for i in range(12)]
    s = SamplingConfig(cfg_scale=2.0)
    _, stats = generate_to_folder(
        pipe, conds, tmp_path, decoder="sjd", sampling=s, seed=3, batch_size=2, progress=False
    )
    assert stats["generated_images"] == 12
    files = sorted((tmp_path / "images").glob("*.png"))
    first = [f.read_bytes() for f in files]
    chunk = 2 * CHUNK_BATCHES  # images per resumable chunk (one continuously batched call)
    files[chunk + 1].unlink()  # an interrupted run: the second chunk is incomplete
    _, stats = generate_to_folder(
        pipe, conds, tmp_path, decoder="sjd", sampling=s, seed=3, batch_size=2, progress=False
    )
    assert stats["generated_images"] == 12 - chunk and stats["resumed_images"] == chunk
    assert [f.read_bytes() for f in sorted((tmp_path / "images").glob("*.png"))] == first
    # the same images come out with another batch size (per-image random streams), also one image at a time
    for b in (1, 3):
        generate_to_folder(pipe, conds, tmp_path / f"b{b}", decoder="sjd", sampling=s, seed=3, batch_size=b,
                           progress=False)  # fmt: skip
        assert [f.read_bytes() for f in sorted((tmp_path / f"b{b}" / "images").glob("*.png"))] == first


def test_resume_refuses_different_settings(tmp_path) -> None:
    pipe = decodelab.load_pipeline("test-c2i")
    generate_to_folder(pipe, [1, 2], tmp_path, sampling=SamplingConfig(), seed=0, progress=False)
    with pytest.raises(ValueError, match="different settings"):
        generate_to_folder(pipe, [1, 2], tmp_path, sampling=SamplingConfig(), seed=1, progress=False)
