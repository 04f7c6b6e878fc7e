"""Dataset loaders and offline worlds (Fashion-MNIST, the GenEval-style shapes world, photos, ...)."""

from decodelab.datasets.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FashionMNIST,
    find_fashion_mnist,
    load_fashion_mnist,
    read_idx,
)
from decodelab.datasets.shapes import (
    COLORS,
    FAMILIES,
    SHAPES,
    VOCAB,
    ShapeObject,
    ShapesWorld,
    collate_shapes,
    make_prompt_set,
    read_jsonl,
    render_scene,
    sample_prompt,
    sample_scene,
    write_jsonl,
)
from decodelab.datasets.wallpapers import WALLPAPERS, list_wallpapers, load_wallpaper

__all__ = [
    "COLORS",
    "FAMILIES",
    "FASHION_MNIST_CLASSES",
    "SHAPES",
    "VOCAB",
    "WALLPAPERS",
    "FashionMNIST",
    "ShapeObject",
    "ShapesWorld",
    "collate_shapes",
    "find_fashion_mnist",
    "list_wallpapers",
    "load_fashion_mnist",
    "load_wallpaper",
    "make_prompt_set",
    "read_idx",
    "read_jsonl",
    "render_scene",
    "sample_prompt",
    "sample_scene",
    "write_jsonl",
]
