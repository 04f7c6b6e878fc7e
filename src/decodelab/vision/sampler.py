"""One resumable sampler for evaluation generation (``decodelab sample``, ``eval fmnist|shapes``, GenEval).

**Folder format** (``decodelab-samples/1``)::

    <out>/manifest.json               format, layout, num_samples, shard_size, settings (pipeline,
                                      decoder, sampling, seed, conditions[, image_size_eval][, drafter,
                                      upsampler: drafter decoders only])
    <out>/.lock                       exclusive lock of the run writing into the folder (its pid)
    <out>/shard_00000/000000.png      flat layout: sample i is shard_{i // shard_size}/{i:06d}.png
    <out>/shard_00000/done.json       the shard's done record: first, last, sha256 of every file
    <out>/shard_00001/...

Samples ``[s * shard_size, (s + 1) * shard_size)`` form shard ``s``. A :class:`Layout` maps a
sample index to its file; the manifest, the lock, the done records and the resume rule are the same
for every layout. The **GenEval layout** (``Layout("geneval", images_per_prompt=k)``) writes sample
``p * k + j`` (image ``j`` of prompt ``p``) to ``<out>/<p:05d>/samples/<j:04d>.png`` next to the
prompt's ``<out>/<p:05d>/metadata.jsonl``, the folder GenEval's evaluator reads; its done records
are ``<out>/shard_<s:05d>/done.json`` as well (folders whose names are not digits are skipped by
GenEval), and :func:`generate_geneval` writes the whole prompt set as one shard.

**Random streams.** Sample ``i`` is drawn from its own stream, a copy of
``row_generators(Generator().manual_seed(seed), period)[i % period]``
(:func:`decodelab.speculative.sampling.row_generators`) with ``period = num_samples`` in the flat
layout and ``period = images_per_prompt`` in the GenEval layout (GenEval re-seeds before every
prompt, so image ``j`` of every prompt shares stream ``j``). Images depend on neither batching, nor
the number of processes, nor interruptions.

**Batching.** Batches never cross a shard boundary; each chunk of :data:`CHUNK_BATCHES` batches is
decoded in one continuously batched call (``max_batch=batch_size``): a speculative decoder hands a
finished row the chunk's next sample instead of idling until the slowest row ends. A chunk is the
unit of resumption.

**Resume rule.** A sample is done when its file exists and is verified: against the sha256 in its
shard's done record when the record lists it, otherwise by decoding the whole PNG (a truncated or
corrupt file is not done). Complete shards are skipped; in an incomplete shard every chunk with a
sample that is not done is decoded again and its missing samples written. Files are written under
a per-process temporary name (``<name>.<host>.<pid>.tmp``) and renamed; a run deletes only the
temporary files of dead processes on its own host, never those of a live run.

**Lock.** Before the manifest is checked or written, rank 0 takes ``<out>/.lock`` (an exclusive
``flock``; the file names its holder's pid and host). A second run into the folder fails with
``"<out> is in use by pid N"``; the lock of a run that died is released by the system, so a stale
lock file is taken over. Settings (conditions included) are checked before the manifest is written,
so a refused run leaves no manifest behind to block the folder.

**Distributed.** Under ``torchrun`` (gloo on CPU, NCCL on GPU) rank ``r`` of ``W`` generates shards
``r, r + W, r + 2W, ...``; with ``shard_size = ceil(N / W)`` that is one shard per rank.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from decodelab.config import dumps_json
from decodelab.eval.distributed import barrier, broadcast_from_main, world_info
from decodelab.eval.geneval import write_prompt_folders
from decodelab.locks import HOST, LOCK, FolderInUseError, FolderLock, pid_alive  # noqa: F401  (LOCK: re-exported)
from decodelab.speculative.base import create_decoder
from decodelab.speculative.sampling import SamplingConfig, row_generators
from decodelab.vision.pipeline import tensor_to_pil

__all__ = ["CHUNK_BATCHES", "FLAT", "FORMAT", "MANIFEST", "FolderInUseError", "FolderLock", "Layout", "check_complete",
           "generate_batch", "generate_geneval", "load_samples", "read_manifest", "sample_files", "sample_path",
           "sample_to_folder", "write_png"]  # fmt: skip

FORMAT, MANIFEST, DONE = "decodelab-samples/1", "manifest.json", "done.json"
#: Batches per resumable chunk: the unit of resumption, and the queue of one continuous batch.
CHUNK_BATCHES = 4
DEFAULT_SHARD_SIZE = 1000


# ------------------------------------------------------------------------------------------ layout
@dataclass(frozen=True)
class Layout:
    """Where sample ``index`` is written and which random stream draws it.

    Attributes:
        name: ``"flat"`` (``shard_SSSSS/IIIIII.png``) or ``"geneval"``
            (``PPPPP/samples/JJJJ.png``, sample ``p * images_per_prompt + j``).
        images_per_prompt: GenEval only: images of one prompt (they share stream ``j`` across prompts).
    """

    name: str = "flat"
    images_per_prompt: int = 1

    def __post_init__(self) -> None:
        if self.name not in ("flat", "geneval"):
            raise ValueError(f"unknown sample layout {self.name!r}: use 'flat' or 'geneval'")
        if self.images_per_prompt < 1 or (self.name == "flat" and self.images_per_prompt != 1):
            raise ValueError(f"images_per_prompt must be >= 1 (1 in the flat layout), got {self.images_per_prompt}")

    def path(self, root: Path, index: int, shard_size: int) -> Path:
        """File of sample ``index`` under ``root``."""
        if self.name == "geneval":
            p, j = divmod(index, self.images_per_prompt)
            return root / f"{p:05d}" / "samples" / f"{j:04d}.png"
        return root / f"shard_{index // shard_size:05d}" / f"{index:06d}.png"

    def period(self, num_samples: int) -> int:
        """Number of distinct random streams (sample ``i`` uses stream ``i % period``)."""
        return self.images_per_prompt if self.name == "geneval" else num_samples

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "images_per_prompt": self.images_per_prompt}


FLAT = Layout()


def sample_path(out_dir: str | os.PathLike[str], index: int, shard_size: int) -> Path:
    """File of sample ``index`` in a flat-layout folder."""
    return FLAT.path(Path(out_dir), index, shard_size)


def _done_path(root: Path, shard: int) -> Path:
    return root / f"shard_{shard:05d}" / DONE


# ---------------------------------------------------------------------------------- files and hashes
_HOST = HOST
_TMP = re.compile(r"^\d+\.png\.(?P<host>.+)\.(?P<pid>\d+)\.tmp$")


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f"{path.name}.{_HOST}.{os.getpid()}.tmp")
    tmp.write_text(dumps_json(obj))
    tmp.replace(path)


def write_png(image: Image.Image, path: Path) -> str:
    """Write ``image`` as PNG under a temporary name of this process, then rename; return its sha256."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    data = buf.getvalue()
    tmp = path.with_name(f"{path.name}.{_HOST}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()


def _remove_dead_temps(dirs: Sequence[Path]) -> None:
    """Delete temporary sample files left by dead processes of this host (never a live run's)."""
    for d in dirs:
        if not d.is_dir():
            continue
        for f in d.glob("*.tmp"):
            m = _TMP.match(f.name)
            if m and m["host"] == _HOST and not pid_alive(int(m["pid"])):
                f.unlink(missing_ok=True)


def _decodes(path: Path) -> bool:
    """Whether ``path`` is a complete, uncorrupted image (chunk checksums and pixel data)."""
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            im.load()
    except Exception:  # noqa: BLE001 - any failure to read means "not done"
        return False
    return True


def _verified(root: Path, layout: Layout, lo: int, hi: int, shard_size: int) -> dict[int, str]:
    """``index -> sha256`` of the samples ``lo..hi-1`` that are done (see the resume rule)."""
    try:
        record = json.loads(_done_path(root, lo // shard_size).read_text())
        hashes = record.get("sha256") or {}
    except (OSError, ValueError):
        hashes = {}
    done = {}
    for i in range(lo, hi):
        f = layout.path(root, i, shard_size)
        if not f.is_file():
            continue
        want = hashes.get(f.relative_to(root).as_posix())
        if want is None and not _decodes(f):
            continue
        got = hashlib.sha256(f.read_bytes()).hexdigest()
        if want in (None, got):
            done[i] = got
    return done


# -------------------------------------------------------------------------------- manifest and reading
def read_manifest(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a sample folder (``FileNotFoundError`` when there is none).

    Manifests written before layouts existed get the flat layout.
    """
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{out_dir} is not a decodelab sample folder ({MANIFEST} missing)")
    m = json.loads(path.read_text())
    m.setdefault("layout", FLAT.to_dict())
    return m


def sample_files(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Files of every sample of a folder, in sample order (whether written yet or not)."""
    m = read_manifest(out_dir)
    layout, root = Layout(**m["layout"]), Path(out_dir)
    return [layout.path(root, i, m["shard_size"]) for i in range(m["num_samples"])]


def check_complete(out_dir: str | os.PathLike[str]) -> list[int]:
    """Indices of the samples a folder still lacks by the resume rule (empty when complete)."""
    m = read_manifest(out_dir)
    layout, root, n, size = Layout(**m["layout"]), Path(out_dir), m["num_samples"], m["shard_size"]
    missing = []
    for lo in range(0, n, size):
        hi = min(lo + size, n)
        done = _verified(root, layout, lo, hi, size)
        missing += [i for i in range(lo, hi) if i not in done]
    return missing


def load_samples(out_dir: str | os.PathLike[str]) -> list[Image.Image]:
    """Every sample of a complete folder, in sample order.

    Raises:
        ValueError: the folder lacks samples (re-run the command that writes it to finish it).
    """
    missing = check_complete(out_dir)
    if missing:
        raise ValueError(f"{out_dir} lacks {len(missing)} samples (first: {missing[0]}); re-run to finish it")
    out = []
    for f in sample_files(out_dir):
        with Image.open(f) as im:
            out.append(im.copy())
    return out


# ------------------------------------------------------------------------------------------ decoding
def generate_batch(
    pipe,
    dec,
    conds: Sequence[Any],
    gens: Sequence[torch.Generator],
    sampling: SamplingConfig,
    max_batch: int | None = None,
    image_size: int | None = None,
) -> tuple[list[Image.Image], Any]:
    """Decode conditions with their own random streams -> ``(PIL images, DecodeOutput)``.

    ``max_batch`` bounds the rows decoded at once (continuous batching when fewer than ``len(conds)``).
    ``image_size`` resizes the decoded ``[-1, 1]`` images to ``image_size`` x ``image_size`` before
    quantising to 8 bits, with bicubic interpolation (no antialiasing), as LlamaGen's
    ``sample_c2i_ddp.py --image-size-eval`` does (384 px samples -> 256 px for ImageNet-256 FID).
    """
    cond, mask = pipe.encode_conditions(list(conds))
    extra = pipe.decoder_models(dec) if dec.requires else {}  # the drafter and up-sampler of drafter decoders
    o = dec(pipe.model, cond, sampling=sampling, generator=list(gens), cond_mask=mask, max_batch=max_batch, **extra)
    with torch.no_grad():
        images = pipe.tokenizer.decode(o.tokens)
        if image_size is not None and tuple(images.shape[-2:]) != (image_size, image_size):
            images = F.interpolate(images.float(), size=(image_size, image_size), mode="bicubic", align_corners=False)
        pil = tensor_to_pil(images)
    return pil, o


def _check_conditions(pipe, conds: Sequence[Any]) -> None:
    """Refuse conditions the pipeline cannot take (before anything is written)."""
    name = pipe.info.get("name") or "this pipeline"
    if pipe.condition_kind == "class":
        c = pipe.num_classes
        bad = [x for x in conds if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or not 0 <= x < c]
        if bad:
            raise ValueError(f"{name} is class-conditional: conditions must be class ids 0..{c - 1}, got "
                             f"{bad[:3]!r}; sample prompts with a text-to-image pipeline")  # fmt: skip
    else:
        bad = [x for x in conds if not isinstance(x, str)]
        if bad:
            raise ValueError(f"{name} is text-conditional: conditions must be prompts (strings), got {bad[:3]!r}")


def _streams(seed: int, n: int, layout: Layout) -> Callable[[int], torch.Generator]:
    """``i -> a fresh generator`` on sample ``i``'s stream (see the module docstring).

    ``row_generators`` returns freshly seeded generators, so their seeds are kept rather than the
    generators themselves (50k generator states would hold about 135 MB for the whole run).
    """
    seeds = [g.initial_seed() for g in row_generators(torch.Generator().manual_seed(seed), layout.period(n))]
    return lambda i: torch.Generator().manual_seed(seeds[i % len(seeds)])


def _open_folder(out: Path, manifest: dict[str, Any], layout: Layout, prepare: Callable[[], Any] | None) -> None:
    """Under the lock: check the manifest, or (new folder) prepare it and write the manifest."""
    mpath = out / MANIFEST
    if mpath.is_file():
        old = read_manifest(out)
        if {k: old.get(k) for k in manifest} != manifest:
            raise ValueError(f"{out} holds samples with other settings (see its {MANIFEST}); use another output "
                             "folder or delete it to start over")  # fmt: skip
    else:
        n, size = manifest["num_samples"], manifest["shard_size"]
        stray = next((f for f in (layout.path(out, i, size) for i in range(n)) if f.exists()), None)
        if stray is not None:
            raise ValueError(f"{out} holds samples without a {MANIFEST} (e.g. {stray}), written by an older "
                             "decodelab or another tool; use another output folder or delete them")  # fmt: skip
    if prepare is not None:
        prepare()
    if not mpath.is_file():
        _write_json_atomic(mpath, manifest)


def sample_to_folder(
    pipe,
    conds: Sequence[Any],
    out_dir: str | os.PathLike[str],
    *,
    decoder: str | None = None,
    decoder_kwargs: dict[str, Any] | None = None,
    sampling: SamplingConfig,
    seed: int = 0,
    batch_size: int = 32,
    shard_size: int = DEFAULT_SHARD_SIZE,
    image_size: int | None = None,
    layout: Layout = FLAT,
    prepare: Callable[[], Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate one image per condition into ``out_dir`` (resuming; under torchrun, this rank's shards).

    Args:
        pipe: an :class:`~decodelab.vision.pipeline.ImageGenerationPipeline`.
        conds: class ids (class-conditional) or prompts (text-conditional), one per sample.
        out_dir: the sample folder.
        decoder, decoder_kwargs: registered decoder and its options. A decoder that needs a drafter (``mulo``)
            gets the pipeline's drafter and up-sampler (``load_pipeline(..., drafter=, upsampler=)``); their
            names are part of the folder's settings.
        sampling: sampling settings.
        seed: seed of the per-sample random streams.
        batch_size: rows decoded at once (continuous batching over chunks of ``CHUNK_BATCHES`` batches).
        shard_size: samples per shard (part of the folder's format: fixed for a folder).
        image_size: save samples resized to this square size (bicubic, LlamaGen's ``--image-size-eval``);
            ``None`` keeps the decoder's size.
        layout: where samples are written (:data:`FLAT`, or ``Layout("geneval", images_per_prompt=k)``).
        prepare: called once under the folder lock, after the settings check and before the manifest
            is written (e.g. writing GenEval's ``metadata.jsonl`` files); may raise to refuse the run.
        progress: progress bar on rank 0.

    Returns:
        Counts over all ranks: ``num_samples``, ``shard_size``, ``num_shards``, ``world_size``,
        ``generated`` (samples decoded), ``resumed`` (samples found done), ``total_nfe``,
        ``wall_time_s``, the manifest ``settings`` and ``layout``.

    Raises:
        ValueError: bad sizes, conditions the pipeline cannot take, a folder holding a run with other
            settings, or (:class:`FolderInUseError`) a folder another live run is writing.
    """
    n = len(conds)
    if n < 1 or batch_size < 1 or shard_size < 1:
        raise ValueError(f"need at least one condition, batch_size >= 1 and shard_size >= 1; got {n}, "
                         f"{batch_size}, {shard_size}")  # fmt: skip
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    if n % layout.images_per_prompt:
        raise ValueError(f"{n} samples is not a whole number of prompts of {layout.images_per_prompt} images")
    _check_conditions(pipe, conds)
    rank, world = world_info()
    out = Path(out_dir)
    decoder = decoder or pipe.default_decoder  # ar for raster models, nar for NAR models
    dec = create_decoder(decoder, **(decoder_kwargs or {}))
    settings = {"pipeline": pipe.info.get("name", ""), "decoder": decoder, "decoder_kwargs": dec.settings(),
                "sampling": vars(sampling), "seed": seed,
                "conditions": [c if isinstance(c, (int, str)) else str(c) for c in conds]}  # fmt: skip
    if dec.requires:  # load and check the drafter before the folder is touched; its names join the settings
        pipe.decoder_models(dec)
        settings.update(pipe.components(dec))
    if image_size is not None:  # only when set, so folders written before the option still resume
        settings["image_size_eval"] = image_size
    manifest = {"format": FORMAT, "layout": layout.to_dict(), "num_samples": n, "shard_size": shard_size,
                "settings": json.loads(json.dumps(settings))}  # fmt: skip
    lock, error = None, None
    if rank == 0:
        try:
            lock = FolderLock(out).acquire()
            _open_folder(out, manifest, layout, prepare)
        except Exception as e:  # every rank must learn that rank 0 refused
            if lock is not None:
                lock.release()
            error = e
    message = broadcast_from_main(None if error is None else str(error))
    if error is not None:
        raise error
    if message is not None:
        raise ValueError(message)
    try:
        desc = f"sample ({decoder}, rank {rank}/{world})" if world > 1 else f"sample ({decoder})"
        stats = _generate(pipe, dec, conds, out, layout, shard_size, sampling, seed, batch_size, image_size,
                          progress and rank == 0, desc)  # fmt: skip
        if world > 1:
            parts: list[dict[str, Any] | None] = [None] * world
            dist.all_gather_object(parts, stats)
            stats = {k: sum(p[k] for p in parts) for k in stats}
        barrier()
    finally:
        if lock is not None:
            lock.release()
    return {"num_samples": n, "shard_size": shard_size, "num_shards": math.ceil(n / shard_size), "world_size": world,
            **stats, "settings": manifest["settings"], "layout": manifest["layout"]}  # fmt: skip


def _generate(pipe, dec, conds, out: Path, layout: Layout, size: int, sampling: SamplingConfig, seed: int,
              batch_size: int, image_size: int | None, progress: bool, desc: str) -> dict[str, Any]:  # fmt: skip
    """This rank's shards of a folder whose manifest is in place -> its counts."""
    n = len(conds)
    rank, world = world_info()
    stream = _streams(seed, n, layout)
    chunk = batch_size * CHUNK_BATCHES  # one continuously batched decoder call, the unit of resumption
    mine = list(range(rank, math.ceil(n / size), world))
    total = sum(min(size, n - s * size) for s in mine)
    stats = {"generated": 0, "resumed": 0, "total_nfe": 0, "wall_time_s": 0.0}
    with tqdm(total=total, disable=not progress, desc=desc, unit="img") as bar:
        for s in mine:
            lo, hi = s * size, min((s + 1) * size, n)
            done = _verified(out, layout, lo, hi, size)
            record = _done_path(out, s)
            if len(done) == hi - lo and record.is_file():
                stats["resumed"] += hi - lo
                bar.update(hi - lo)
                continue
            record.unlink(missing_ok=True)  # written again once the shard is complete
            _remove_dead_temps(sorted({layout.path(out, i, size).parent for i in range(lo, hi)}))
            for b in range(lo, hi, chunk):
                idx = list(range(b, min(b + chunk, hi)))
                if all(i in done for i in idx):
                    stats["resumed"] += len(idx)
                    bar.update(len(idx))
                    continue
                images, o = generate_batch(pipe, dec, [conds[i] for i in idx], [stream(i) for i in idx], sampling,
                                           max_batch=batch_size, image_size=image_size)  # fmt: skip
                for i, im in zip(idx, images):
                    if i not in done:
                        f = layout.path(out, i, size)
                        f.parent.mkdir(parents=True, exist_ok=True)
                        done[i] = write_png(im, f)
                stats["generated"] += len(idx)
                stats["total_nfe"] += int(o.row_nfe.sum())
                stats["wall_time_s"] += float(o.wall_time)
                bar.update(len(idx))
            record.parent.mkdir(parents=True, exist_ok=True)
            hashes = {layout.path(out, i, size).relative_to(out).as_posix(): done[i] for i in range(lo, hi)}
            _write_json_atomic(record, {"first": lo, "last": hi - 1, "num_samples": hi - lo, "sha256": hashes})
    return stats


# ------------------------------------------------------------------------------------------- GenEval
def generate_geneval(
    pipe,
    metadatas: Sequence[dict[str, Any]],
    out_dir: str | os.PathLike[str],
    *,
    images_per_prompt: int = 4,
    decoder: str | None = None,
    decoder_kwargs: dict[str, Any] | None = None,
    sampling: SamplingConfig,
    seed: int = 42,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate ``images_per_prompt`` images per GenEval prompt in GenEval's folder layout (resumable).

    The prompt set is one shard of the GenEval layout; :func:`decodelab.eval.geneval.write_prompt_folders`
    writes the ``metadata.jsonl`` files under the folder lock.

    Returns:
        :func:`sample_to_folder`'s counts plus ``num_prompts`` and ``images_per_prompt``.
    """
    if images_per_prompt < 1 or batch_size < 1:
        raise ValueError(f"images_per_prompt and batch_size must be >= 1, got {images_per_prompt}, {batch_size}")
    if not metadatas:
        raise ValueError("no GenEval prompts to generate")
    prompts = [m["prompt"] for m in metadatas for _ in range(images_per_prompt)]
    stats = sample_to_folder(
        pipe, prompts, out_dir, decoder=decoder, decoder_kwargs=decoder_kwargs, sampling=sampling, seed=seed,
        batch_size=batch_size, shard_size=len(prompts), layout=Layout("geneval", images_per_prompt),
        prepare=lambda: write_prompt_folders(out_dir, metadatas), progress=progress,
    )  # fmt: skip
    return {**stats, "num_prompts": len(metadatas), "images_per_prompt": images_per_prompt}
