"""The resumable sampler: resume after a crash, batching independence, layouts, and torchrun with 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import decodelab
from decodelab.speculative import SamplingConfig
from decodelab.vision import sampler


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_resume_after_a_crash_gives_exactly_n_unique_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pipe = decodelab.load_pipeline("test-c2i")
    conds = [i % 10 for i in range(11)]
    kw = dict(decoder="ar", sampling=SamplingConfig(cfg_scale=2.0), seed=7, batch_size=3, shard_size=4, progress=False)
    sampler.sample_to_folder(pipe, conds, tmp_path / "clean", **kw)
    clean = _files(tmp_path / "clean")
    assert len(clean) == 11 and sampler.check_complete(tmp_path / "clean") == []
    assert sorted(clean)[:2] == ["shard_00000/000000.png", "shard_00000/000001.png"]
    done = json.loads((tmp_path / "clean" / "shard_00001" / "done.json").read_text())
    assert done["first"] == 4 and done["last"] == 7 and sorted(done["sha256"])[0] == "shard_00001/000004.png"

    real_write, calls, dead = sampler.write_png, {"n": 0}, _dead_pid()

    def crash_after_six(image, path):
        if calls["n"] == 6:  # a process killed while writing the 7th image leaves its temporary file
            path.with_name(f"{path.name}.{sampler._HOST}.{dead}.tmp").write_bytes(b"partial")
            raise KeyboardInterrupt
        calls["n"] += 1
        return real_write(image, path)

    monkeypatch.setattr(sampler, "write_png", crash_after_six)
    with pytest.raises(KeyboardInterrupt):
        sampler.sample_to_folder(pipe, conds, tmp_path / "run", **kw)
    assert len(_files(tmp_path / "run")) == 6 and len(sampler.check_complete(tmp_path / "run")) == 5
    assert list((tmp_path / "run").rglob("*.tmp")) and not (tmp_path / "run" / ".lock").exists()
    monkeypatch.setattr(sampler, "write_png", real_write)
    stats = sampler.sample_to_folder(pipe, conds, tmp_path / "run", **kw)
    # shard 0 (samples 0-3) was complete; the crash cut shard 1 (one chunk, samples 4-7), which is decoded again
    assert stats["resumed"] == 4 and stats["generated"] == 7
    assert _files(tmp_path / "run") == clean  # exactly N unique samples, identical to an uninterrupted run
    assert not list((tmp_path / "run").rglob("*.tmp"))  # the dead process's temporary file is gone
    assert sampler.sample_to_folder(pipe, conds, tmp_path / "run", **kw)["generated"] == 0
    with pytest.raises(ValueError, match="other settings"):
        sampler.sample_to_folder(pipe, conds, tmp_path / "run", **{**kw, "seed": 8})
    manifest = sampler.read_manifest(tmp_path / "run")
    assert manifest["num_samples"] == 11 and manifest["settings"]["seed"] == 7
    assert manifest["layout"] == {"name": "flat", "images_per_prompt": 1}


def test_images_do_not_depend_on_batching_or_resumption(tmp_path: Path) -> None:
    pipe = decodelab.load_pipeline("test-c2i")
    conds = [i % 10 for i in range(12)]
    kw = dict(decoder="sjd", sampling=SamplingConfig(cfg_scale=2.0), seed=3, progress=False)
    stats = sampler.sample_to_folder(pipe, conds, tmp_path / "b2", batch_size=2, **kw)
    assert stats["generated"] == 12 and stats["resumed"] == 0
    files = sampler.sample_files(tmp_path / "b2")
    first = [f.read_bytes() for f in files]
    chunk = 2 * sampler.CHUNK_BATCHES  # samples per resumable chunk (one continuously batched call)
    files[chunk + 1].unlink()  # an interrupted run: the second chunk is incomplete
    stats = sampler.sample_to_folder(pipe, conds, tmp_path / "b2", batch_size=2, **kw)
    assert stats["generated"] == 12 - chunk and stats["resumed"] == chunk
    assert [f.read_bytes() for f in files] == first
    # the same images with another batch size (per-sample random streams), also one image at a time
    for b in (1, 3):
        sampler.sample_to_folder(pipe, conds, tmp_path / f"b{b}", batch_size=b, **kw)
        assert [f.read_bytes() for f in sampler.sample_files(tmp_path / f"b{b}")] == first
    # and the pipeline's own call draws the same images (row_generators(seed, N)[i] for sample i)
    out = pipe(classes=conds, seed=3, decoder="sjd", cfg_scale=2.0)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(out.images, sampler.load_samples(
        tmp_path / "b1")))  # fmt: skip


def test_geneval_layout_shares_streams_across_prompts(tmp_path: Path) -> None:
    from decodelab.speculative.base import create_decoder

    pipe = decodelab.load_pipeline("test-c2i")
    s = SamplingConfig(cfg_scale=2.0)
    layout = sampler.Layout("geneval", images_per_prompt=2)
    conds = [4, 4, 4, 4, 7, 7]  # three "prompts" of two images
    stats = sampler.sample_to_folder(pipe, conds, tmp_path, sampling=s, seed=42, batch_size=2, shard_size=6,
                                     layout=layout, progress=False)  # fmt: skip
    assert stats["generated"] == 6 and stats["layout"] == {"name": "geneval", "images_per_prompt": 2}
    names = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.png"))
    assert names == [f"{p:05d}/samples/{j:04d}.png" for p in range(3) for j in range(2)]
    assert (tmp_path / "shard_00000" / "done.json").is_file()
    img = {(p, j): (tmp_path / f"{p:05d}" / "samples" / f"{j:04d}.png").read_bytes()
           for p in range(3) for j in range(2)}  # fmt: skip
    assert img[0, 0] == img[1, 0] and img[0, 1] == img[1, 1] and img[0, 0] != img[0, 1]  # stream j per prompt
    # GenEval's rule: image j of every prompt draws from seed_j, the j-th of randint(0, 2**62, (k,)) from the seed
    seeds = torch.randint(0, 2**62, (2,), generator=torch.Generator().manual_seed(42)).tolist()
    gens = [torch.Generator().manual_seed(x) for x in seeds]
    want, _ = sampler.generate_batch(pipe, create_decoder("ar"), [7, 7], gens, s)
    got = sampler.load_samples(tmp_path)[4:]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(want, got))
    with pytest.raises(ValueError, match="whole number of prompts"):
        sampler.sample_to_folder(pipe, conds[:5], tmp_path / "odd", sampling=s, layout=layout, progress=False)


def test_image_size_eval_resizes_before_saving(tmp_path: Path) -> None:
    import torch.nn.functional as F
    from PIL import Image

    from decodelab.speculative.base import create_decoder
    from decodelab.speculative.sampling import row_generators
    from decodelab.vision.pipeline import tensor_to_pil

    pipe = decodelab.load_pipeline("test-c2i")
    kw = dict(decoder="ar", sampling=SamplingConfig(cfg_scale=2.0), seed=3, batch_size=2, progress=False)
    sampler.sample_to_folder(pipe, [1, 2, 3], tmp_path / "native", **kw)
    sampler.sample_to_folder(pipe, [1, 2, 3], tmp_path / "small", image_size=8, **kw)
    native = Image.open(sampler.sample_path(tmp_path / "native", 1, 1000))
    small = Image.open(sampler.sample_path(tmp_path / "small", 1, 1000))
    assert native.size == (16, 16) and small.size == (8, 8)
    # The resize acts on the decoded float image (bicubic), not on the saved 8-bit PNG.
    gens = row_generators(torch.Generator().manual_seed(3), 3)
    _, out = sampler.generate_batch(pipe, create_decoder("ar"), [1, 2, 3], gens, kw["sampling"])
    with torch.no_grad():
        decoded = pipe.tokenizer.decode(out.tokens)
    want = tensor_to_pil(F.interpolate(decoded, size=(8, 8), mode="bicubic", align_corners=False))[1]
    assert np.array_equal(np.asarray(small), np.asarray(want))
    assert not np.array_equal(np.asarray(small), np.asarray(native.resize((8, 8), Image.BICUBIC)))
    manifest = sampler.read_manifest(tmp_path / "small")
    assert manifest["settings"]["image_size_eval"] == 8
    assert "image_size_eval" not in sampler.read_manifest(tmp_path / "native")["settings"]
    with pytest.raises(ValueError, match="other settings"):
        sampler.sample_to_folder(pipe, [1, 2, 3], tmp_path / "small", image_size=12, **kw)
    with pytest.raises(ValueError, match="image_size"):
        sampler.sample_to_folder(pipe, [1, 2, 3], tmp_path / "bad", image_size=0, **kw)


def test_a_folder_of_the_first_format_version_still_resumes(tmp_path: Path) -> None:
    """Manifests without a layout and done records without hashes (written before both existed)."""
    pipe = decodelab.load_pipeline("test-c2i")
    kw = dict(sampling=SamplingConfig(cfg_scale=2.0), seed=1, batch_size=2, shard_size=2, progress=False)
    sampler.sample_to_folder(pipe, [1, 2, 3], tmp_path, **kw)
    m = json.loads((tmp_path / "manifest.json").read_text())
    del m["layout"]
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    for d in tmp_path.glob("shard_*/done.json"):
        rec = json.loads(d.read_text())
        del rec["sha256"]
        d.write_text(json.dumps(rec))
    assert sampler.sample_to_folder(pipe, [1, 2, 3], tmp_path, **kw)["resumed"] == 3


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
    assert not (tmp_path / "two" / ".lock").exists()
    assert one["metrics"].keys() == two["metrics"].keys()
    for k, v in one["metrics"].items():
        assert two["metrics"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    # a refused run refuses on every rank (rank 0 checks the manifest under the lock and tells the others)
    cmd[cmd.index("--num-samples") + 1] = "9"
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0 and "other settings" in proc.stderr
