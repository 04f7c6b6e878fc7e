"""The embedded-default checkpoints shipped inside the package, loadable offline by name.

Each asset is a pipeline directory (``pipeline.json``, ``model/``, ``tokenizer/``) with a provenance
card (``card.json`` / ``card.md``) saying how it was trained and how to reproduce it with
``decodelab train --config configs/embedded/<name>-*.yaml``.
"""

from __future__ import annotations

from pathlib import Path

from decodelab.registry import PIPELINES

ASSETS_DIR = Path(__file__).resolve().parent

SHIPPED = {
    "fmnist-c2i": "class-conditional Fashion-MNIST generator (16x16 tokens), trained by decodelab",
    "shapes-t2i": "text-to-image generator on the procedural shapes world (16x16 tokens), trained by decodelab",
}


def asset_path(name: str) -> Path:
    """Directory of a shipped asset; ``FileNotFoundError`` says how to build it when absent."""
    path = ASSETS_DIR / name
    if not (path / "pipeline.json").is_file():
        raise FileNotFoundError(
            f"the embedded model {name!r} is not in this installation ({path} is missing). Train it with "
            f"`decodelab train --config configs/embedded/{name}-vq.yaml` then `...-gpt.yaml`, and copy the "
            f"pipeline directory to {path}."
        )
    return path


def available() -> list[str]:
    """Shipped assets present in this installation."""
    return [n for n in SHIPPED if (ASSETS_DIR / n / "pipeline.json").is_file()]


def _register(name: str, description: str) -> None:
    def factory(**kwargs):
        from decodelab.vision.pipeline import ImageGenerationPipeline

        return ImageGenerationPipeline.from_pretrained(asset_path(name), **kwargs)

    PIPELINES.register(name, kind="shipped", description=description)(factory)


for _name, _desc in SHIPPED.items():
    _register(_name, _desc)
