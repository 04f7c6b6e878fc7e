"""NSD loaders on tiny files written in each real format (NIfTI, HDF5 with reversed axes, .mat v5/v7.3, CSV/pickle)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.io

from decodelab.datasets import nsd

GRID = (5, 4, 3)  # X, Y, Z
TRIALS = 8  # per session (NSD: 750)
SESSIONS = 3
N_IMAGES = 1010  # per subject; masterordering > 1000 is training


def _design(rng: np.random.Generator) -> nsd.ExpDesign:
    # 24 trials: test images 1..3 (shared1000 positions), train images 1001..1006, with repeats
    order = np.array([1001, 2, 1002, 1003, 1, 1001, 1004, 3,
                      2, 1005, 1002, 1006, 1, 1003, 1001, 2,
                      1004, 1006, 3, 1005, 1002, 1, 1006, 1004])  # fmt: skip
    subjectim = np.zeros((8, N_IMAGES), np.int64)
    for s in range(8):
        subjectim[s] = rng.permutation(np.arange(1, N_IMAGES + 1)) + 100 * s  # 1-based 73k ids
    return nsd.ExpDesign(order, subjectim, np.arange(1, 1001))


def _write_tree(root: Path, seed: int = 0) -> dict:
    """A tiny NSD release for subject 1: 3 sessions in .nii.gz and .hdf5, mask, design, stim info, stimuli."""
    rng = np.random.default_rng(seed)
    paths = nsd.NSDPaths(root, 1)
    mask_vals = rng.choice([-1, 0, 1], size=GRID).astype(np.int16)
    mask_vals[0, 0, 0] = 1
    paths.roi().parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(mask_vals, np.eye(4)), paths.roi())
    betas = []
    paths.betas(1).parent.mkdir(parents=True)
    for s in range(1, SESSIONS + 1):
        b = rng.integers(-3000, 3000, size=(*GRID, TRIALS)).astype(np.int16)  # % signal change x 300
        nib.save(nib.Nifti1Image(b, np.eye(4)), paths.betas(s))
        with h5py.File(paths.betas(s, "hdf5"), "w") as f:
            f.create_dataset("betas", data=b.transpose(3, 2, 1, 0), chunks=(TRIALS, 1, 1, 1))  # MATLAB order
        betas.append(b)
    design = _design(rng)
    paths.expdesign.parent.mkdir(parents=True)
    scipy.io.savemat(paths.expdesign, {"masterordering": design.masterordering[None].astype(float),
                                       "subjectim": design.subjectim.astype(float),
                                       "sharedix": design.sharedix[None].astype(float)})  # fmt: skip
    info = pd.DataFrame({"cocoId": rng.integers(1, 10**6, 2000), "cocoSplit": ["train2017"] * 2000,
                         "shared1000": [False] * 2000})  # fmt: skip
    info.to_csv(paths.stim_info.with_suffix(".csv"))
    paths.stimuli.parent.mkdir(parents=True)
    brick = rng.integers(0, 256, size=(2000, 6, 6, 3), dtype=np.uint8)
    with h5py.File(paths.stimuli, "w") as f:
        f["imgBrick"] = brick
    return {"paths": paths, "mask": mask_vals > 0, "betas": betas, "design": design, "info": info, "brick": brick}


@pytest.fixture
def tree(tmp_path: Path) -> dict:
    return _write_tree(tmp_path / "nsd")


def test_betas_nifti_gz_nii_and_hdf5_agree(tree: dict, tmp_path: Path) -> None:
    paths, mask, b = tree["paths"], tree["mask"], tree["betas"][1]
    direct = b[mask].T.astype(np.float32)  # [trials, V], voxels in the mask's C order
    gz = nsd.read_session_betas(paths.betas(2), mask, trials=TRIALS, block=3)
    h5 = nsd.read_session_betas(paths.betas(2, "hdf5"), mask, trials=TRIALS, block=2)
    plain = tmp_path / "betas_session02.nii"
    nib.save(nib.load(paths.betas(2)), plain)
    nii = nsd.read_session_betas(plain, mask, trials=TRIALS)
    for arr in (gz, h5, nii):
        np.testing.assert_array_equal(arr, direct)
    assert nsd.load_roi_mask(paths.roi()).sum() == mask.sum() < mask.size  # -1 and 0 are out


def test_betas_errors_name_the_file(tree: dict, tmp_path: Path) -> None:
    paths, mask = tree["paths"], tree["mask"]
    with pytest.raises(ValueError, match=r"betas_session01\.nii\.gz.*\(5, 4, 3, 8\).*\(4, 4, 3\) ROI"):
        nsd.read_session_betas(paths.betas(1), mask[:4], trials=TRIALS)
    with pytest.raises(ValueError, match=r"betas_session01\.nii\.gz.*750 trials"):
        nsd.read_session_betas(paths.betas(1), mask)
    with h5py.File(tmp_path / "wrong_axes.hdf5", "w") as f:
        f["betas"] = tree["betas"][0]  # NIfTI order in an HDF5 file: not the release's layout
    with pytest.raises(ValueError, match=r"wrong_axes\.hdf5.*\(8, 3, 4, 5\)"):
        nsd.read_session_betas(tmp_path / "wrong_axes.hdf5", mask, trials=TRIALS)
    with pytest.raises(FileNotFoundError, match="betas_session09"):
        nsd.read_session_betas(paths.betas(9), mask, trials=TRIALS)
    empty = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(GRID, np.int16), np.eye(4)), empty)
    with pytest.raises(ValueError, match="empty.nii.gz has no voxel"):
        nsd.load_roi_mask(empty)


def test_expdesign_v5_and_v73_agree(tree: dict, tmp_path: Path) -> None:
    d5 = nsd.load_expdesign(tree["paths"].expdesign)
    v73 = tmp_path / "nsd_expdesign.mat"
    with h5py.File(v73, "w", userblock_size=512) as f:  # MATLAB v7.3: HDF5 with a 512-byte header, column-major
        for k in ("masterordering", "subjectim", "sharedix"):
            f[k] = np.atleast_2d(getattr(tree["design"], k)).astype(float).T
    with open(v73, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .")
    d73 = nsd.load_expdesign(v73)
    for d in (d5, d73):
        np.testing.assert_array_equal(d.masterordering, tree["design"].masterordering)
        np.testing.assert_array_equal(d.subjectim, tree["design"].subjectim)
        np.testing.assert_array_equal(d.sharedix, tree["design"].sharedix)
    scipy.io.savemat(tmp_path / "bad.mat", {"masterordering": np.ones((1, 3))})
    with pytest.raises(ValueError, match=r"bad\.mat lacks"):
        nsd.load_expdesign(tmp_path / "bad.mat")


def test_stim_info_csv_and_pickle(tree: dict, tmp_path: Path) -> None:
    csv = nsd.load_stim_info(tree["paths"].stim_info)
    pkl = tmp_path / "nsd_stim_info_merged.pkl"
    tree["info"].to_pickle(pkl)
    with pytest.raises(ValueError, match="allow_pickle"):
        nsd.load_stim_info(pkl)
    pd.testing.assert_frame_equal(nsd.load_stim_info(pkl, allow_pickle=True), csv)
    np.testing.assert_array_equal(csv["cocoId"].to_numpy(), tree["info"]["cocoId"].to_numpy())


def test_stimuli_and_captions(tree: dict, tmp_path: Path) -> None:
    ids = [7, 3, 7, 1999]
    np.testing.assert_array_equal(nsd.load_stimuli(tree["paths"].stimuli, ids), tree["brick"][ids])
    with pytest.raises(ValueError, match="ids must be in 0..1999"):
        nsd.load_stimuli(tree["paths"].stimuli, [2000])
    annots = np.array([[f"img {i} cap {j}" if j < 4 else "" for j in range(5)] for i in range(2000)])
    np.save(tmp_path / "COCO_73k_annots_curated.npy", annots)
    caps = nsd.load_captions(tmp_path / "COCO_73k_annots_curated.npy", [5, 2])
    assert caps == [[f"img 5 cap {j}" for j in range(4)], [f"img 2 cap {j}" for j in range(4)]]
    info = tree["info"]
    coco = {"annotations": [{"image_id": int(info["cocoId"][5]), "caption": " a dog "},
                            {"image_id": int(info["cocoId"][5]), "caption": "a brown dog"}]}  # fmt: skip
    (tmp_path / "captions_train2017.json").write_text(json.dumps(coco))
    assert nsd.load_captions(tmp_path / "captions_train2017.json", [5], stim_info=info) == [["a dog", "a brown dog"]]


def _expected_split(tree: dict) -> dict:
    """Straight from the definition: per trial, image id and split; average betas / 300 per image."""
    d, mask = tree["design"], tree["mask"]
    trials = np.concatenate([b[mask].T for b in tree["betas"]]).astype(np.float64) / 300.0  # [24, V]
    groups: dict[str, dict[int, list[int]]] = {"train": {}, "test": {}}
    for k, m in enumerate(d.masterordering):
        img = int(d.subjectim[0, m - 1]) - 1
        groups["train" if m > 1000 else "test"].setdefault(img, []).append(k)
    out = {}
    for name, g in groups.items():
        ids = sorted(g)
        out[name] = np.stack([trials[g[i]].mean(axis=0) for i in ids])
        out[f"{name}_ids"] = np.array(ids)
        out[f"{name}_repeats"] = np.array([len(g[i]) for i in ids])
    return out


def test_brain_diffuser_split_nifti_hdf5_and_cache(tree: dict, tmp_path: Path, monkeypatch) -> None:
    root = tree["paths"].root
    expected = _expected_split(tree)
    assert sorted(expected["train_repeats"]) == [2, 2, 3, 3, 3, 3] and sorted(expected["test_repeats"]) == [2, 3, 3]
    kw = {"sessions": SESSIONS, "trials_per_session": TRIALS, "cache_dir": tmp_path / "cache"}
    a = nsd.load_nsd_split(root, 1, fmt="nifti", **kw)
    b = nsd.load_nsd_split(root, 1, fmt="hdf5", **kw)
    for split in (a, b):
        for key, value in expected.items():
            np.testing.assert_allclose(getattr(split, key), value, rtol=1e-6, atol=1e-6, err_msg=key)
    monkeypatch.setattr(nsd, "read_session_betas", lambda *a, **k: pytest.fail("the cache was not used"))
    c = nsd.load_nsd_split(root, 1, fmt="nifti", **kw)
    np.testing.assert_array_equal(c.train, a.train)
    np.testing.assert_array_equal(c.test_ids, a.test_ids)


def test_split_errors(tree: dict, tmp_path: Path) -> None:
    root, paths = tree["paths"].root, tree["paths"]
    paths.betas(3).unlink()
    with pytest.raises(FileNotFoundError, match=r"betas_session03\.nii\.gz"):
        nsd.load_nsd_split(root, 1, sessions=SESSIONS, trials_per_session=TRIALS, cache=False)
    with pytest.raises(ValueError, match="trials requested"):
        nsd.load_nsd_split(root, 1, sessions=5, trials_per_session=TRIALS, cache=False)
    small = np.zeros((4, 4, 3), np.int16)
    small[0, 0, 0] = 1
    nib.save(nib.Nifti1Image(small, np.eye(4)), paths.roi())  # a mask from another grid
    with pytest.raises(ValueError, match=r"betas_session01\.hdf5.*\(4, 4, 3\) mask"):
        nsd.load_nsd_split(root, 1, sessions=2, fmt="hdf5", trials_per_session=TRIALS, cache=False)
    with pytest.raises(FileNotFoundError, match="NSD not found"):
        nsd.load_nsd_split(tmp_path / "nowhere", 1)


def test_zscore_uses_train_statistics() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(3.0, 2.0, size=(50, 4)).astype(np.float32)
    test = rng.normal(3.0, 2.0, size=(10, 4)).astype(np.float32)
    ztr, zte = nsd.zscore_train_test(train, test)
    np.testing.assert_allclose(ztr.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(ztr.std(0, ddof=1), 1, atol=1e-5)
    np.testing.assert_allclose(zte, (test - train.mean(0)) / train.std(0, ddof=1), rtol=1e-5)
    assert abs(zte.mean()) > 1e-3  # test statistics are not used
