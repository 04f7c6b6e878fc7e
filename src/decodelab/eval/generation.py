"""Generate-and-score loops for the shipped worlds, resumable on disk.

Images are written losslessly (PNG) as they are generated, one file per sample, in a folder laid
out by sample index. Re-running the same command skips every chunk whose images already exist,
so an interrupted evaluation resumes where it stopped with identical results: the per-image
random streams are derived from the seed for all samples up front, independent of batching.

Each chunk of :data:`CHUNK_BATCHES` batches is decoded in one continuously batched call
(``max_batch=batch_size``): a speculative decoder hands a finished row the chunk's next image instead
of idling until the slowest row of a fixed batch ends. Images do not depend on the batching.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from decodelab.speculative.base import create_decoder
from decodelab.speculative.sampling import SamplingConfig, row_generators
from decodelab.vision.pipeline import tensor_to_pil

__all__ = ["CHUNK_BATCHES", "generate_batch", "generate_to_folder", "save_png_atomic"]

#: Batches per resumable chunk: the unit written to disk, and the queue of one continuous batch.
CHUNK_BATCHES = 4


def generate_batch(
    pipe,
    dec,
    conds: Sequence[Any],
    gens: Sequence[torch.Generator],
    sampling: SamplingConfig,
    max_batch: int | None = None,
    image_size: int | None = None,
):
    """Decode conditions with their own random streams -> ``(PIL images, DecodeOutput)``.

    ``max_batch`` bounds the rows decoded at once (continuous batching when fewer than ``len(conds)``).
    ``image_size`` resizes the decoded ``[-1, 1]`` images to ``image_size`` x ``image_size`` before
    quantising to 8 bits, with bicubic interpolation (no antialiasing), as LlamaGen's
    ``sample_c2i_ddp.py --image-size-eval`` does (384 px samples -> 256 px for ImageNet-256 FID).
    """
    cond, mask = pipe.encode_conditions(list(conds))
    o = dec(pipe.model, cond, sampling=sampling, generator=list(gens), cond_mask=mask, max_batch=max_batch)
    with torch.no_grad():
        images = pipe.tokenizer.decode(o.tokens)
        if image_size is not None and tuple(images.shape[-2:]) != (image_size, image_size):
            images = F.interpolate(images.float(), size=(image_size, image_size), mode="bicubic", align_corners=False)
        pil = tensor_to_pil(images)
    return pil, o


def save_png_atomic(image: Image.Image, path: Path) -> None:
    """Write a PNG under a temporary name, then rename: a half-written file never counts as done."""
    tmp = path.with_name(path.stem + ".tmp.png")
    image.save(tmp, format="PNG")
    tmp.replace(path)


def generate_to_folder(
    pipe,
    conds: Sequence[Any],
    out_dir: str | Path,
    *,
    decoder: str = "ar",
    decoder_kwargs: dict[str, Any] | None = None,
    sampling: SamplingConfig,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = True,
) -> tuple[list[Image.Image], dict[str, Any]]:
    """Generate one image per condition into ``out_dir/images/NNNNN.png`` (resuming), return images + stats.

    Args:
        pipe: an :class:`~decodelab.vision.pipeline.ImageGenerationPipeline`.
        conds: class ids (c2i) or prompts (t2i), one per image.
        out_dir: run folder; ``run.json`` there records the settings and must match on resume.
    """
    out = Path(out_dir)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    dec = create_decoder(decoder, **(decoder_kwargs or {}))
    settings = {
        "decoder": decoder,
        "decoder_kwargs": dec.settings(),
        "sampling": vars(sampling),
        "seed": seed,
        "num_images": len(conds),
        "conditions": [c if isinstance(c, (int, str)) else str(c) for c in conds],
        "pipeline": pipe.info.get("name", ""),
    }
    run_file = out / "run.json"
    if run_file.is_file():
        old = json.loads(run_file.read_text())
        if old.get("settings") != json.loads(json.dumps(settings)):
            raise ValueError(
                f"{out} holds a run with different settings; use another --out folder or delete it to start over"
            )
    else:
        run_file.write_text(json.dumps({"settings": settings}, indent=2) + "\n")
    gens = row_generators(torch.Generator().manual_seed(seed), len(conds))
    images: list[Image.Image | None] = [None] * len(conds)
    nfe, wall, generated = 0, 0.0, 0
    chunk = batch_size * CHUNK_BATCHES
    for s in tqdm(range(0, len(conds), chunk), disable=not progress, desc=f"generate ({decoder})"):
        idx = list(range(s, min(s + chunk, len(conds))))
        files = [img_dir / f"{i:05d}.png" for i in idx]
        if all(f.is_file() for f in files):
            for i, f in zip(idx, files):
                images[i] = Image.open(f).copy()
            continue
        pil, o = generate_batch(pipe, dec, [conds[i] for i in idx], gens[s : s + len(idx)], sampling, batch_size)
        nfe += int(o.row_nfe.sum())
        wall += o.wall_time
        generated += len(idx)
        for i, f, im in zip(idx, files, pil):
            save_png_atomic(im, f)
            images[i] = im
    stats = {
        "generated_images": generated,
        "resumed_images": len(conds) - generated,
        "total_nfe": nfe,
        "mean_nfe_per_generated_image": nfe / generated if generated else None,
        "wall_time_s": wall,
    }
    return images, stats  # type: ignore[return-value]
