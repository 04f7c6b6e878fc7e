"""Simulated NSD: single-trial fMRI betas of a known encoding model, written in the NSD release layout.

The simulation stands in for the Natural Scenes Dataset (Allen et al. 2022) where the real data
cannot be had: the files are the ones :mod:`decodelab.datasets.nsd` reads for real NSD, so the
same loader, split and preprocessing run on both. Its images come from decodelab's offline worlds:

- ``world="fmnist"``: Fashion-MNIST **test-split** images (the shipped generator and tokenizer were
  trained on the train split), padded to 32 x 32 as the embedded tokenizer sees them;
- ``world="shapes"``: shapes-world scenes (64 x 64 RGB) drawn with a seed the shipped
  ``shapes-t2i`` generator never saw, each with its GenEval-style caption.

Encoding model (per subject, per voxel ``v``; every draw from the subject's own seed, so subjects
differ in voxel count, receptive fields, tuning and noise):

- **retinotopic**: a Gaussian receptive field over the 32 x 32 luminance image (centre uniform in
  the visual field, size growing with eccentricity, 1-4 px), a random colour weighting for RGB
  worlds, and compressive spatial summation ``(RF . x) ** 0.5`` (Kay et al. 2013);
- **semantic**: a random projection ``u_v . e`` of the image's caption embedding ``e`` (the mean
  over its captions of mean-pooled MiniLM-L6 sentence embeddings, the text encoder shipped with
  ``shapes-t2i``; for Fashion-MNIST the captions name the class, so ``e`` is a class embedding);
- both parts are z-scored over the subject's images and mixed by the voxel's position: posterior
  voxels are mostly retinotopic, anterior ones mostly semantic (``sqrt(p) r + sqrt(1 - p) s``);
- a signal amplitude ``a_v`` (0.5-2 % signal change), a baseline, and Gaussian trial noise of sd
  ``noise * a_v / snr_v``, ``snr_v`` log-normal with median :data:`NCSNR_MEDIAN` (0.35): NSD's
  nsdgeneral voxels have single-trial ``ncsnr`` medians around 0.2-0.5. Betas are HRF-free (one
  per trial) and written as int16 percent signal change x 300 like NSD's.

Noise is calibrated to NSD, not chosen for decoding to work: ``noise=1`` gives a written
``ncsnr`` (signal sd over images / noise sd over repeats, NSD's definition) with median 0.35 over
the ROI; ``noise=0.5`` and ``2`` halve and double the noise sd.

Layout written under ``root`` (``SS`` = the world's image side; everything else as NSD)::

    nsddata/experiments/nsd/nsd_expdesign.mat         masterordering, subjectim [8, 1000 + n_train], sharedix
    nsddata/experiments/nsd/nsd_stim_info_merged.csv  cocoId, cocoSplit, shared1000, label (simulation extra)
    nsddata/ppdata/subjAA/func1pt8mm/roi/nsdgeneral.nii.gz        1 ROI, 0 brain, -1 outside the brain
    nsddata_betas/ppdata/subjAA/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_sessionNN.nii.gz  int16 x300
    nsddata_betas/ppdata/subjAA/func1pt8mm/betas_fithrf_GLMdenoise_RR/ncsnr.nii.gz            float32
    nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5      imgBrick (N, SS, SS, 3) uint8 (NSD: 425 x 425)
    nsddata_stimuli/stimuli/nsd/annotations/COCO_73k_annots_curated.npy   [N, 5] captions
    simulation.json                                    every setting, per-subject voxel counts and ncsnr medians

As in NSD, the first ``n_test`` stimuli (``sharedix``) are seen by every subject, each subject sees
its own ``n_train`` training stimuli, every stimulus is shown ``n_repeats`` times in a random
master order, ``masterordering <= 1000`` marks the shared images, and sessions hold
``trials_per_session`` trials (750 in NSD). Read it back with
``decodelab.datasets.nsd.load_nsd_split(root, subject, sessions=..., trials_per_session=...)``
(:func:`read_simulation` gives those numbers).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CAPTIONS_FILE",
    "FMNIST_TEMPLATES",
    "NCSNR_MEDIAN",
    "default_text_encoder",
    "SIMULATION_FILE",
    "empirical_ncsnr",
    "read_simulation",
    "simulate_nsd",
    "world_captions",
]

#: Median single-trial ncsnr over the ROI at ``noise=1`` (NSD nsdgeneral: about 0.2-0.5).
NCSNR_MEDIAN = 0.35
SIMULATION_FILE = "simulation.json"
CAPTIONS_FILE = Path("nsddata_stimuli/stimuli/nsd/annotations/COCO_73k_annots_curated.npy")
WORLDS = ("fmnist", "shapes")
_SHAPES_SEED = 7  # the shipped shapes-t2i trained on seed 0 and evaluated on seed 1
#: Volume grid of each subject (X, Y, Z): small stand-ins for NSD's 1.8-mm grids, all different.
_GRIDS = {
    1: (14, 17, 11),
    2: (15, 16, 11),
    3: (14, 16, 10),
    4: (15, 15, 10),
    5: (13, 16, 10),
    6: (16, 17, 11),
    7: (13, 15, 10),
    8: (14, 16, 11),
}
FMNIST_TEMPLATES = (
    "a photo of a {}",
    "a {}",
    "an image of a {}",
    "a grey picture of a {}",
    "a {} on a black background",
)


# ------------------------------------------------------------------------------------- the world
def _world_images(
    world: str, n: int, seed: int, fmnist_root: str | os.PathLike[str] | None
) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """``(uint8 [n, S, S, 3], labels [n] (-1 for shapes), captions [n] lists)``."""
    if world == "fmnist":
        from decodelab.datasets.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist

        images, labels = load_fashion_mnist("test", fmnist_root)
        if n > len(images):
            raise ValueError(f"the simulation needs {n} images, Fashion-MNIST's test split has {len(images)}")
        pick = np.sort(np.random.default_rng(seed).choice(len(images), size=n, replace=False))
        grey = np.pad(np.asarray(images[pick]), ((0, 0), (2, 2), (2, 2)))  # 28 -> 32, background 0
        labels = np.asarray(labels[pick], dtype=np.int64)
        caps = [[t.format(FASHION_MNIST_CLASSES[c].lower()) for t in FMNIST_TEMPLATES] for c in labels]
        return np.repeat(grey[..., None], 3, axis=-1), labels, caps
    from decodelab.datasets.shapes import ShapesWorld

    ds = ShapesWorld(n, seed=_SHAPES_SEED + seed, size=64)
    imgs, caps = [], []
    for i in range(n):
        meta, _, img = ds.sample(i)
        imgs.append(img)
        caps.append([meta["prompt"]])
    return np.stack(imgs), np.full(n, -1, dtype=np.int64), caps


@functools.lru_cache(maxsize=1)
def default_text_encoder() -> Any:
    """The shipped MiniLM-L6 :class:`~decodelab.vision.text_encoder.TextEncoder` (32 positions), loaded once."""
    from decodelab.vision.text_encoder import TextEncoder

    return TextEncoder(max_length=32)


def world_captions(captions: list[list[str]], text_encoder: Any = None, batch_size: int = 256) -> np.ndarray:
    """Caption embedding per image: mean over its captions of mean-pooled MiniLM token embeddings, ``[N, 384]``."""
    enc = text_encoder if text_encoder is not None else default_text_encoder()
    uniq = sorted({c for caps in captions for c in caps})
    pooled: dict[str, np.ndarray] = {}
    for a in range(0, len(uniq), batch_size):
        emb, mask = enc(uniq[a : a + batch_size])  # [B, T, C], [B, T]
        m = mask.float()[..., None]
        vec = ((emb * m).sum(1) / m.sum(1).clamp_min(1)).numpy()
        pooled.update(zip(uniq[a : a + batch_size], vec))
    return np.stack([np.mean([pooled[c] for c in caps], axis=0) for caps in captions]).astype(np.float64)


# ---------------------------------------------------------------------------------- the anatomy
def _volume(grid: tuple[int, int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """ROI volume (1 ROI, 0 brain, -1 outside) and each ROI voxel's posterior-ness ``p`` in [0, 1]."""
    X, Y, Z = grid
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, s) for s in grid), indexing="ij")
    brain = x**2 + y**2 + z**2 <= 1.0 + 0.05 * rng.standard_normal(grid)
    posterior = y < 0.15 + 0.1 * rng.standard_normal()
    roi = brain & posterior & (np.abs(z) < 0.75)
    vol = np.where(brain, 0, -1).astype(np.int16)
    vol[roi] = 1
    p = np.clip((0.15 - y) / 1.15, 0.0, 1.0)  # 1 at the occipital pole, 0 at the ROI's front
    return vol, p[roi]


