"""The sampler under concurrent runs, crashes and damaged files; conditions refused before any manifest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import decodelab
from decodelab.cli import main
from decodelab.speculative import SamplingConfig
from decodelab.vision import sampler

KW = dict(decoder="ar", sampling=SamplingConfig(cfg_scale=2.0), seed=5, batch_size=2, progress=False)


@pytest.fixture(scope="module")
def c2i():
    return decodelab.load_pipeline("test-c2i")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ----------------------------------------------------------------------------- (a) temporary files
def test_temporary_names_are_per_process_and_live_runs_keep_theirs(c2i, tmp_path: Path, monkeypatch):
    shard = tmp_path / "shard_00000"
    shard.mkdir(parents=True)
    live = shard / f"000001.png.{sampler._HOST}.{os.getppid()}.tmp"  # another run, still alive
    other_host = shard / f"000001.png.another-host.{_dead_pid()}.tmp"  # cannot tell: left alone
    dead = shard / f"000002.png.{sampler._HOST}.{_dead_pid()}.tmp"  # a run that died: cleaned up
    for f in (live, other_host, dead):
        f.write_bytes(b"partial")
    renamed: list[str] = []
    real_replace = Path.replace

    def spy(self: Path, target):
        renamed.append(self.name)
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", spy)
    sampler.sample_to_folder(c2i, [1, 2, 3], tmp_path, **KW)
    pngs = [n for n in renamed if ".png." in n]
    assert len(pngs) == 3 and all(n.endswith(f".{sampler._HOST}.{os.getpid()}.tmp") for n in pngs)
    assert live.read_bytes() == b"partial" and other_host.is_file() and not dead.exists()
    assert sampler.check_complete(tmp_path) == []


# ------------------------------------------------------------------------------------------ (b) lock
def test_a_second_run_into_a_folder_in_use_fails_clearly(c2i, tmp_path: Path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from decodelab.vision.sampler import FolderLock; "
         "FolderLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(sampler.FolderInUseError, match=f"{tmp_path} is in use by pid {holder.pid}"):
            sampler.sample_to_folder(c2i, [1, 2], tmp_path, **KW)
        assert not (tmp_path / sampler.MANIFEST).exists()
        rc = main(["sample", "--model", "test-c2i", "--num-samples", "2", "--out", str(tmp_path), "--no-progress"])
        assert rc == 2
    finally:
        holder.kill()
        holder.wait()
    # the holder died: its lock file (naming a dead pid) is stale and taken over
    assert json.loads((tmp_path / sampler.LOCK).read_text())["pid"] == holder.pid
    assert sampler.sample_to_folder(c2i, [1, 2], tmp_path, **KW)["generated"] == 2
    assert not (tmp_path / sampler.LOCK).exists()


def test_lock_conflicts_in_one_process_and_a_stale_lock_file_is_recovered(c2i, tmp_path: Path):
    with sampler.FolderLock(tmp_path):
        with pytest.raises(sampler.FolderInUseError, match=f"in use by pid {os.getpid()}"):
            sampler.sample_to_folder(c2i, [1], tmp_path, **KW)
    (tmp_path / sampler.LOCK).write_text(json.dumps({"pid": _dead_pid(), "host": sampler._HOST}))
    assert sampler.sample_to_folder(c2i, [1], tmp_path, **KW)["generated"] == 1


# -------------------------------------------------------------------------------- (c) verification
def test_truncated_or_altered_files_are_not_done(c2i, tmp_path: Path):
    conds = list(range(7))
    kw = {**KW, "shard_size": 4}
    sampler.sample_to_folder(c2i, conds, tmp_path, **kw)
    files = sampler.sample_files(tmp_path)
    clean = [f.read_bytes() for f in files]
    files[1].write_bytes(clean[1][: len(clean[1]) // 2])  # truncated (a complete shard: checked by its sha256)
    files[2].write_bytes(clean[3])  # a valid PNG, but not the recorded one
    files[5].write_bytes(clean[5][:-12])  # truncated in a shard without a done record: checked by decoding
    (tmp_path / "shard_00001" / "done.json").unlink()
    assert sampler.check_complete(tmp_path) == [1, 2, 5]
    with pytest.raises(ValueError, match="lacks 3 samples"):
        sampler.load_samples(tmp_path)
    stats = sampler.sample_to_folder(c2i, conds, tmp_path, **kw)
    assert stats["generated"] == 7 and stats["resumed"] == 0  # each shard is one chunk here
    assert [f.read_bytes() for f in files] == clean and sampler.check_complete(tmp_path) == []
    record = json.loads((tmp_path / "shard_00001" / "done.json").read_text())
    assert len(record["sha256"]) == 3


def test_samples_without_a_manifest_are_not_adopted(c2i, tmp_path: Path):
    (tmp_path / "shard_00000").mkdir()
    (tmp_path / "shard_00000" / "000000.png").write_bytes(b"not ours")
    with pytest.raises(ValueError, match="without a manifest.json"):
        sampler.sample_to_folder(c2i, [1], tmp_path, **KW)


# ---------------------------------------------------------------------- (d) conditions before manifest
def test_prompts_on_a_class_model_fail_before_any_manifest(c2i, tmp_path: Path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    out = tmp_path / "s"
    assert main(["sample", "--model", "test-c2i", "--prompts", str(prompts), "--out", str(out), "--no-progress"]) == 2
    assert "class-conditional" in capsys.readouterr().err and not (out / sampler.MANIFEST).exists()
    with pytest.raises(ValueError, match="class-conditional"):
        sampler.sample_to_folder(c2i, ["a red circle"], out, **KW)
    with pytest.raises(ValueError, match=r"class ids 0\.\.9"):
        sampler.sample_to_folder(c2i, [3, 10], out, **KW)
    assert not (out / sampler.MANIFEST).exists()
    # the folder is not blocked: the right command then runs in it
    assert main(["sample", "--model", "test-c2i", "--num-samples", "2", "--out", str(out), "--no-progress"]) == 0


def test_class_ids_on_a_text_model_fail_before_any_manifest(tmp_path: Path):
    from decodelab.registry import MODELS
    from decodelab.vision.pipeline import ImageGenerationPipeline

    tok = MODELS.create("test_vq")
    gpt = MODELS.create("test_gpt_t2i", vocab_size=tok.codebook_size, caption_dim=8, cls_token_num=2)
    pipe = ImageGenerationPipeline(gpt, tok, text_encoder=object(), info={"name": "t2i"})  # never called
    with pytest.raises(ValueError, match="t2i is text-conditional"):
        sampler.sample_to_folder(pipe, [1, 2], tmp_path, **KW)
    assert not (tmp_path / sampler.MANIFEST).exists()


# ------------------------------------------------------------------------------- eval fmnist / shapes
def test_eval_fmnist_samples_through_the_sampler(tmp_path: Path, monkeypatch):
    from decodelab.eval import fmnist

    seen = {}

    def fake_metrics(images, conds):
        seen["images"], seen["conds"] = images, conds
        return {"accuracy": 1.0}

    monkeypatch.setattr(fmnist, "evaluate_generated", fake_metrics)  # the metrics need the dataset
    monkeypatch.setattr(fmnist, "noise_floor_fid", lambda n, seed: 0.0)
    out = tmp_path / "run"
    argv = ["eval", "fmnist", "--model", "test-c2i", "--per-class", "1", "--batch-size", "3", "--seed", "2",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    m = sampler.read_manifest(out)
    assert m["num_samples"] == 10 and m["settings"]["conditions"] == list(range(10))
    assert seen["conds"] == list(range(10))
    files = sampler.sample_files(out)
    assert all(np.array_equal(np.asarray(a), np.asarray(sampler.load_samples(out)[i])) for i, a in
               enumerate(seen["images"])) and files[0].name == "000000.png"  # fmt: skip
    assert json.loads((out / "results.json").read_text())["generation"]["generated"] == 10
    assert main(argv) == 0
    assert json.loads((out / "results.json").read_text())["generation"]["resumed"] == 10
    old = tmp_path / "old"
    (old / "images").mkdir(parents=True)
    (old / "run.json").write_text("{}")
    assert main([*argv[:-1], str(old)]) == 2
