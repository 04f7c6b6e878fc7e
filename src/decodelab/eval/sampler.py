"""Sharded, resumable, multi-process sample generation (``decodelab sample``).

Layout of a sample folder::

    <out>/manifest.json              format, settings, num_samples, shard_size, conditions
    <out>/shard_00000/000000.png     sample 0 ... sample shard_size-1
    <out>/shard_00000/done.json      written (atomically) once the shard is complete
    <out>/shard_00001/...

Sample ``i`` always lives in ``shard_{i // shard_size}/{i:06d}.png`` and is drawn from its own
random stream derived from ``seed`` (:func:`decodelab.speculative.sampling.row_generators`), and
batches never cross a shard boundary, so the images depend on neither the number of processes
nor interruptions:

- **resume**: re-running the same command skips complete shards (``done.json``) and complete
  batches, and regenerates any batch with a missing file, so a run killed at any point ends with
  exactly ``num_samples`` distinct files, identical to an uninterrupted run. Files are written
  under a temporary name and renamed, so a half-written PNG never counts.
- **distributed**: under ``torchrun`` (gloo on CPU, NCCL on GPU) rank ``r`` of ``W`` generates
  shards ``r, r + W, r + 2W, ...``; with ``shard_size = ceil(N / W)`` that is one shard per rank.
- **settings**: the manifest records model, decoder, sampling, seed and conditions; resuming
  with different settings is refused.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from decodelab.eval.distributed import barrier, world_info
from decodelab.eval.generation import CHUNK_BATCHES, generate_batch, save_png_atomic
from decodelab.speculative.base import create_decoder
from decodelab.speculative.sampling import SamplingConfig, row_generators

__all__ = ["FORMAT", "MANIFEST", "check_complete", "read_manifest", "sample_path", "sample_to_shards"]

FORMAT = "decodelab-samples/1"
MANIFEST = "manifest.json"
DONE = "done.json"


def sample_path(out_dir: str | os.PathLike[str], index: int, shard_size: int) -> Path:
    """File of sample ``index``."""
    return Path(out_dir) / f"shard_{index // shard_size:05d}" / f"{index:06d}.png"


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def read_manifest(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a sample folder (``FileNotFoundError`` when there is none)."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{out_dir} is not a decodelab sample folder ({MANIFEST} missing)")
    return json.loads(path.read_text())


def check_complete(out_dir: str | os.PathLike[str]) -> list[int]:
    """Indices of the samples a folder still lacks (empty when complete)."""
    m = read_manifest(out_dir)
    return [i for i in range(m["num_samples"]) if not sample_path(out_dir, i, m["shard_size"]).is_file()]


def _settings(
    pipe, conds: Sequence[Any], dec, decoder: str, sampling: SamplingConfig, seed: int, image_size: int | None
) -> dict[str, Any]:
    settings = {
        "pipeline": pipe.info.get("name", ""),
        "decoder": decoder,
        "decoder_kwargs": dec.settings(),
        "sampling": vars(sampling),
        "seed": seed,
        "conditions": [c if isinstance(c, (int, str)) else str(c) for c in conds],
    }
    if image_size is not None:  # only when set, so folders written before the option still resume
        settings["image_size_eval"] = image_size
    return settings


def sample_to_shards(
    pipe,
    conds: Sequence[Any],
    out_dir: str | os.PathLike[str],
    *,
    decoder: str = "ar",
    decoder_kwargs: dict[str, Any] | None = None,
    sampling: SamplingConfig,
    seed: int = 0,
    batch_size: int = 32,
    shard_size: int = 1000,
    image_size: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate one image per condition into shards of ``out_dir`` (resuming; this rank's shards only).

    Args:
        pipe: an :class:`~decodelab.vision.pipeline.ImageGenerationPipeline`.
        conds: class ids (c2i) or prompts (t2i), one per sample.
        out_dir: the sample folder.
        decoder, decoder_kwargs: registered decoder and its options.
        sampling: sampling settings.
        seed: seed of the per-sample random streams.
        batch_size: rows decoded at once (continuous batching over chunks of ``CHUNK_BATCHES`` batches,
            the unit of resumption within a shard).
        shard_size: samples per shard (part of the layout: fixed for a folder).
        image_size: save samples resized to this square size (bicubic, LlamaGen's ``--image-size-eval``);
            ``None`` keeps the decoder's size.
        progress: progress bar on rank 0.

    Returns:
        Counts over all ranks: ``num_samples``, ``generated``, ``resumed``, ``total_nfe``,
        ``wall_time_s`` and the manifest ``settings``.

    Raises:
        ValueError: bad sizes, or a folder holding a run with other settings.
    """
    n = len(conds)
    if n < 1 or batch_size < 1 or shard_size < 1:
        raise ValueError(f"need at least one condition, batch_size >= 1 and shard_size >= 1; got {n}, "
                         f"{batch_size}, {shard_size}")  # fmt: skip
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    rank, world = world_info()
    out = Path(out_dir)
    dec = create_decoder(decoder, **(decoder_kwargs or {}))
    settings = _settings(pipe, conds, dec, decoder, sampling, seed, image_size)
    manifest = {
        "format": FORMAT,
        "num_samples": n,
        "shard_size": shard_size,
        "settings": json.loads(json.dumps(settings)),
    }
    mpath = out / MANIFEST
    if mpath.is_file():  # every rank checks, so all of them refuse together
        old = json.loads(mpath.read_text())
        if {k: old.get(k) for k in manifest} != manifest:
            raise ValueError(f"{out} holds samples with other settings (see its {MANIFEST}); use another --out "
                             "folder or delete it to start over")  # fmt: skip
    elif rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(mpath, manifest)
    barrier()
    gens = row_generators(torch.Generator().manual_seed(seed), n)  # sample i <- its own stream
    chunk = batch_size * CHUNK_BATCHES  # one continuously batched decoder call, the unit of resumption
    num_shards = math.ceil(n / shard_size)
    mine = list(range(rank, num_shards, world))
    total = sum(min(shard_size, n - s * shard_size) for s in mine)
    stats = {"generated": 0, "resumed": 0, "total_nfe": 0, "wall_time_s": 0.0}
    with tqdm(total=total, disable=not progress or rank != 0, desc=f"sample ({decoder}, rank {rank}/{world})",
              unit="img") as bar:  # fmt: skip
        for s in mine:
            lo, hi = s * shard_size, min((s + 1) * shard_size, n)
            sdir = out / f"shard_{s:05d}"
            if (sdir / DONE).is_file() and all(sample_path(out, i, shard_size).is_file() for i in range(lo, hi)):
                stats["resumed"] += hi - lo
                bar.update(hi - lo)
                continue
            sdir.mkdir(parents=True, exist_ok=True)
            for stale in sdir.glob("*.tmp*"):
                stale.unlink(missing_ok=True)  # left by an interrupted write
            for b in range(lo, hi, chunk):
                idx = list(range(b, min(b + chunk, hi)))
                files = [sample_path(out, i, shard_size) for i in idx]
                if all(f.is_file() for f in files):
                    stats["resumed"] += len(idx)
                    bar.update(len(idx))
                    continue
                images, o = generate_batch(
                    pipe, dec, [conds[i] for i in idx], [gens[i] for i in idx], sampling, max_batch=batch_size,
                    image_size=image_size,
                )  # fmt: skip
                for f, im in zip(files, images):
                    save_png_atomic(im, f)
                stats["generated"] += len(idx)
                stats["total_nfe"] += int(o.row_nfe.sum())
                stats["wall_time_s"] += float(o.wall_time)
                bar.update(len(idx))
            _write_json_atomic(sdir / DONE, {"first": lo, "last": hi - 1, "num_samples": hi - lo})
    if world > 1:
        parts: list[dict[str, Any] | None] = [None] * world
        dist.all_gather_object(parts, stats)
        stats = {k: sum(p[k] for p in parts) for k in stats}
    barrier()
    return {"num_samples": n, "shard_size": shard_size, "num_shards": num_shards, "world_size": world, **stats,
            "settings": manifest["settings"]}  # fmt: skip
