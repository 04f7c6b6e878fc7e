"""MEG-to-image decoding runs (Benchetrit, Banville & King, ICLR 2024): data, linear baseline, evaluation.

- :func:`load_meg_data` reads every ``preprocessed_P{n}-epo.fif`` of a folder with the THINGS-MEG
  loader (:mod:`decodelab.datasets.things_meg`: -0.5..1.0 s at 120 Hz, baseline, per-subject robust
  scaling fitted on training trials, clamp, the test trials averaged per image), one subject at a
  time (bounded memory), and attaches each row's target embeddings from the simulation's world
  (:mod:`decodelab.neuro.runs.meg_world`);
- :func:`noise_normalize` (optional, for every decoder alike): multivariate noise normalisation, the
  epochs spatially whitened with the noise covariance of the pre-stimulus window;
- :func:`fit_linear_baseline`: the paper's linear decoder, a ridge from the flattened
  ``channels x time`` epoch to the embedding, **one per subject**, penalty chosen by exact
  leave-one-out error (:class:`decodelab.neuro.ridge.MultiTargetRidgeCV`);
- :func:`retrieval_report`: top-5 retrieval and median relative rank on the 200 averaged test images
  (:func:`decodelab.eval.meg.meg_retrieval_metrics`), per subject and their mean, with chance;
- :func:`time_resolved`: one sliding-window linear decoder per window and target (the paper's
  time-resolved analysis), its peak time next to the simulation's latencies.

Reconstruction and figures are in :mod:`decodelab.neuro.runs.meg_report`; training the brain module
is the ``meg`` task (:mod:`decodelab.neuro.runs.meg_task`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from decodelab.datasets.things_meg import make_splits, read_preprocessed_epochs
from decodelab.eval.meg import meg_retrieval_metrics, time_resolved_retrieval
from decodelab.neuro.ridge import MultiTargetRidge, MultiTargetRidgeCV
from decodelab.neuro.runs.meg_world import MegWorld, load_world

__all__ = [
    "MegData",
    "class_centroids",
    "decode_classes",
    "fit_linear_baseline",
    "noise_normalize",
    "load_meg_data",
    "retrieval_report",
    "simulation_latencies",
    "time_resolved",
]

#: Ridge penalties the linear baseline chooses from (leave-one-out).
BASELINE_ALPHAS = tuple(float(a) for a in np.logspace(0, 8, 17))


@dataclass
class MegData:
    """Decoder-ready splits of every subject of a folder, with their target embeddings.

    Attributes:
        train_x: ``[N_train, C, T]`` single training trials (all subjects); test_x: ``[N_test, C, T]``
            the averaged test images (all subjects, ``n_test`` rows each).
        train_img, test_img: ``[N]`` image indices into the world (0-based).
        train_subject, test_subject: ``[N]`` subject indices (0-based, into ``subjects``).
        subjects: subject labels; times: ``[T]`` seconds; ch_names, positions ``[C, 2]``.
        world: the images and embeddings (:class:`~decodelab.neuro.runs.meg_world.MegWorld`).
    """

    train_x: np.ndarray
    test_x: np.ndarray
    train_img: np.ndarray
    test_img: np.ndarray
    train_subject: np.ndarray
    test_subject: np.ndarray
    subjects: list[str]
    times: np.ndarray
    ch_names: list[str]
    positions: np.ndarray
    world: MegWorld
    test_trials: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: per-subject ``[C, C]`` noise-normalisation matrices applied to the epochs (empty: none; see
    #: :func:`noise_normalize`)
    whiteners: list[np.ndarray] = field(default_factory=list)

    def targets(self, name: str, split: str) -> np.ndarray:
        """``[N, F]`` float32 target embedding of every row of ``split`` (``"train"`` / ``"test"``)."""
        emb = standardize_embedding(self.world, name)
        return emb[self.train_img if split == "train" else self.test_img].astype(np.float32)

    def subject_rows(self, split: str, s: int) -> np.ndarray:
        return np.flatnonzero((self.train_subject if split == "train" else self.test_subject) == s)


def standardize_embedding(world: MegWorld, name: str) -> np.ndarray:
    """``[N, F]`` embedding z-scored with the training images' mean and std (retrieval is by cosine)."""
    emb = np.asarray(world.embedding(name), dtype=np.float64)
    train = emb[: len(emb) - world.n_test]
    sd = train.std(0)
    return (emb - train.mean(0)) / np.where(sd > 0, sd, 1)


