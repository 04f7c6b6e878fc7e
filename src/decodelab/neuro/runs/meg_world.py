"""Simulated THINGS-MEG from the Fashion-MNIST world: image features -> epochs the real loader reads.

The images are Fashion-MNIST **test-split** images (the shipped classifier never trained on them),
drawn with a seed; the last ``n_test_images`` of them form the test set (THINGS-MEG: 200 images
shown once per session, 12 sessions). Two feature sets of each image drive the simulation's two
components (:func:`decodelab.neuro.meg.simulate.simulate_things_meg`):

- ``low`` (early, ~0.1 s): the image's pixels mean-pooled to ``low_grid x low_grid`` (default 7x7),
  values in [0, 1] — a retinotopic, low-level description;
- ``semantic`` (late, ~0.4 s): the penultimate features of decodelab's shipped Fashion-MNIST
  classifier (``assets/fmnist-classifier``, 128 values) — an image embedding that clusters by class,
  the role DINOv2 / CLIP embeddings play in the paper. Features that are constant over the images
  are dropped.

The same two embeddings are the decoders' targets, so retrieval asks: from MEG, which of the 200
test images was seen? The class of a decoded semantic embedding (nearest class centroid of the
training images' embeddings) conditions the shipped ``fmnist-c2i`` generator.

:func:`simulate_fmnist_meg` writes, into one folder, the simulation's FIF files, ``simulation.json``,
``simulation_truth.npz`` and ``world.npz`` (images, labels, both embeddings), which
:func:`load_world` reads back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from decodelab.datasets.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from decodelab.neuro.meg.simulate import MegSimulation, MegSimulationConfig, simulate_things_meg

__all__ = ["WORLD_FILE", "MegWorld", "fmnist_meg_world", "load_world", "simulate_fmnist_meg"]

#: The world's file inside a simulation folder.
WORLD_FILE = "world.npz"
#: Embedding types (targets) of the world, in the order of the simulation's components.
TARGETS = ("low", "semantic")


@dataclass
class MegWorld:
    """The images behind a simulation and their embeddings.

    Attributes:
        images: uint8 ``[N, 28, 28]``; image ``i`` is THINGS image number ``i + 1``.
        labels: ``[N]`` class ids (0..9).
        low: ``[N, F_low]`` pooled pixels; semantic: ``[N, F_sem]`` classifier features.
        n_test: the last ``n_test`` images are the test set.
        class_names: the class names (concepts).
    """

    images: np.ndarray
    labels: np.ndarray
    low: np.ndarray
    semantic: np.ndarray
    n_test: int
    class_names: tuple[str, ...] = FASHION_MNIST_CLASSES

    def embedding(self, target: str) -> np.ndarray:
        """The ``[N, F]`` embedding of a target name (``"low"`` or ``"semantic"``)."""
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; the Fashion-MNIST world has {', '.join(TARGETS)}")
        return getattr(self, target)

    @property
    def concepts(self) -> list[str]:
        return [self.class_names[int(c)] for c in self.labels]


def pooled_pixels(images: np.ndarray, grid: int = 7) -> np.ndarray:
    """uint8 ``[N, 28, 28]`` -> ``[N, grid * grid]`` mean-pooled pixels in [0, 1] (28 must divide by ``grid``)."""
    n, h, w = images.shape
    if h % grid or w % grid:
        raise ValueError(f"images of {h}x{w} cannot be pooled to a {grid}x{grid} grid")
    x = images.astype(np.float64).reshape(n, grid, h // grid, grid, w // grid) / 255.0
    return x.mean(axis=(2, 4)).reshape(n, grid * grid)


def fmnist_meg_world(
    n_images: int,
    *,
    n_test: int = 200,
    seed: int = 0,
    low_grid: int = 7,
    classifier=None,
    root: str | Path | None = None,
) -> MegWorld:
    """Draw ``n_images`` Fashion-MNIST test images and compute their low-level and semantic embeddings.

    Args:
        n_images: images in the world (train + test), at most 10000.
        n_test: the last ``n_test`` images form the test set.
        seed: which images.
        low_grid: the pooled-pixel grid.
        classifier: a loaded :class:`~decodelab.vision.models.fmnist_classifier.FMNISTClassifier` or
            its folder (default: the shipped one).
        root: the Fashion-MNIST folder (default: the standard search path).
    """
    from decodelab.eval.fmnist import features

    images, labels = load_fashion_mnist("test", root)
    if not 0 < n_test < n_images <= len(images):
        raise ValueError(f"need 0 < n_test ({n_test}) < n_images ({n_images}) <= {len(images)}")
    pick = np.random.default_rng(seed).choice(len(images), size=n_images, replace=False)
    imgs = np.array(images[pick])
    semantic = features(imgs, classifier)
    semantic = semantic[:, semantic.std(0) > 1e-8]
    return MegWorld(imgs, np.array(labels[pick]), pooled_pixels(imgs, low_grid), semantic, n_test)


def save_world(world: MegWorld, directory: str | Path) -> Path:
    path = Path(directory) / WORLD_FILE
    np.savez(
        path, images=world.images, labels=world.labels, low=world.low, semantic=world.semantic,
        n_test=world.n_test, class_names=np.array(world.class_names),
    )  # fmt: skip
    return path


def load_world(directory: str | Path) -> MegWorld:
    """The :class:`MegWorld` saved next to a simulation.

    Raises:
        FileNotFoundError: the folder has no ``world.npz`` (not made by :func:`simulate_fmnist_meg`).
    """
    path = Path(directory) / WORLD_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: the folder is not a simulation written by simulate_fmnist_meg "
            "(decodelab neuro simulate --modality meg --out DIR)"
        )
    with np.load(path) as z:
        return MegWorld(
            z["images"], z["labels"], z["low"], z["semantic"], int(z["n_test"]), tuple(str(c) for c in z["class_names"])
        )


def simulate_fmnist_meg(
    out_dir: str | Path,
    *,
    n_images: int = 2200,
    config: MegSimulationConfig | None = None,
    world_seed: int = 0,
    classifier=None,
    root: str | Path | None = None,
) -> tuple[MegWorld, MegSimulation]:
    """Simulate THINGS-MEG for ``n_images`` Fashion-MNIST images into ``out_dir``.

    The low-level embedding drives the early component and the semantic one the late component;
    ``config`` sets the subjects, sessions, latencies and the single-trial ``snr`` (its
    ``n_test_images`` is the test-set size).
    """
    cfg = config or MegSimulationConfig()
    world = fmnist_meg_world(n_images, n_test=cfg.n_test_images, seed=world_seed, classifier=classifier, root=root)
    sim = simulate_things_meg(out_dir, world.low, world.semantic, concepts=world.concepts, config=cfg)
    save_world(world, out_dir)
    return world, sim
