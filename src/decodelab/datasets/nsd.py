"""Natural Scenes Dataset (NSD) loaders: betas, ROI masks, design, stimuli, captions, Brain-Diffuser split.

NSD (Allen et al. 2022, https://naturalscenesdataset.org) is read from its own release layout
under one root folder (argument > ``$DECODELAB_DATA/nsd`` > ``~/decodelab_data/nsd``)::

    nsddata_betas/ppdata/subjAA/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_sessionNN.nii.gz  (or .nii / .hdf5)
    nsddata/ppdata/subjAA/func1pt8mm/roi/nsdgeneral.nii.gz
    nsddata/experiments/nsd/nsd_expdesign.mat
    nsddata/experiments/nsd/nsd_stim_info_merged.csv  (or .pkl)
    nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5

File facts (NSD Data Manual): betas are int16 percent signal change x 300, ``X x Y x Z x 750``
per session in NIfTI; the HDF5 release stores the same array in MATLAB order, which h5py reads
reversed, ``(750, Z, Y, X)``. ROI volumes hold -1/0/1; voxels with a value > 0 are in. Both
formats give the same ``[750, V]`` array here (voxels in the NIfTI mask's C order), reading only
the ROI's voxels: NIfTI through nibabel's array proxy in blocks of trials (memory-mapped for
``.nii``), HDF5 in slabs of ``Z`` planes (the release is chunked by voxel time series).

The Brain-Diffuser split (Ozcelik & VanRullen 2023, ``data/prepare_nsddata.py``, read for its
facts): trial ``k`` of a subject shows 73k image ``subjectim[s, masterordering[k] - 1] - 1``;
``masterordering > 1000`` is training, ``<= 1000`` (the shared1000 images) is test; repeats of an
image are averaged; betas are divided by 300. Subjects 1, 2, 5, 7 with 37 sessions give
8,859 / 982 images. :func:`zscore_train_test` z-scores with the training statistics (``ddof=1``).
:func:`load_nsd_split` caches the averaged arrays per subject (``$DECODELAB_CACHE/nsd``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from decodelab.hub import default_cache_dir

__all__ = [
    "TRIALS_PER_SESSION",
    "ExpDesign",
    "NSDPaths",
    "NSDSplit",
    "brain_diffuser_split",
    "find_nsd",
    "load_captions",
    "load_expdesign",
    "load_nsd_split",
    "load_roi_mask",
    "load_stim_info",
    "load_stimuli",
    "read_session_betas",
    "zscore_train_test",
]

TRIALS_PER_SESSION = 750
BETA_SCALE = 300.0


def find_nsd(root: str | os.PathLike[str] | None = None) -> Path:
    """The NSD root: ``root``, else ``$DECODELAB_DATA/nsd``, else ``~/decodelab_data/nsd``.

    Raises:
        FileNotFoundError: no such folder (the message says how to get the data).
    """
    if root is not None:
        candidates = [Path(root).expanduser()]
    else:
        env = os.environ.get("DECODELAB_DATA")
        candidates = ([Path(env).expanduser() / "nsd"] if env else []) + [Path.home() / "decodelab_data" / "nsd"]
    for c in candidates:
        if c.is_dir():
            return c
    raise FileNotFoundError(
        f"NSD not found (looked at: {', '.join(map(str, candidates))}). NSD is distributed after accepting its "
        "terms at https://naturalscenesdataset.org (AWS bucket s3://natural-scenes-dataset); copy the release "
        "folders (nsddata, nsddata_betas, nsddata_stimuli) there or pass root=."
    )


@dataclass(frozen=True)
class NSDPaths:
    """File paths of one subject in the NSD release layout.

    Attributes:
        root: the NSD root folder.
        subject: 1..8.
        space: functional space folder (``func1pt8mm``).
        betas_version: GLM version folder (``betas_fithrf_GLMdenoise_RR``).
    """

    root: Path
    subject: int
    space: str = "func1pt8mm"
    betas_version: str = "betas_fithrf_GLMdenoise_RR"

    @property
    def subj(self) -> str:
        return f"subj{self.subject:02d}"

    def betas(self, session: int, fmt: str = "nifti") -> Path:
        """``betas_sessionNN`` as ``.nii.gz`` (or ``.nii`` when only that exists) or ``.hdf5``."""
        folder = self.root / "nsddata_betas" / "ppdata" / self.subj / self.space / self.betas_version
        if fmt == "hdf5":
            return folder / f"betas_session{session:02d}.hdf5"
        if fmt != "nifti":
            raise ValueError(f"fmt must be 'nifti' or 'hdf5', got {fmt!r}")
        gz = folder / f"betas_session{session:02d}.nii.gz"
        plain = gz.with_suffix("")
        return plain if plain.is_file() and not gz.is_file() else gz

    def roi(self, name: str = "nsdgeneral") -> Path:
        return self.root / "nsddata" / "ppdata" / self.subj / self.space / "roi" / f"{name}.nii.gz"

    @property
    def expdesign(self) -> Path:
        return self.root / "nsddata" / "experiments" / "nsd" / "nsd_expdesign.mat"

    @property
    def stim_info(self) -> Path:
        folder = self.root / "nsddata" / "experiments" / "nsd"
        csv = folder / "nsd_stim_info_merged.csv"
        return csv if csv.is_file() else folder / "nsd_stim_info_merged.pkl"

    @property
    def stimuli(self) -> Path:
        return self.root / "nsddata_stimuli" / "stimuli" / "nsd" / "nsd_stimuli.hdf5"


def _require(path: Path, what: str) -> Path:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return Path(path)


# ---------------------------------------------------------------------------------------- volumes
def load_roi_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """Boolean ``[X, Y, Z]`` mask of an NSD ROI volume (values > 0; -1 and 0 are out)."""
    import nibabel as nib

    path = _require(Path(path), "ROI mask")
    data = np.asanyarray(nib.load(path).dataobj)
    if data.ndim != 3:
        raise ValueError(f"ROI mask {path} must be a 3-D volume, got shape {data.shape}")
    mask = data > 0
    if not mask.any():
        raise ValueError(f"ROI mask {path} has no voxel > 0")
    return mask


def read_session_betas(
    path: str | os.PathLike[str], mask: np.ndarray, *, trials: int = TRIALS_PER_SESSION, block: int = 64
) -> np.ndarray:
    """ROI betas of one session, ``[trials, V]`` float32 on the file's scale (NSD: x 300).

    Args:
        path: ``betas_sessionNN.nii.gz`` / ``.nii`` (``X x Y x Z x trials``) or ``.hdf5``
            (dataset ``betas``, ``(trials, Z, Y, X)``).
        mask: boolean ``[X, Y, Z]`` ROI (:func:`load_roi_mask`); voxels come in its C order.
        trials: trials the file must hold.
        block: trials (NIfTI) or Z planes (HDF5) read at once.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: a shape that does not fit the mask or the trial count (the file is named).
    """
    path = _require(Path(path), "betas session file")
    x, y, z = np.nonzero(mask)
    out = np.empty((trials, len(x)), dtype=np.float32)
    if path.suffix in (".hdf5", ".h5"):
        import h5py

        with h5py.File(path, "r") as f:
            if "betas" not in f:
                raise ValueError(f"{path} has no dataset 'betas' (keys: {list(f)})")
            ds = f["betas"]
            expected = (trials, *mask.shape[::-1])
            if ds.shape != expected:
                raise ValueError(f"{path}: betas have shape {ds.shape}, expected {expected} (trials, Z, Y, X) "
                                 f"for a {mask.shape} mask and {trials} trials")  # fmt: skip
            for z0 in range(0, mask.shape[2], block):
                z1 = min(z0 + block, mask.shape[2])
                sel = (z >= z0) & (z < z1)
                if sel.any():
                    slab = ds[:, z0:z1]  # [trials, dz, Y, X]
                    out[:, sel] = slab[:, z[sel] - z0, y[sel], x[sel]]
        return out
    import nibabel as nib

    img = nib.load(path, mmap=True, keep_file_open=True)
    expected = (*mask.shape, trials)
    if img.shape != expected:
        raise ValueError(f"{path}: betas have shape {img.shape}, expected {expected} (X, Y, Z, trials) for the "
                         f"{mask.shape} ROI mask and {trials} trials")  # fmt: skip
    for t0 in range(0, trials, block):
        t1 = min(t0 + block, trials)
        vol = np.asanyarray(img.dataobj[..., t0:t1])  # [X, Y, Z, dt], forward reads only
        out[t0:t1] = vol[x, y, z].T
    return out


# ----------------------------------------------------------------------------------------- design
@dataclass
class ExpDesign:
    """``nsd_expdesign.mat``: all indices as in the file (1-based).

    Attributes:
        masterordering: ``[30000]`` index (1..10000) into a subject's 10,000 images, per trial.
        subjectim: ``[8, 10000]`` 73k ids (1-based) of each subject's images.
        sharedix: ``[1000]`` 73k ids (1-based) of the shared1000 images.
    """

    masterordering: np.ndarray
    subjectim: np.ndarray
    sharedix: np.ndarray


def load_expdesign(path: str | os.PathLike[str]) -> ExpDesign:
    """Read ``nsd_expdesign.mat`` (MATLAB v5 via scipy.io, v7.3 = HDF5 via h5py, transposed back)."""
    import h5py

    path = _require(Path(path), "NSD design file")
    keys = ("masterordering", "subjectim", "sharedix")
    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            missing = [k for k in keys if k not in f]
            if missing:
                raise ValueError(f"{path} lacks {missing} (found {list(f)})")
            raw = {k: np.asarray(f[k]).T for k in keys}  # MATLAB column-major: h5py sees the transpose
    else:
        import scipy.io

        mat = scipy.io.loadmat(path, variable_names=keys)
        missing = [k for k in keys if k not in mat]
        if missing:
            raise ValueError(f"{path} lacks {missing}")
        raw = {k: mat[k] for k in keys}
    design = ExpDesign(
        masterordering=np.asarray(raw["masterordering"]).astype(np.int64).ravel(),
        subjectim=np.atleast_2d(np.asarray(raw["subjectim"]).astype(np.int64)),
        sharedix=np.asarray(raw["sharedix"]).astype(np.int64).ravel(),
    )
    if design.subjectim.ndim != 2 or design.masterordering.max() > design.subjectim.shape[1]:
        raise ValueError(f"{path}: masterordering indexes {design.masterordering.max()} images but subjectim has "
                         f"shape {design.subjectim.shape}")  # fmt: skip
    return design


def load_stim_info(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> Any:
    """``nsd_stim_info_merged`` as a pandas DataFrame (one row per 73k image).

    The CSV is read directly. The ``.pkl`` is a pickled DataFrame: unpickling can run code, so it
    is read only with ``allow_pickle=True`` (convert it once with ``df.to_csv`` to avoid that).
    """
    import pandas as pd

    path = _require(Path(path), "NSD stimulus info")
    if path.suffix == ".csv":
        df = pd.read_csv(path)
        if df.columns[0].startswith("Unnamed"):  # the index column written by to_csv
            df = df.set_index(df.columns[0]).rename_axis(None)
    elif path.suffix in (".pkl", ".pickle"):
        if not allow_pickle:
            raise ValueError(f"{path} is a pickle, which can run code when read: pass allow_pickle=True if you trust "
                             "it, or use nsd_stim_info_merged.csv")  # fmt: skip
        df = pd.read_pickle(path)
    else:
        raise ValueError(f"{path}: expected nsd_stim_info_merged .csv or .pkl")
    for col in ("cocoId", "cocoSplit"):
        if col not in df.columns:
            raise ValueError(f"{path} has no column {col!r} (columns: {list(df.columns)[:12]})")
    return df


def load_stimuli(path: str | os.PathLike[str], nsd_ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """Images ``[N, 425, 425, 3]`` uint8 of 0-based 73k ids, in the given order, from ``imgBrick``."""
    import h5py

    path = _require(Path(path), "NSD stimuli file")
    ids = np.asarray(nsd_ids, dtype=np.int64)
    with h5py.File(path, "r") as f:
        if "imgBrick" not in f:
            raise ValueError(f"{path} has no dataset 'imgBrick' (keys: {list(f)})")
        brick = f["imgBrick"]
        if brick.ndim != 4 or brick.shape[-1] != 3:
            raise ValueError(f"{path}: imgBrick has shape {brick.shape}, expected (73000, 425, 425, 3)")
        if ids.size and (ids.min() < 0 or ids.max() >= brick.shape[0]):
            raise ValueError(f"{path}: ids must be in 0..{brick.shape[0] - 1}")
        uniq, inverse = np.unique(ids, return_inverse=True)  # h5py wants increasing indices
        return brick[uniq][inverse]


def load_captions(path: str | os.PathLike[str], nsd_ids: Sequence[int] | np.ndarray,
                  stim_info: Any = None) -> list[list[str]]:  # fmt: skip
    """COCO captions of 0-based 73k ids.

    Args:
        path: ``COCO_73k_annots_curated.npy`` (``[73000, 5]`` strings, empty ones dropped) or a COCO
            ``captions_*.json`` (then ``stim_info`` maps 73k ids to ``cocoId``; several JSON files:
            call once per file and merge).
        nsd_ids: 0-based 73k ids.
        stim_info: :func:`load_stim_info` frame (JSON only).
    """
    path = _require(Path(path), "captions file")
    ids = np.asarray(nsd_ids, dtype=np.int64)
    if path.suffix == ".npy":
        annots = np.load(path, allow_pickle=False)
        if annots.ndim != 2 or ids.size and ids.max() >= len(annots):
            raise ValueError(f"{path}: expected [73000, 5] captions, got shape {annots.shape}")
        return [[str(c).strip() for c in annots[i] if str(c).strip()] for i in ids]
    if path.suffix != ".json":
        raise ValueError(f"{path}: expected a .npy caption array or a COCO captions .json")
    if stim_info is None:
        raise ValueError(f"{path} is indexed by COCO id: pass stim_info (nsd_stim_info_merged) to map 73k ids")
    by_coco: dict[int, list[str]] = {}
    for ann in json.loads(path.read_text())["annotations"]:
        by_coco.setdefault(int(ann["image_id"]), []).append(ann["caption"].strip())
    coco = stim_info["cocoId"].to_numpy()
    return [by_coco.get(int(coco[i]), []) for i in ids]


# ------------------------------------------------------------------------------------------ split
def brain_diffuser_split(design: ExpDesign, subject: int, n_trials: int) -> dict[str, dict[int, np.ndarray]]:
    """Trials of each image, per split: ``{"train": {nsd_id: trials}, "test": {...}}`` (0-based ids).

    Trial ``k < n_trials`` shows ``subjectim[subject - 1, masterordering[k] - 1] - 1``; it is a test
    trial when ``masterordering[k] <= 1000`` (shared1000). Images are keyed in increasing id order.
    """
    if n_trials > len(design.masterordering):
        raise ValueError(f"{n_trials} trials requested, the design has {len(design.masterordering)}")
    order = design.masterordering[:n_trials]
    ids = design.subjectim[subject - 1, order - 1] - 1
    out: dict[str, dict[int, np.ndarray]] = {}
    for name, sel in (("train", order > 1000), ("test", order <= 1000)):
        trials = np.nonzero(sel)[0]
        uniq, inverse = np.unique(ids[trials], return_inverse=True)
        out[name] = {int(u): trials[inverse == i] for i, u in enumerate(uniq)}
    return out


@dataclass
class NSDSplit:
    """Repeat-averaged ROI betas (``/300``) of one subject, Brain-Diffuser split.

    Attributes:
        train: ``[n_train, V]`` float32.
        test: ``[n_test, V]`` float32.
        train_ids: ``[n_train]`` 0-based 73k ids.
        test_ids: ``[n_test]``.
        train_repeats: ``[n_train]`` trials averaged per image.
        test_repeats: ``[n_test]``.
    """

    train: np.ndarray
    test: np.ndarray
    train_ids: np.ndarray
    test_ids: np.ndarray
    train_repeats: np.ndarray
    test_repeats: np.ndarray


def _cache_key(paths: NSDPaths, sessions: int, roi: str, fmt: str, trials: int) -> str:
    mask_file = paths.roi(roi)
    st = mask_file.stat()
    blob = json.dumps([str(paths.root.resolve()), paths.subject, paths.space, paths.betas_version, sessions, roi,
                       fmt, trials, st.st_size, st.st_mtime_ns])  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_nsd_split(
    root: str | os.PathLike[str] | None,
    subject: int,
    *,
    sessions: int = 37,
    roi: str = "nsdgeneral",
    fmt: str = "nifti",
    trials_per_session: int = TRIALS_PER_SESSION,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> NSDSplit:
    """Brain-Diffuser's train/test betas of one subject, averaged over repeats and divided by 300.

    Args:
        root: NSD root (see :func:`find_nsd`).
        subject: 1..8 (Brain-Diffuser uses 1, 2, 5, 7).
        sessions: sessions 1..``sessions`` are read (37 in Brain-Diffuser).
        roi: ROI volume name (``nsdgeneral``).
        fmt: ``"nifti"`` or ``"hdf5"`` betas.
        trials_per_session: 750 in NSD.
        cache: keep the result in ``cache_dir`` (default ``$DECODELAB_CACHE/nsd``) keyed by
            subject, sessions, ROI, format and the mask file, so a second call reads no betas.

    Raises:
        FileNotFoundError: a missing session, mask or design file (named).
        ValueError: betas that do not fit the mask or the trial count (the file is named).
    """
    paths = NSDPaths(find_nsd(root), subject)
    mask = load_roi_mask(paths.roi(roi))
    cache_file = None
    if cache:
        folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir() / "nsd"
        cache_file = folder / f"{paths.subj}_{roi}_{_cache_key(paths, sessions, roi, fmt, trials_per_session)}.npz"
        if cache_file.is_file():
            with np.load(cache_file) as z:
                return NSDSplit(**{k: z[k] for k in NSDSplit.__dataclass_fields__})
    design = load_expdesign(paths.expdesign)
    split = brain_diffuser_split(design, subject, sessions * trials_per_session)
    files = [paths.betas(s, fmt) for s in range(1, sessions + 1)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {sessions} betas sessions missing, first: {missing[0]}")
    n_vox = int(mask.sum())
    sums, counts, index = {}, {}, {}
    for name, groups in split.items():
        sums[name] = np.zeros((len(groups), n_vox), np.float32)  # int16 betas: sums of repeats are exact
        counts[name] = np.array([len(t) for t in groups.values()])
        index[name] = {int(t): row for row, trials in enumerate(groups.values()) for t in trials}
    for s, f in enumerate(files):
        betas = read_session_betas(f, mask, trials=trials_per_session)  # [trials, V]
        for name in split:
            for k in range(trials_per_session):
                row = index[name].get(s * trials_per_session + k)
                if row is not None:
                    sums[name][row] += betas[k]
    result = {}
    for name, groups in split.items():
        sums[name] /= (counts[name][:, None] * BETA_SCALE).astype(np.float32)
        result[name] = sums[name]
        result[f"{name}_ids"] = np.fromiter(groups.keys(), dtype=np.int64, count=len(groups))
        result[f"{name}_repeats"] = counts[name]
    out = NSDSplit(**result)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp.npz")
        np.savez(tmp, **result)
        os.replace(tmp, cache_file)
    return out


def zscore_train_test(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Z-score both with the training mean and ``std(ddof=1)`` per voxel (constant voxels: std 1)."""
    mean = train.mean(axis=0)
    std = train.std(axis=0, ddof=1)
    std = np.where(std > 0, std, 1.0)
    return ((train - mean) / std).astype(train.dtype), ((test - mean) / std).astype(test.dtype)
