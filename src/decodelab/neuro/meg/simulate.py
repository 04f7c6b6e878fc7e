"""Simulated THINGS-MEG: epochs of several subjects on the CTF-275 layout from image features.

A known, time-resolved linear forward model turns two feature sets of each image into sensor
signals::

    meg[s, trial, c, t] = early(t) * (z_low[img]  @ P_low[s])[c]
                        + late(t)  * (z_high[img] @ P_high[s])[c]  + noise[s, trial, c, t] / snr

- ``z_low`` / ``z_high``: the caller's low-level and semantic features of each image (e.g. pixel
  statistics and a classifier embedding of Fashion-MNIST or shapes-world images), z-scored over images;
- ``early(t)`` / ``late(t)``: Gaussian time courses peaking at ``early_latency`` (visual, ~0.1 s)
  and ``late_latency`` (semantic, ~0.4 s);
- ``P_low[s]`` / ``P_high[s]``: per-subject spatial patterns (one per feature), each a sum of
  Gaussian blobs on the 2-D CTF-275 layout centred on occipital sensors (early) or on occipital and
  temporal sensors (late); every subject draws its own blobs, so the subject mixing differs while
  the regions are shared. Each pattern matrix is scaled so that its component's signal has unit
  standard deviation per sensor at its peak;
- ``noise``: spatially correlated sources (smooth blobs with AR(1) time courses) plus white sensor
  noise, unit standard deviation per sensor; ``snr`` is the ratio of the late component's
  single-trial signal std to the noise std at the peak.

The default ``snr`` is a placeholder, **not calibrated**: the issue asks for a single-trial SNR that
puts a linear decoder's top-5 retrieval on 200 averaged test images at about 5-15%, which has to be
measured with the linear baseline.

The output is what the loader reads: one ``preprocessed_P{n}-epo.fif`` per subject (the official
derivative's name and metadata columns: ``trial_type``, ``things_image_nr``, ``things_category_nr``,
``session_nr``, ``image_path``) holding -0.5..1.0 s epochs at 120 Hz, so
``read_preprocessed_epochs(path, tmin=-0.5, expected_sfreq=120)`` returns the decoder's 181-sample
window directly; ``simulation.json`` records the configuration and ``simulation_truth.npz`` the
time courses and patterns.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from decodelab.datasets.things_meg import (
    DECODER_SFREQ,
    DECODER_TMAX,
    DECODER_TMIN,
    EXCLUDED_CHANNELS,
    ctf275_channel_names,
    ctf275_sensor_positions,
)

__all__ = ["TESLA", "MegSimulation", "MegSimulationConfig", "simulate_things_meg", "zscore_columns"]

TESLA = 1e-13  # written amplitudes: about the size of evoked fields in Tesla
_CHUNK = 256  # trials simulated at once (bounds the float64 temporaries)


@dataclass
class MegSimulationConfig:
    """Sizes, timing and noise of :func:`simulate_things_meg`.

    Attributes:
        n_subjects: subjects (one file each).
        n_test_images: the last ``n_test_images`` images form the test set (THINGS-MEG: 200).
        n_sessions: each test image is shown once per session (THINGS-MEG: 12).
        n_train_repeats: presentations of each training image (THINGS-MEG: 1).
        early_latency, early_width, late_latency, late_width: the two Gaussian time courses (s).
        snr: late component's signal std / noise std per sensor at the peak (not calibrated).
        early_gain: early component's std relative to the late one's.
        n_blobs: Gaussian blobs per spatial pattern; blob_width: their width (layout units, 0..1).
        n_noise_sources, noise_ar, white_noise: correlated noise sources, their AR(1) coefficient,
            and the white sensor noise's share of the noise variance.
        channels: MEG channels (default: CTF-275 without ``MRO11``).
        seed: everything random derives from it.
    """

    n_subjects: int = 4
    n_test_images: int = 200
    n_sessions: int = 12
    n_train_repeats: int = 1
    early_latency: float = 0.1
    early_width: float = 0.03
    late_latency: float = 0.4
    late_width: float = 0.08
    snr: float = 0.1
    early_gain: float = 1.0
    n_blobs: int = 3
    blob_width: float = 0.08
    n_noise_sources: int = 30
    noise_ar: float = 0.9
    white_noise: float = 0.3
    channels: tuple[str, ...] | None = None
    seed: int = 0


@dataclass
class MegSimulation:
    """What :func:`simulate_things_meg` wrote: the epoch files and the ground truth."""

    files: list[Path]
    times: np.ndarray
    early: np.ndarray  # [T]
    late: np.ndarray  # [T]
    patterns_low: list[np.ndarray] = field(default_factory=list)  # per subject [F_low, C]
    patterns_high: list[np.ndarray] = field(default_factory=list)  # per subject [F_high, C]
    ch_names: list[str] = field(default_factory=list)
    noise_mix: list[np.ndarray] = field(default_factory=list)  # per subject [n_noise_sources, C]


def _gauss(times: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((times - mu) / sigma) ** 2)


def _blob_patterns(rng, pos: np.ndarray, n: int, centres_from: np.ndarray, n_blobs: int, width: float) -> np.ndarray:
    """``[n, C]`` spatial patterns, each a signed sum of Gaussian blobs centred on sensors in ``centres_from``."""
    centres = pos[rng.choice(centres_from, size=(n, n_blobs))]  # [n, B, 2]
    d2 = ((pos[None, None, :, :] - centres[:, :, None, :]) ** 2).sum(-1)  # [n, B, C]
    weights = rng.normal(size=(n, n_blobs, 1))
    return (weights * np.exp(-d2 / (2 * width**2))).sum(1)


def zscore_columns(x: np.ndarray) -> np.ndarray:
    """Each column to mean 0 and sd 1 (a constant column is only centred); how the forward model scales its features."""
    sd = x.std(0, keepdims=True)
    return (x - x.mean(0, keepdims=True)) / np.where(sd > 0, sd, 1)


def _info(ch_names: Sequence[str], sfreq: float):
    import mne
    from mne.io.constants import FIFF

    info = mne.create_info([f"{c}-1609" for c in ch_names], sfreq, "mag")
    with info._unlock():
        for ch in info["chs"]:
            ch["coil_type"] = FIFF.FIFFV_COIL_CTF_GRAD
    return info


def simulate_things_meg(
    out_dir: str | Path,
    low_features: np.ndarray,
    high_features: np.ndarray,
    *,
    concepts: Sequence[str] | None = None,
    config: MegSimulationConfig | None = None,
) -> MegSimulation:
    """Write simulated THINGS-MEG epochs (one ``preprocessed_P{n}-epo.fif`` per subject) into ``out_dir``.

    Args:
        out_dir: created if needed; existing simulation files are overwritten.
        low_features: ``[N_img, F_low]`` low-level features of each image.
        high_features: ``[N_img, F_high]`` semantic features of each image.
        concepts: ``N_img`` concept names (image ``i`` is THINGS image number ``i + 1``); the concept
            number is the concept's index in sorted order, plus 1. Default: ``"image{i}"``.
        config: sizes, timing and noise.

    Returns:
        The files and the ground truth of the forward model.
    """
    import mne
    import pandas as pd

    cfg = config or MegSimulationConfig()
    low, high = np.asarray(low_features, np.float64), np.asarray(high_features, np.float64)
    n_img = len(low)
    if low.ndim != 2 or high.ndim != 2 or len(high) != n_img:
        raise ValueError(f"features must be [N_img, F] with the same N_img, got {low.shape} and {high.shape}")
    if not 0 < cfg.n_test_images < n_img:
        raise ValueError(f"n_test_images must be in (0, {n_img}), got {cfg.n_test_images}")
    concepts = list(concepts) if concepts is not None else [f"image{i}" for i in range(n_img)]
    if len(concepts) != n_img:
        raise ValueError(f"{len(concepts)} concepts for {n_img} images")
    concept_nr = {c: i + 1 for i, c in enumerate(sorted(set(concepts)))}

    ch_names = list(cfg.channels) if cfg.channels else [c for c in ctf275_channel_names() if c not in EXCLUDED_CHANNELS]
    pos = ctf275_sensor_positions(ch_names)
    region = np.array([c[2] for c in ch_names])  # MLO11 -> 'O'
    occipital = np.flatnonzero(region == "O")
    occ_temp = np.flatnonzero(np.isin(region, ["O", "T"]))
    if occipital.size == 0 or occ_temp.size == 0:
        raise ValueError("the channel set has no occipital (M?O..) / temporal (M?T..) sensors for the patterns")
    times = np.round(np.arange(DECODER_TMIN, DECODER_TMAX + 1e-9, 1 / DECODER_SFREQ), 9)
    early = _gauss(times, cfg.early_latency, cfg.early_width)
    late = _gauss(times, cfg.late_latency, cfg.late_width)
    z_low, z_high = zscore_columns(low), zscore_columns(high)

    n_train = n_img - cfg.n_test_images
    train_imgs = np.repeat(np.arange(n_train), cfg.n_train_repeats)
    test_imgs = np.tile(np.arange(n_train, n_img), cfg.n_sessions)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sim = MegSimulation(files=[], times=times, early=early, late=late, ch_names=ch_names)
    for s in range(cfg.n_subjects):
        rng = np.random.default_rng([cfg.seed, s])
        p_low = _blob_patterns(rng, pos, low.shape[1], occipital, cfg.n_blobs, cfg.blob_width)
        p_high = _blob_patterns(rng, pos, high.shape[1], occ_temp, cfg.n_blobs, cfg.blob_width)
        p_low *= cfg.early_gain / np.sqrt(((z_low @ p_low) ** 2).mean())  # unit std per sensor (on average)
        p_high /= np.sqrt(((z_high @ p_high) ** 2).mean())
        sim.patterns_low.append(p_low)
        sim.patterns_high.append(p_high)

        order = rng.permutation(np.concatenate([train_imgs, test_imgs]))
        n = len(order)
        noise_mix = _blob_patterns(rng, pos, cfg.n_noise_sources, np.arange(len(pos)), cfg.n_blobs, 2 * cfg.blob_width)
        sim.noise_mix.append(noise_mix)
        data = np.empty((n, len(ch_names), len(times)), dtype=np.float32)  # [n, C, T], float32 like the files
        for lo in range(0, n, _CHUNK):
            rows = order[lo : lo + _CHUNK]
            signal = (z_low[rows] @ p_low)[:, :, None] * early + (z_high[rows] @ p_high)[:, :, None] * late
            noise = _noise(rng, len(rows), noise_mix, len(times), cfg)
            data[lo : lo + _CHUNK] = (signal + noise / cfg.snr) * TESLA

        is_test = order >= n_train
        session = np.empty(n, dtype=np.int64)
        session[~is_test] = rng.integers(1, cfg.n_sessions + 1, size=int((~is_test).sum()))
        for img in range(n_train, n_img):  # each test image once per session
            rows = np.flatnonzero(order == img)
            session[rows] = np.arange(len(rows)) % cfg.n_sessions + 1
        meta = pd.DataFrame(
            {
                "trial_type": np.where(is_test, "test", "exp"),
                "things_image_nr": order + 1,
                "things_category_nr": [concept_nr[concepts[i]] for i in order],
                "session_nr": session,
                "image_path": [f"images_meg/{concepts[i]}/{concepts[i]}_{i + 1:05d}.jpg" for i in order],
            }
        )
        events = np.c_[np.arange(n) * len(times) * 2, np.zeros(n, int), np.ones(n, int)]
        epochs = mne.EpochsArray(
            data, _info(ch_names, DECODER_SFREQ), events=events, tmin=times[0], metadata=meta, verbose="error"
        )
        path = out_dir / f"preprocessed_P{s + 1}-epo.fif"
        epochs.save(path, overwrite=True, verbose="error")
        sim.files.append(path)

    (out_dir / "simulation.json").write_text(
        json.dumps({"config": asdict(cfg), "n_images": n_img, "files": [p.name for p in sim.files]}, indent=2)
    )
    np.savez(
        out_dir / "simulation_truth.npz",
        times=times,
        early=early,
        late=late,
        **{f"patterns_low_P{s + 1}": p for s, p in enumerate(sim.patterns_low)},
        **{f"patterns_high_P{s + 1}": p for s, p in enumerate(sim.patterns_high)},
        **{f"noise_mix_P{s + 1}": m for s, m in enumerate(sim.noise_mix)},
    )
    return sim


def _noise(rng, n: int, mix: np.ndarray, n_times: int, cfg: MegSimulationConfig) -> np.ndarray:
    """``[n, C, T]`` noise, unit std per sensor: AR(1) sources on the patterns ``mix`` ``[K, C]`` + white noise."""
    c = mix.shape[1]
    src = rng.normal(size=(n, cfg.n_noise_sources, n_times))
    a = cfg.noise_ar
    for t in range(1, n_times):  # stationary AR(1) with unit variance
        src[..., t] = a * src[..., t - 1] + np.sqrt(1 - a * a) * src[..., t]
    corr = np.einsum("nkt,kc->nct", src, mix)
    corr /= np.sqrt((mix**2).sum(0).mean())  # unit variance per sensor on average
    w = cfg.white_noise
    return np.sqrt(1 - w) * corr + np.sqrt(w) * rng.normal(size=(n, c, n_times))