def _receptive_fields(n_vox: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian receptive fields ``[V, side * side]`` (rows sum to 1)."""
    centre = rng.uniform(2.0, side - 3.0, size=(n_vox, 2))
    ecc = np.linalg.norm(centre - (side - 1) / 2, axis=1) / (side / 2)
    sigma = 1.0 + 3.0 * ecc * rng.uniform(0.6, 1.0, n_vox)
    yy, xx = np.mgrid[0:side, 0:side]
    d2 = (xx.ravel()[None] - centre[:, :1]) ** 2 + (yy.ravel()[None] - centre[:, 1:]) ** 2
    rf = np.exp(-d2 / (2 * sigma[:, None] ** 2))
    return rf / rf.sum(1, keepdims=True)


def _zscore(a: np.ndarray) -> np.ndarray:
    sd = a.std(0)
    return (a - a.mean(0)) / np.where(sd > 0, sd, 1.0)


def _encode(
    images: np.ndarray, semantic: np.ndarray, n_vox: int, p: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Noise-free responses ``[N, V]``, each voxel z-scored over the images."""
    x = images.astype(np.float64) / 255.0  # [N, S, S, 3]
    side = 32
    f = x.shape[1] // side
    x = x.reshape(len(x), side, f, side, f, 3).mean(axis=(2, 4))  # [N, 32, 32, 3]
    colour = np.abs(1.0 + 0.5 * rng.standard_normal((n_vox, 3)))  # luminance-dominated colour weights
    rf = _receptive_fields(n_vox, side, rng)  # [V, 1024]
    colour /= colour.sum(1, keepdims=True)
    flat = x.reshape(len(x), -1, 3)  # [N, 1024, 3]
    drive = sum(flat[..., c] @ (rf * colour[:, c : c + 1]).T for c in range(3))  # [N, V]
    retino = _zscore(np.sqrt(np.maximum(drive, 0.0)))  # compressive spatial summation
    e = semantic - semantic.mean(0)
    sem = _zscore(e @ rng.standard_normal((e.shape[1], n_vox)))
    return _zscore(np.sqrt(p) * retino + np.sqrt(1.0 - p) * sem)


# ------------------------------------------------------------------------------------- writing
def _nifti(data: np.ndarray, path: Path) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([1.8, 1.8, 1.8, 1.0])
    nib.save(nib.Nifti1Image(data, affine), path)


def _write_design(root: Path, masterordering: np.ndarray, subjectim: np.ndarray, sharedix: np.ndarray) -> None:
    import scipy.io

    folder = root / "nsddata" / "experiments" / "nsd"
    folder.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(
        folder / "nsd_expdesign.mat",
        {
            "masterordering": masterordering[None].astype(np.float64),  # NSD stores 1 x 30000 doubles
            "subjectim": subjectim.astype(np.float64),
            "sharedix": sharedix[None].astype(np.float64),
        },
    )


def simulate_nsd(
    root: str | os.PathLike[str],
    subjects: Sequence[int] = (1, 2),
    *,
    world: str = "fmnist",
    noise: float = 1.0,
    n_train: int = 650,
    n_test: int = 100,
    n_repeats: int = 3,
    trials_per_session: int = 750,
    ncsnr_median: float = NCSNR_MEDIAN,
    seed: int = 0,
    fmnist_root: str | os.PathLike[str] | None = None,
    text_encoder: Any = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a simulated NSD tree under ``root`` (see the module docstring) and return its ``simulation.json``.

    Args:
        root: output folder (NSD root).
        subjects: subject numbers 1..8.
        world: ``"fmnist"`` or ``"shapes"``.
        noise: noise sd multiplier; 1 is calibrated to NSD (median ncsnr ``ncsnr_median``).
        n_train: training images per subject (distinct across subjects).
        n_test: shared test images (NSD's shared1000; at most 1000).
        n_repeats: presentations per image (3 in NSD).
        trials_per_session: trials per session file; ``(n_train + n_test) * n_repeats`` must divide by it.
        ncsnr_median: median single-trial ncsnr at ``noise=1``.
        seed: the world's images, the design and every subject's encoding and noise.
        fmnist_root: Fashion-MNIST folder (default search path).
        text_encoder: a loaded :class:`~decodelab.vision.text_encoder.TextEncoder` (default: MiniLM-L6).
        overwrite: replace an existing simulation in ``root``.

    Raises:
        ValueError: bad settings, or ``root`` already holds a simulation and ``overwrite`` is false.
    """
    root = Path(root)
    if world not in WORLDS:
        raise ValueError(f"unknown world {world!r}; choose from {', '.join(WORLDS)}")
    subjects = [int(s) for s in subjects]
    if not subjects or any(s not in _GRIDS for s in subjects) or len(set(subjects)) != len(subjects):
        raise ValueError(f"subjects must be distinct numbers in 1..8, got {subjects}")
    if not noise > 0 or not ncsnr_median > 0:
        raise ValueError(f"noise ({noise}) and ncsnr_median ({ncsnr_median}) must be > 0")
    if not 2 <= n_test <= 1000 or n_train < 2 or n_repeats < 2:
        raise ValueError(
            f"need 2 <= n_test <= 1000 (got {n_test}), n_train >= 2 ({n_train}), n_repeats >= 2 ({n_repeats})"
        )
    n_trials = (n_train + n_test) * n_repeats
    if n_trials % trials_per_session:
        raise ValueError(
            f"(n_train + n_test) * n_repeats = {n_trials} trials do not fill whole sessions of {trials_per_session}"
        )
    if (root / SIMULATION_FILE).is_file() and not overwrite:
        raise ValueError(f"{root / SIMULATION_FILE} exists: pass overwrite=True (--overwrite) to replace it")
    n_sessions = n_trials // trials_per_session
    rng = np.random.default_rng(seed)
    n_images = n_test + len(subjects) * n_train
    images, labels, captions = _world_images(world, n_images, seed, fmnist_root)
    semantic = world_captions(captions, text_encoder)

    # design: one master order for every subject, as NSD's
    order = np.concatenate([np.arange(1, n_test + 1), np.arange(1001, 1001 + n_train)])
    masterordering = rng.permutation(np.repeat(order, n_repeats))
    subjectim = np.zeros((8, 1000 + n_train), dtype=np.int64)  # 0: no image (columns the design never uses)
    shared_ids = np.arange(n_test)
    for k, s in enumerate(subjects):
        subjectim[s - 1, :n_test] = shared_ids + 1
        subjectim[s - 1, 1000:] = n_test + k * n_train + np.arange(n_train) + 1
    _write_design(root, masterordering, subjectim, shared_ids + 1)

    # stimuli, captions, stimulus table
    import h5py
    import pandas as pd

    stim_dir = root / "nsddata_stimuli" / "stimuli" / "nsd"
    stim_dir.mkdir(parents=True, exist_ok=True)
    with h5py.File(stim_dir / "nsd_stimuli.hdf5", "w") as f:
        f.create_dataset("imgBrick", data=images, chunks=(1, *images.shape[1:]))
    caps = np.array([(c + [""] * 5)[:5] for c in captions], dtype=str)
    (root / CAPTIONS_FILE).parent.mkdir(parents=True, exist_ok=True)
    np.save(root / CAPTIONS_FILE, caps)
    pd.DataFrame(
        {"cocoId": np.arange(n_images), "cocoSplit": "sim", "shared1000": np.arange(n_images) < n_test, "label": labels}
    ).to_csv(root / "nsddata" / "experiments" / "nsd" / "nsd_stim_info_merged.csv")

    info: dict[str, Any] = {
        "world": world,
        "noise": float(noise),
        "ncsnr_median_at_noise_1": float(ncsnr_median),
        "seed": int(seed),
        "subjects": subjects,
        "n_train": int(n_train),
        "n_test": int(n_test),
        "n_repeats": int(n_repeats),
        "sessions": int(n_sessions),
        "trials_per_session": int(trials_per_session),
        "n_images": int(n_images),
        "image_size": int(images.shape[1]),
        "captions": str(CAPTIONS_FILE),
        "per_subject": {},
    }
    for s in subjects:
        info["per_subject"][str(s)] = _simulate_subject(
            root,
            s,
            subjectim[s - 1],
            masterordering,
            images,
            semantic,
            noise=noise,
            ncsnr_median=ncsnr_median,
            trials_per_session=trials_per_session,
            rng=np.random.default_rng([seed, s]),
        )
    (root / SIMULATION_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info


def _simulate_subject(
    root: Path,
    subject: int,
    subjectim: np.ndarray,
    masterordering: np.ndarray,
    images: np.ndarray,
    semantic: np.ndarray,
    *,
    noise: float,
    ncsnr_median: float,
    trials_per_session: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    from decodelab.datasets.nsd import BETA_SCALE, NSDPaths

    paths = NSDPaths(root, subject)
    vol, p = _volume(_GRIDS[subject], rng)
    roi = vol > 0
    n_vox = int(roi.sum())
    _nifti(vol, paths.roi())
    seen = np.unique(subjectim[masterordering - 1]) - 1  # the subject's images (0-based ids)
    signal = np.zeros((images.shape[0], n_vox))
    signal[seen] = _encode(images[seen], semantic[seen], n_vox, p, rng)  # [N_img, V], unit sd over seen
    amp = rng.uniform(0.5, 2.0, n_vox)  # % signal change
    snr = ncsnr_median * np.exp(0.5 * rng.standard_normal(n_vox))  # log-normal around the median
    noise_sd = noise * amp / snr
    baseline = 0.5 * rng.standard_normal(n_vox)
    ncsnr = np.zeros(vol.shape, np.float32)
    ncsnr[roi] = amp * signal[seen].std(0) / noise_sd  # signal sd over images / noise sd over repeats
    _nifti(ncsnr, paths.betas(1).parent / "ncsnr.nii.gz")
    brain = vol >= 0
    n_brain_only = int((brain & ~roi).sum())
    ids = subjectim[masterordering - 1] - 1  # [n_trials] image of each trial
    for sess in range(len(masterordering) // trials_per_session):
        t = ids[sess * trials_per_session : (sess + 1) * trials_per_session]
        betas = np.zeros((*vol.shape, len(t)), np.float32)
        roi_b = baseline + amp * signal[t] + noise_sd * rng.standard_normal((len(t), n_vox))  # [T, V] % change
        betas[roi] = roi_b.T
        betas[brain & ~roi] = (rng.standard_normal((n_brain_only, len(t))) * 2.0).astype(np.float32)
        raw = np.clip(np.rint(betas * BETA_SCALE), -32768, 32767).astype(np.int16)
        _nifti(raw, paths.betas(sess + 1))
    return {
        "n_voxels": n_vox,
        "grid": list(vol.shape),
        "ncsnr_median": float(np.median(ncsnr[roi])),
        "n_images": int(len(seen)),
    }


# --------------------------------------------------------------------------------------- reading
def read_simulation(root: str | os.PathLike[str]) -> dict[str, Any]:
    """``simulation.json`` of a simulated NSD tree.

    Raises:
        FileNotFoundError: ``root`` holds no simulation (it names the file and how to make one).
    """
    path = Path(root) / SIMULATION_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: not a simulated NSD tree (make one with "
            "decodelab.neuro.simulate_fmri.simulate_nsd or `decodelab neuro simulate-fmri`)"
        )
    return json.loads(path.read_text())


def empirical_ncsnr(trial_betas: np.ndarray, image_of_trial: np.ndarray) -> np.ndarray:
    """NSD's noise-ceiling SNR estimated from single trials: ``[V]``.

    Noise variance is the mean over images of the variance across their repeats (``ddof=1``);
    signal variance is the total variance of the trials minus it (clipped at 0); the ratio of
    their square roots is ``ncsnr``. Only images with at least two trials count for the noise.
    """
    betas = np.asarray(trial_betas, np.float64)
    ids = np.asarray(image_of_trial)
    uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    means = np.zeros((len(uniq), betas.shape[1]))
    np.add.at(means, inverse, betas)
    means /= counts[:, None]
    resid = betas - means[inverse]
    rep = counts[inverse] >= 2
    dof = float(np.sum(counts[counts >= 2] - 1))
    noise_var = (resid[rep] ** 2).sum(0) / dof
    signal_var = np.maximum(betas.var(0) - noise_var, 0.0)
    return np.sqrt(signal_var) / np.sqrt(np.where(noise_var > 0, noise_var, np.inf))
