"""Resumable generation: an interrupted run continues with identical images."""

from __future__ import annotations

import pytest

import decodelab
from decodelab.eval.generation import generate_to_folder
from decodelab.speculative import SamplingConfig


def test_generation_resumes_identically(tmp_path) -> None:
    pipe = decodelab.load_pipeline("test-c2i")
    conds = [0, 1, 2, 3, 4, 5]
    s = SamplingConfig(cfg_scale=2.0)
    _, stats = generate_to_folder(
        pipe, conds, tmp_path, decoder="sjd", sampling=s, seed=3, batch_size=2, progress=False
    )
    assert stats["generated_images"] == 6
    files = sorted((tmp_path / "images").glob("*.png"))
    first = [f.read_bytes() for f in files]
    files[2].unlink()  # an interrupted run: the second batch is incomplete
    _, stats = generate_to_folder(
        pipe, conds, tmp_path, decoder="sjd", sampling=s, seed=3, batch_size=2, progress=False
    )
    assert stats["generated_images"] == 2 and stats["resumed_images"] == 4
    assert [f.read_bytes() for f in sorted((tmp_path / "images").glob("*.png"))] == first
    # the same images come out with another batch size (per-image random streams)
    _, _ = generate_to_folder(pipe, conds, tmp_path / "b3", decoder="sjd", sampling=s, seed=3, batch_size=3,
                              progress=False)  # fmt: skip
    assert [f.read_bytes() for f in sorted((tmp_path / "b3" / "images").glob("*.png"))] == first


def test_resume_refuses_different_settings(tmp_path) -> None:
    pipe = decodelab.load_pipeline("test-c2i")
    generate_to_folder(pipe, [1, 2], tmp_path, sampling=SamplingConfig(), seed=0, progress=False)
    with pytest.raises(ValueError, match="different settings"):
        generate_to_folder(pipe, [1, 2], tmp_path, sampling=SamplingConfig(), seed=1, progress=False)