#: Decoder-ready splits cached next to the epochs (reading FIF epochs is the slow part of a run).
SPLITS_CACHE = "decoder_splits.npz"


def _cache_key(files: list[Path]) -> str:
    return json.dumps([[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files])


def load_meg_data(folder: str | Path, *, max_subjects: int | None = None, cache: bool = True) -> MegData:
    """Read the ``preprocessed_P*-epo.fif`` files of ``folder`` and its ``world.npz`` into :class:`MegData`.

    With ``cache`` the preprocessed splits are saved to ``folder/decoder_splits.npz`` (keyed by the
    epoch files' names, sizes and modification times) and read from there while the files are unchanged.

    Raises:
        FileNotFoundError: no epochs file, or no world.
        ValueError: the files disagree on channels or times, or name images the world does not have.
    """

    folder = Path(folder)
    files = sorted(folder.glob("preprocessed_P*-epo.fif"), key=lambda p: (len(p.name), p.name))
    if not files:
        raise FileNotFoundError(f"no preprocessed_P*-epo.fif in {folder} (simulate with decodelab neuro simulate)")
    world = load_world(folder)
    files = files[:max_subjects] if max_subjects else files
    cache_path = folder / SPLITS_CACHE
    if cache and cache_path.is_file():
        with np.load(cache_path, allow_pickle=False) as z:
            if str(z["key"]) == _cache_key(files):
                arrays = {k: z[k] for k in z.files if k not in ("key", "subjects", "ch_names")}
                return MegData(
                    **arrays, subjects=[str(s) for s in z["subjects"]], ch_names=[str(c) for c in z["ch_names"]],
                    world=world,
                )  # fmt: skip
    data = _read_meg_data(files, world)
    if cache:
        arrays = {k: getattr(data, k) for k in _ARRAYS}
        np.savez(cache_path, key=_cache_key(files), subjects=data.subjects, ch_names=data.ch_names, **arrays)
    return data


_ARRAYS = ("train_x", "test_x", "train_img", "test_img", "train_subject", "test_subject", "times", "positions",
           "test_trials")  # fmt: skip


def _read_meg_data(files: list[Path], world: MegWorld) -> MegData:
    from decodelab.datasets.things_meg import ctf275_sensor_positions

    parts: dict[str, list] = {k: [] for k in ("trx", "tex", "tri", "tei", "trs", "tes", "tet")}
    times = ch_names = None
    for s, path in enumerate(files):
        ep = read_preprocessed_epochs(path, tmin=-0.5, tmax=1.0, sfreq=120.0, expected_sfreq=None)
        if times is None:
            times, ch_names = ep.times, list(ep.ch_names)
        elif list(ep.ch_names) != ch_names or not np.allclose(ep.times, times):
            raise ValueError(f"{path}: channels or times differ from {files[0].name}'s")
        sp = make_splits(ep)
        del ep
        for split, key in ((sp.train, "tr"), (sp.test, "te")):
            img = np.asarray(split.image_nr, dtype=np.int64) - 1
            if img.min() < 0 or img.max() >= len(world.images):
                raise ValueError(f"{path}: image numbers outside the world's 1..{len(world.images)}")
            parts[key + "x"].append(split.data)
            parts[key + "i"].append(img)
            parts[key + "s"].append(np.full(len(img), s))
        parts["tet"].append(sp.test.n_trials)
    return MegData(
        train_x=np.concatenate(parts["trx"]), test_x=np.concatenate(parts["tex"]),
        train_img=np.concatenate(parts["tri"]), test_img=np.concatenate(parts["tei"]),
        train_subject=np.concatenate(parts["trs"]), test_subject=np.concatenate(parts["tes"]),
        subjects=[p.name.split("_")[1].split("-")[0] for p in files], times=times, ch_names=ch_names,
        positions=ctf275_sensor_positions(ch_names), world=world, test_trials=np.concatenate(parts["tet"]),
    )  # fmt: skip


# ----------------------------------------------------------------------------- noise normalisation
def noise_normalize(data: MegData, *, tmax: float = 0.0) -> MegData:
    """Multivariate noise normalisation: every subject's epochs spatially whitened by its noise covariance.

    Per subject, the sensor covariance of the pre-stimulus samples (``times < tmax``, where there is
    only noise) of the *training* trials is estimated with Ledoit-Wolf shrinkage
    (``sklearn.covariance.ledoit_wolf``), and every epoch of that subject, training and test, is
    mapped through its symmetric inverse square root ``W = Sigma^-1/2`` (ZCA: each output channel
    stays closest to its sensor, so sensor positions keep their meaning for the brain module's
    spatial attention). This is the multivariate noise normalisation of Guggenmos, Sterzer & Cichy
    (NeuroImage 2018), which they found to improve MEG decoding; with the noise covariance taken from
    the baseline as in MNE's whitening. It is a linear, per-subject preprocessing step, so it is
    applied to the data both decoders see, never to one of them only.

    Returns:
        A new :class:`MegData` (the input is not changed) with ``whiteners`` set.

    Raises:
        ValueError: the data is already normalised, or there are fewer than two pre-stimulus samples.
    """
    from dataclasses import replace

    from sklearn.covariance import ledoit_wolf

    if data.whiteners:
        raise ValueError("these epochs are already noise-normalised")
    base = np.flatnonzero(data.times < tmax)
    if base.size < 2:
        raise ValueError(f"no pre-stimulus window: {base.size} samples before {tmax} s")
    train_x, test_x = np.empty_like(data.train_x), np.empty_like(data.test_x)
    whiteners = []
    for s in range(len(data.subjects)):
        tr, te = data.subject_rows("train", s), data.subject_rows("test", s)
        x = data.train_x[tr]  # [N, C, T], one copy of the subject's trials
        window = x[:, :, base]  # [N, C, B]
        cov, _ = ledoit_wolf(window.transpose(0, 2, 1).reshape(-1, window.shape[1]).astype(np.float64))
        val, vec = np.linalg.eigh(cov)
        w = (vec / np.sqrt(np.clip(val, np.finfo(np.float64).tiny, None))) @ vec.T
        whiteners.append(w)
        w32 = w.astype(data.train_x.dtype)
        train_x[tr] = np.einsum("dc,nct->ndt", w32, x, optimize=True)
        test_x[te] = np.einsum("dc,nct->ndt", w32, data.test_x[te], optimize=True)
    return replace(data, train_x=train_x, test_x=test_x, whiteners=whiteners)


# ------------------------------------------------------------------------------------- retrieval
def retrieval_report(data: MegData, pred: np.ndarray, target: str, k: int = 5) -> dict[str, float]:
    """Retrieval of the test images from ``pred`` ``[N_test, F]`` (rows of ``data.test_x``), per subject and mean.

    Each subject's predictions are ranked among that subject's test images (the small set: 200
    averaged images) and, for the large set, also among the training images' embeddings as
    distractors. Keys: ``mean.<metric>`` and ``<subject>.<metric>`` for every
    :func:`~decodelab.eval.meg.meg_retrieval_metrics` key.
    """
    truth = data.targets(target, "test")
    distractors = standardize_embedding(data.world, target)[: len(data.world.images) - data.world.n_test]
    per: dict[str, dict[str, float]] = {}
    for s, name in enumerate(data.subjects):
        rows = data.subject_rows("test", s)
        per[name] = meg_retrieval_metrics(pred[rows], truth[rows], distractors=distractors, k=k)
    out = {f"mean.{key}": float(np.mean([p[key] for p in per.values()])) for key in next(iter(per.values()))}
    for name, p in per.items():
        out.update({f"{name}.{key}": v for key, v in p.items()})
    return out


# ---------------------------------------------------------------------------------- linear baseline
@dataclass
class LinearBaseline:
    """Per-subject ridge decoders: ``models[s]`` maps subject ``s``'s flattened epochs to the target."""

    target: str
    models: list[MultiTargetRidge]
    fit_time_s: float

    def predict(self, x: np.ndarray, subject: np.ndarray) -> np.ndarray:
        out = None
        for s, model in enumerate(self.models):
            rows = np.flatnonzero(subject == s)
            if rows.size == 0:
                continue
            p = model.predict(x[rows].reshape(len(rows), -1))
            out = np.zeros((len(x), p.shape[1])) if out is None else out
            out[rows] = p
        return out


def fit_linear_baseline(data: MegData, target: str = "semantic", alphas=BASELINE_ALPHAS) -> LinearBaseline:
    """One ridge per subject from flattened ``[C * T]`` training epochs to the standardised ``target``."""
    t0 = time.time()
    y = data.targets(target, "train")
    models = []
    for s in range(len(data.subjects)):
        rows = data.subject_rows("train", s)
        x = data.train_x[rows].reshape(len(rows), -1)
        models.append(MultiTargetRidgeCV(alphas=alphas, dtype="float32").fit(x, y[rows]))
    return LinearBaseline(target, models, time.time() - t0)


# ------------------------------------------------------------------------------------ time-resolved
def simulation_latencies(folder: str | Path) -> dict[str, float]:
    """``{"low": early_latency, "semantic": late_latency}`` from a simulation's ``simulation.json``."""
    cfg = json.loads((Path(folder) / "simulation.json").read_text())["config"]
    return {"low": float(cfg["early_latency"]), "semantic": float(cfg["late_latency"])}


def time_resolved(
    data: MegData,
    targets=("low", "semantic"),
    *,
    width: float = 0.1,
    step: float = 0.05,
    alpha: float = 1e4,
    k: int = 5,
) -> dict[str, dict[str, list[float] | float]]:
    """Sliding-window linear decoding per target, averaged over subjects.

    Each window ``[C, width * 120]`` of each subject gets its own ridge (fixed ``alpha``, the
    features flattened as in the full-epoch baseline) and is scored by retrieval on that subject's
    averaged test images. Returns per target: ``times`` (window centres), ``top{k}``,
    ``mean_relative_rank``, ``peak_time`` (lowest mean relative rank) and ``chance_top{k}``.
    """
    out = {}
    for name in targets:
        ytr, yte = data.targets(name, "train"), data.targets(name, "test")
        curves = []
        for s in range(len(data.subjects)):
            tr, te = data.subject_rows("train", s), data.subject_rows("test", s)
            curves.append(
                time_resolved_retrieval(
                    data.train_x[tr], ytr[tr], data.test_x[te], yte[te], data.times, width=width, step=step, k=k,
                    estimator=lambda: MultiTargetRidge(alpha=alpha, dtype="float32"),
                )
            )  # fmt: skip
        mean_rank = np.mean([c.mean_relative_rank for c in curves], axis=0)
        centres = curves[0].times
        out[name] = {
            "times": centres.tolist(),
            f"top{k}": np.mean([c.top_k for c in curves], axis=0).tolist(),
            "mean_relative_rank": mean_rank.tolist(),
            "peak_time": float(centres[int(np.argmin(mean_rank))]),
            f"chance_top{k}": curves[0].chance_top_k,
        }
    return out


# ------------------------------------------------------------------------------------ classes
def class_centroids(data: MegData, target: str = "semantic") -> np.ndarray:
    """``[n_classes, F]`` mean standardised embedding of the training images of each class."""
    emb = standardize_embedding(data.world, target)
    n_train = len(emb) - data.world.n_test
    labels = data.world.labels[:n_train]
    return np.stack([emb[:n_train][labels == c].mean(0) for c in range(len(data.world.class_names))])


def decode_classes(pred: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Class of each predicted embedding: the nearest class centroid by cosine similarity."""
    from decodelab.eval.meg import cosine_similarity

    return cosine_similarity(pred, centroids).argmax(1)
