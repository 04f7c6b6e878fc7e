"""Dataset loaders and offline worlds (Fashion-MNIST, the GenEval-style shapes world, ...)."""

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

__all__ = [
    "COLORS",
    "FAMILIES",
    "FASHION_MNIST_CLASSES",
    "SHAPES",
    "VOCAB",
    "FashionMNIST",
    "ShapeObject",
    "ShapesWorld",
    "collate_shapes",
    "find_fashion_mnist",
    "load_fashion_mnist",
    "make_prompt_set",
    "read_idx",
    "read_jsonl",
    "render_scene",
    "sample_prompt",
    "sample_scene",
    "write_jsonl",
]
