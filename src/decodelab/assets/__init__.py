"""The embedded-default checkpoints shipped inside the package, loadable offline by name.

Each asset is a pipeline directory (``pipeline.json``, ``model/``, ``tokenizer/``) with a provenance
card (``card.json`` / ``card.md``) saying how it was trained and how to reproduce it with
``decodelab train --config configs/embedded/<name>-*.yaml``.

This module only locates the files (it imports nothing from decodelab, so every layer may use it);
the shipped pipelines are registered by name in :mod:`decodelab.vision.pipeline`.
"""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent

SHIPPED = {
    "fmnist-c2i": "class-conditional Fashion-MNIST generator (16x16 tokens), trained by decodelab",
    "shapes-t2i": "text-to-image generator on the procedural shapes world (16x16 tokens), trained by decodelab",
    "fmnist-c2i-lowres": "MuLo-SD drafter of fmnist-c2i (8x8 tokens, 16x16 px), trained by decodelab",
    "shapes-t2i-lowres": "MuLo-SD drafter of shapes-t2i (8x8 tokens, 32x32 px), trained by decodelab",
    "fmnist-nar": "class-conditional Fashion-MNIST NAR generator (16x16 tokens, 31 steps), trained by decodelab",
    "shapes-nar": "text-to-image NAR generator on the shapes world (16x16 tokens, 31 steps), trained by decodelab",
}


def asset_path(name: str) -> Path:
    """Directory of a shipped asset; ``FileNotFoundError`` says how to build it when absent."""
    path = ASSETS_DIR / name
    if not (path / "pipeline.json").is_file():
        how = (
            f"`decodelab train --config configs/embedded/{name}.yaml` (it uses the shipped tokenizer)"
            if name.endswith("-nar")
            else f"`decodelab train --config configs/embedded/{name}-vq.yaml` then `...-gpt.yaml`"
        )
        raise FileNotFoundError(
            f"the embedded model {name!r} is not in this installation ({path} is missing). Train it with "
            f"{how}, and copy the pipeline directory to {path}."
        )
    return path


def available() -> list[str]:
    """Shipped assets present in this installation."""
    return [n for n in SHIPPED if (ASSETS_DIR / n / "pipeline.json").is_file()]
