"""Sharded sampling: resume after a crash, refusal of changed settings, and torchrun with 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import decodelab
from decodelab.eval import sampler
from decodelab.speculative import SamplingConfig


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png")) if ".tmp" not in p.name}


def test_resume_after_a_crash_gives_exactly_n_unique_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pipe = decodelab.load_pipeline("test-c2i")
    conds = [i % 10 for i in range(11)]
    kw = dict(decoder="ar", sampling=SamplingConfig(cfg_scale=2.0), seed=7, batch_size=3, shard_size=4, progress=False)
    sampler.sample_to_shards(pipe, conds, tmp_path / "clean", **kw)
    clean = _files(tmp_path / "clean")
    assert len(clean) == 11 and sampler.check_complete(tmp_path / "clean") == []

    real_save, calls = sampler.save_png_atomic, {"n": 0}

    def crash_after_six(image, path):
        if calls["n"] == 6:  # killed while writing the 7th image (a temporary file is left behind)
            path.with_name(path.stem + ".tmp.png").write_bytes(b"partial")
            raise KeyboardInterrupt
        calls["n"] += 1
        real_save(image, path)

    monkeypatch.setattr(sampler, "save_png_atomic", crash_after_six)
    with pytest.raises(KeyboardInterrupt):
        sampler.sample_to_shards(pipe, conds, tmp_path / "run", **kw)
    assert len(_files(tmp_path / "run")) == 6 and len(sampler.check_complete(tmp_path / "run")) == 5
    assert list((tmp_path / "run").rglob("*.tmp.png"))  # the half-written file of the crash
    monkeypatch.setattr(sampler, "save_png_atomic", real_save)
    stats = sampler.sample_to_shards(pipe, conds, tmp_path / "run", **kw)
    # shard 0 (samples 0-3) was complete; the crash cut shard 1 (one chunk, samples 4-7), which is redone whole
    assert stats["resumed"] == 4 and stats["generated"] == 7
    assert _files(tmp_path / "run") == clean  # exactly N unique samples, identical to an uninterrupted run
    assert not list((tmp_path / "run").rglob("*.tmp*"))
    assert sampler.sample_to_shards(pipe, conds, tmp_path / "run", **kw)["generated"] == 0
    with pytest.raises(ValueError, match="other settings"):
        sampler.sample_to_shards(pipe, conds, tmp_path / "run", **{**kw, "seed": 8})
    manifest = sampler.read_manifest(tmp_path / "run")
    assert manifest["num_samples"] == 11 and manifest["settings"]["seed"] == 7


def test_image_size_eval_resizes_before_saving(tmp_path: Path) -> None:
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from decodelab.vision.pipeline import tensor_to_pil

    pipe = decodelab.load_pipeline("test-c2i")
    kw = dict(decoder="ar", sampling=SamplingConfig(cfg_scale=2.0), seed=3, batch_size=2, progress=False)
    sampler.sample_to_shards(pipe, [1, 2, 3], tmp_path / "native", **kw)
    sampler.sample_to_shards(pipe, [1, 2, 3], tmp_path / "small", image_size=8, **kw)
    native = Image.open(sampler.sample_path(tmp_path / "native", 1, 1000))
    small = Image.open(sampler.sample_path(tmp_path / "small", 1, 1000))
    assert native.size == (16, 16) and small.size == (8, 8)
    # The resize acts on the decoded float image (bicubic), not on the saved 8-bit PNG.
    from decodelab.eval.generation import generate_batch
    from decodelab.speculative.base import create_decoder
    from decodelab.speculative.sampling import row_generators

    gens = row_generators(torch.Generator().manual_seed(3), 3)
    _, out = generate_batch(pipe, create_decoder("ar"), [1, 2, 3], gens, kw["sampling"])
    with torch.no_grad():
        decoded = pipe.tokenizer.decode(out.tokens)
    want = tensor_to_pil(F.interpolate(decoded, size=(8, 8), mode="bicubic", align_corners=False))[1]
    assert np.array_equal(np.asarray(small), np.asarray(want))
    assert not np.array_equal(np.asarray(small), np.asarray(native.resize((8, 8), Image.BICUBIC)))
    manifest = sampler.read_manifest(tmp_path / "small")
    assert manifest["settings"]["image_size_eval"] == 8
    assert "image_size_eval" not in sampler.read_manifest(tmp_path / "native")["settings"]
    with pytest.raises(ValueError, match="other settings"):
        sampler.sample_to_shards(pipe, [1, 2, 3], tmp_path / "small", image_size=12, **kw)
    with pytest.raises(ValueError, match="image_size"):
        sampler.sample_to_shards(pipe, [1, 2, 3], tmp_path / "bad", image_size=0, **kw)


def _reference(path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, arr_0=rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8))
    return path


def test_two_torchrun_processes_give_the_same_samples_and_metric(tmp_path: Path):
    from decodelab.cli import main

    ref = _reference(tmp_path / "ref.npz")
    common = ["--model", "test-c2i", "--num-samples", "10", "--shard-size", "3", "--batch-size", "2",
              "--metrics", "fid,is,pr", "--ref", str(ref), "--extractor", "fmnist-classifier", "--is-splits", "2",
              "--no-progress"]  # fmt: skip
    assert main(["sample", *common, "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DECODELAB_TEST_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "decodelab.cli", "sample", *common, "--out", str(tmp_path / "two")]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["settings"]["world_size"] == 2 and two["sampling_run"]["world_size"] == 2
    assert two["sampling_run"]["generated"] == 10 and two["settings"]["num_samples"] == 10
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    assert one["metrics"].keys() == two["metrics"].keys()
    for k, v in one["metrics"].items():
        assert two["metrics"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
