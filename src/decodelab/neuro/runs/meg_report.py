"""Reconstruction from decoded MEG through the shipped generator, and the figures of a MEG run.

- :func:`reconstruct_fmnist`: each predicted semantic embedding -> a class (nearest class centroid of
  the training images' embeddings, :func:`~decodelab.neuro.runs.meg.decode_classes`) -> one image
  from decodelab's own class-conditional generator (``load_pipeline("fmnist-c2i")``), scored by the
  shipped Fashion-MNIST classifier against the class of the image actually seen (chance 10%);
- :func:`plot_retrieval`: seen images and their top-5 retrieved test images;
- :func:`plot_time_resolved`: retrieval against time per embedding, with the simulated latencies;
- :func:`plot_reconstructions`: seen images above their reconstructions.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from decodelab.eval.meg import cosine_similarity
from decodelab.neuro.runs.meg import MegData, class_centroids, decode_classes

__all__ = ["plot_reconstructions", "plot_retrieval", "plot_time_resolved", "reconstruct_fmnist"]


def reconstruct_fmnist(
    data: MegData,
    pred: np.ndarray,
    *,
    target: str = "semantic",
    rows: np.ndarray | None = None,
    pipeline: Any = "fmnist-c2i",
    seed: int = 0,
    batch_size: int = 50,
    classifier: Any = None,
) -> tuple[list, dict[str, float]]:
    """Generate one image per test row from its predicted embedding and score the class of each.

    Args:
        data: the test rows' images and labels; pred: ``[N_test, F]`` predicted ``target`` embeddings.
        rows: test rows to reconstruct (default: all).
        pipeline: a loaded class-conditional pipeline or its name / folder.
        seed, batch_size: generation settings (each image's randomness depends on its row only).
        classifier: the Fashion-MNIST classifier that scores the reconstructions (default: shipped).

    Returns:
        The PIL images and ``{"decoded_class_accuracy", "reconstruction_class_accuracy",
        "chance", "n_images", "generation_time_s"}``.
    """
    from decodelab.eval.fmnist import class_accuracy
    from decodelab.vision.pipeline import load_pipeline

    rows = np.arange(len(data.test_x)) if rows is None else np.asarray(rows)
    pipe = load_pipeline(pipeline) if isinstance(pipeline, (str, Path)) else pipeline
    if pipe.condition_kind != "class":
        raise ValueError("reconstruct_fmnist needs a class-conditional pipeline (e.g. fmnist-c2i)")
    classes = decode_classes(pred[rows], class_centroids(data, target))
    true = data.world.labels[data.test_img[rows]]
    t0 = time.time()
    images = pipe(classes=[int(c) for c in classes], seed=seed, batch_size=batch_size).images
    gen_time = time.time() - t0
    n_classes = len(data.world.class_names)
    return images, {
        "decoded_class_accuracy": float(np.mean(classes == true)),
        "reconstruction_class_accuracy": class_accuracy(images, true, classifier),
        "chance": 1.0 / n_classes,
        "n_images": int(len(rows)),
        "generation_time_s": round(gen_time, 1),
    }


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_retrieval(
    data: MegData, pred: np.ndarray, target: str, path: str | Path, *, n_queries: int = 8, subject: int = 0, k: int = 5
) -> Path:
    """PNG: for ``n_queries`` test images of one subject, the seen image then its top-``k`` retrieved ones.

    A retrieved image framed in green is the seen one. Candidates are the subject's test images.
    """
    plt = _plt()
    rows = data.subject_rows("test", subject)
    truth = data.targets(target, "test")[rows]
    sim = cosine_similarity(pred[rows], truth)  # [200, 200]
    imgs = data.world.images[data.test_img[rows]]
    pick = np.linspace(0, len(rows) - 1, n_queries).astype(int)
    fig, axes = plt.subplots(n_queries, k + 1, figsize=(1.3 * (k + 1), 1.3 * n_queries))
    for r, q in enumerate(pick):
        order = np.argsort(-sim[q])[:k]
        for c, idx in enumerate([q, *order]):
            ax = axes[r, c]
            ax.imshow(imgs[idx], cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if c > 0 and idx == q:
                for side in ax.spines.values():
                    side.set_edgecolor("tab:green")
                    side.set_linewidth(3)
        axes[r, 0].set_ylabel("seen", fontsize=7)
    for c in range(1, k + 1):
        axes[0, c].set_title(f"top {c}", fontsize=8)
    fig.suptitle(f"MEG -> image retrieval ({target}, subject {data.subjects[subject]}, {len(rows)} candidates)",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_time_resolved(curves: dict[str, dict], path: str | Path, latencies: dict[str, float] | None = None) -> Path:
    """PNG: top-5 retrieval against window centre per embedding, chance level, simulated latencies."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    colours = {"low": "tab:blue", "semantic": "tab:red"}
    chance = None
    for name, cur in curves.items():
        key = next(k for k in cur if k.startswith("top"))
        chance = cur[f"chance_{key}"]
        colour = colours.get(name)
        ax.plot(cur["times"], cur[key], marker="o", ms=3, label=f"{name} (peak {cur['peak_time']:.2f} s)", color=colour)
        if latencies and name in latencies:
            ax.axvline(latencies[name], ls="--", lw=1, color=colour)
    if chance is not None:
        ax.axhline(chance, color="k", lw=1, ls=":", label="chance")
    ax.set_xlabel("window centre (s after image onset)")
    ax.set_ylabel("top-5 retrieval (200 test images)")
    ax.set_title("time-resolved linear decoding (dashed: simulated latencies)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_reconstructions(seen: np.ndarray, images: list, path: str | Path, *, n: int = 10, title: str = "") -> Path:
    """PNG: ``n`` seen images (top row) above their reconstructions from MEG (bottom row)."""
    plt = _plt()
    n = min(n, len(images))
    fig, axes = plt.subplots(2, n, figsize=(1.1 * n, 2.5))
    axes = np.asarray(axes).reshape(2, n)
    for i in range(n):
        axes[0, i].imshow(seen[i], cmap="gray", vmin=0, vmax=255)
        axes[1, i].imshow(np.asarray(images[i].convert("L")), cmap="gray")
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("seen", fontsize=8)
    axes[1, 0].set_ylabel("from MEG", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
