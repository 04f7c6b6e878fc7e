"""THINGS-MEG (Hebart et al. 2023, OpenNeuro ds004212) for MEG-to-image decoding.

Two on-disk sources, both read with ``mne``:

- the **BIDS tree**: ``sub-BIGMEG{n}/ses-{nn}/meg/sub-BIGMEG{n}_ses-{nn}_task-main_run-{nn}_meg.ds``
  (CTF-275 recordings, 1200 Hz) next to ``..._events.tsv`` (``onset`` in seconds, ``value`` = THINGS
  image number, ``trial_type`` in ``exp`` / ``test`` / ``catch``, ``things_category_nr``,
  ``image_path``). BIDS also allows ``_meg.fif`` recordings; both are read the same way
  (:func:`find_things_meg_runs`, :func:`read_things_meg_run`, :func:`load_things_meg`);
- the **official preprocessed epochs** ``preprocessed_P{n}-epo.fif`` written by THINGS-data's
  ``MEG/step1_preprocessing.py`` (0.1-40 Hz, -0.1..1.3 s, baseline z-score, 200 Hz, channel
  ``MRO11`` dropped, metadata from ``sample_attributes_P{n}.csv``) (:func:`read_preprocessed_epochs`).

Both give a :class:`MegEpochs` (trials x channels x times at the decoder's rate, with a normalised
metadata table). :func:`make_splits` then applies the decoder's preprocessing (Benchetrit, Banville &
King, ICLR 2024, as in brainmagick's defaults): baseline correction on the pre-stimulus window,
per-channel robust scaling (median / inter-quartile range, scikit-learn's ``RobustScaler``) fitted on
the training trials only, clamping at +-20, and the split: ``exp`` trials train (single trials),
``test`` trials (200 images shown 12 times) averaged per image, ``catch`` trials dropped.

The decoder window is -0.5..1.0 s at 120 Hz, i.e. 181 samples, cut from the raw recordings. The
official preprocessed epochs start at -0.1 s, so from them the window is at most -0.1..1.0 s
(133 samples); asking for more raises an error instead of padding silently.

Resampling uses ``scipy.signal.resample_poly`` (a zero-phase polyphase anti-aliasing filter) on a
window padded by ``RESAMPLE_PAD`` seconds on both sides, cut afterwards; on these small arrays it is
far faster than ``mne.Epochs.resample`` and keeps the samples on the 1/120 s grid anchored at the
stimulus onset.

Sensor positions for the brain module come from the CTF-275 layout that ships with mne
(``mne/channels/data/layouts/CTF-275.lout``), matched by the channel's base name (``MLC11`` of
``MLC11-1609``): nothing is downloaded.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "CLAMP",
    "DECODER_SFREQ",
    "DECODER_TMAX",
    "DECODER_TMIN",
    "EXCLUDED_CHANNELS",
    "RAW_SFREQ",
    "MegEpochs",
    "MegSplit",
    "RobustChannelScaler",
    "ThingsMegRun",
    "ThingsMegSplits",
    "average_repeats",
    "baseline_correct",
    "base_channel_name",
    "ctf275_channel_names",
    "ctf275_sensor_positions",
    "find_things_meg_runs",
    "image_concepts",
    "load_things_meg",
    "make_splits",
    "read_events_tsv",
    "read_preprocessed_epochs",
    "read_things_meg_run",
]

#: Sampling rate of the CTF recordings of ds004212 (Hz).
RAW_SFREQ = 1200.0
#: Sampling rate of the official preprocessed epochs (Hz).
PREPROCESSED_SFREQ = 200.0
#: The decoder's window and rate: -0.5..1.0 s at 120 Hz = 181 samples.
DECODER_TMIN, DECODER_TMAX, DECODER_SFREQ = -0.5, 1.0, 120.0
#: Robust-scaled values are clamped to +-CLAMP (brainmagick ``norm.max_scale``).
CLAMP = 20.0
#: Channels the official script drops (a malfunctioning sensor, by experimenter notes).
EXCLUDED_CHANNELS: tuple[str, ...] = ("MRO11",)
#: Padding (s) kept on both sides of a window while resampling, cut afterwards.
RESAMPLE_PAD = 0.1
#: Trials cut and resampled at once from a recording.
_CHUNK_TRIALS = 64

_RECORDING_SUFFIXES = ("_meg.ds", "_meg.fif")
_TRIAL_TYPES = ("exp", "test", "catch")
_CATCH_VALUE = 999999  # THINGS-data replaces missing image numbers (catch trials) with this


# ----------------------------------------------------------------------------------------- channels
def base_channel_name(name: str) -> str:
    """CTF channel name without the system suffix: ``"MLC11-1609"`` -> ``"MLC11"``."""
    return name.split("-")[0].strip()


@functools.lru_cache(maxsize=1)
def _ctf275_layout() -> tuple[tuple[str, ...], np.ndarray]:
    import mne

    layout = mne.channels.read_layout("CTF-275")
    names = tuple(base_channel_name(n) for n in layout.names)
    centres = layout.pos[:, :2] + layout.pos[:, 2:4] / 2  # box corner + half size = sensor centre
    return names, centres.astype(np.float64)


def ctf275_channel_names() -> list[str]:
    """The 275 base channel names of mne's shipped CTF-275 layout, in layout order."""
    return list(_ctf275_layout()[0])


def ctf275_sensor_positions(ch_names: Sequence[str]) -> np.ndarray:
    """2-D sensor positions ``[C, 2]`` from the CTF-275 layout, scaled to ``[0, 1]`` over the helmet.

    The scaling is fixed by all 275 sensors (not by the channels asked for), so the same sensor has
    the same position in every recording.

    Raises:
        ValueError: a channel is not a CTF-275 sensor.
    """
    names, centres = _ctf275_layout()
    index = {n: i for i, n in enumerate(names)}
    unknown = [c for c in ch_names if base_channel_name(c) not in index]
    if unknown:
        raise ValueError(f"channels not in the CTF-275 layout: {unknown[:10]}{' ...' if len(unknown) > 10 else ''}")
    lo, hi = centres.min(0), centres.max(0)
    pos = (centres - lo) / (hi - lo)
    return pos[[index[base_channel_name(c)] for c in ch_names]]


def _check_channels(names: list[str], source: Path, channels: Sequence[str] | None) -> list[int]:
    """Indices into ``names`` (base names) selecting ``channels`` in that order; errors name ``source``."""
    known = set(_ctf275_layout()[0])
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"{source}: {len(unknown)} MEG channel(s) are not CTF-275 sensors ({unknown[:8]}); "
            "THINGS-MEG is a CTF-275 recording: is this the right file?"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"{source}: duplicate MEG channel names after removing the system suffix")
    if channels is None:
        return list(range(len(names)))
    wanted = [base_channel_name(c) for c in channels]
    missing = sorted(set(wanted) - set(names))
    extra = sorted(set(names) - set(wanted))
    if missing or extra:
        raise ValueError(
            f"{source}: channel set differs from the expected one: missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected {extra[:8]}{' ...' if len(extra) > 8 else ''} "
            "(all recordings of one decoder must have the same sensors)"
        )
    where = {n: i for i, n in enumerate(names)}
    return [where[w] for w in wanted]


def _meg_picks(info, exclude: Iterable[str]) -> tuple[list[int], list[str]]:
    """Indices of the MEG sensor channels (``mag``, not the reference coils) and their base names."""
    import mne

    picks = mne.pick_types(info, meg="mag", ref_meg=False, exclude=[])
    drop = {base_channel_name(e) for e in exclude}
    picks = [int(p) for p in picks if base_channel_name(info["ch_names"][p]) not in drop]
    return picks, [base_channel_name(info["ch_names"][p]) for p in picks]


# ------------------------------------------------------------------------------------------ records
@dataclass
class MegEpochs:
    """Epochs of one or more recordings at the decoder's rate.

    Attributes:
        data: ``[N, C, T]`` float32, in the file's units (Tesla for raw CTF data).
        times: ``[T]`` seconds relative to the stimulus onset.
        ch_names: ``C`` base CTF channel names (``MLC11``), the same order in every row.
        metadata: ``N`` rows with ``trial_type`` (``exp``/``test``/``catch``), ``image_nr``
            (THINGS image number, -1 for catch trials), ``category_nr`` (THINGS concept number, -1
            when unknown), ``concept`` (concept name, ``""`` when unknown), ``subject``, ``session``,
            ``run`` and ``source`` (the file the trial came from).
        sfreq: sampling rate of ``data`` (Hz).
    """

    data: np.ndarray
    times: np.ndarray
    ch_names: list[str]
    metadata: pd.DataFrame
    sfreq: float

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __post_init__(self) -> None:
        if self.data.ndim != 3 or self.data.shape[1:] != (len(self.ch_names), len(self.times)):
            raise ValueError(
                f"data {self.data.shape} does not match {len(self.ch_names)} channels x {len(self.times)} times"
            )
        if len(self.metadata) != self.data.shape[0]:
            raise ValueError(f"{len(self.metadata)} metadata rows for {self.data.shape[0]} epochs")

    @property
    def positions(self) -> np.ndarray:
        """``[C, 2]`` sensor positions in ``[0, 1]`` (:func:`ctf275_sensor_positions`)."""
        return ctf275_sensor_positions(self.ch_names)

    @staticmethod
    def concatenate(parts: Sequence[MegEpochs]) -> MegEpochs:
        """Stack epochs with the same channels, times and rate (errors name the differing source)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        first = parts[0]
        for p in parts[1:]:
            src = p.metadata["source"].iloc[0] if len(p) else "<empty>"
            if p.ch_names != first.ch_names:
                raise ValueError(f"{src}: channels differ from {first.metadata['source'].iloc[0]}")
            if p.sfreq != first.sfreq or not np.allclose(p.times, first.times):
                raise ValueError(f"{src}: sampling rate or epoch times differ from the first recording")
        return MegEpochs(
            data=np.concatenate([p.data for p in parts]),
            times=first.times,
            ch_names=first.ch_names,
            metadata=pd.concat([p.metadata for p in parts], ignore_index=True),
            sfreq=first.sfreq,
        )


@dataclass(frozen=True)
class ThingsMegRun:
    """One BIDS recording and its events table."""

    recording: Path
    events: Path
    subject: str
    session: int | None
    run: int | None


def _subject_label(subject: str | int) -> str:
    s = str(subject)
    s = s[4:] if s.startswith("sub-") else s
    return f"BIGMEG{s}" if s.isdigit() else s


def _entity(name: str, key: str) -> int | None:
    m = re.search(rf"(?:^|_){key}-(\d+)", name)
    return int(m.group(1)) if m else None


def find_things_meg_runs(
    root: str | Path, subject: str | int, sessions: Iterable[int] | None = None
) -> list[ThingsMegRun]:
    """BIDS recordings of one subject (``*_meg.ds`` or ``*_meg.fif``) paired with their ``*_events.tsv``.

    Args:
        root: the BIDS root (the folder holding ``sub-BIGMEG1/``, ...).
        subject: ``1``, ``"BIGMEG1"`` or ``"sub-BIGMEG1"``.
        sessions: session numbers to keep (default: all).

    Raises:
        FileNotFoundError: no subject folder, no recording, or a recording without its events file.
    """
    label = _subject_label(subject)
    sub_dir = Path(root) / f"sub-{label}"
    if not sub_dir.is_dir():
        raise FileNotFoundError(
            f"{sub_dir} does not exist: expected the THINGS-MEG BIDS tree (OpenNeuro ds004212) under {root}"
        )
    keep = None if sessions is None else {int(s) for s in sessions}
    runs = []
    for path in sorted(sub_dir.glob("**/meg/*")):
        suffix = next((s for s in _RECORDING_SUFFIXES if path.name.endswith(s)), None)
        if suffix is None or not path.name.startswith("sub-"):
            continue
        session = _entity(path.name, "ses")
        if keep is not None and session not in keep:
            continue
        events = path.with_name(path.name[: -len(suffix)] + "_events.tsv")
        if not events.is_file():
            raise FileNotFoundError(f"{path}: its events file {events.name} is missing (expected next to it)")
        runs.append(ThingsMegRun(path, events, label, session, _entity(path.name, "run")))
    if not runs:
        raise FileNotFoundError(f"no *_meg.ds / *_meg.fif recordings under {sub_dir} (sessions={sessions})")
    return runs


def _concept_from_path(path: object) -> str:
    """``"images_meg/aardvark/aardvark_01b.jpg"`` -> ``"aardvark"`` (exemplar suffix removed)."""
    if not isinstance(path, str) or not path:
        return ""
    stem = Path(path.replace("\\", "/")).stem
    return re.sub(r"_\d+[a-z]*$", "", stem)


def _normalise_metadata(table: pd.DataFrame, source: Path, image_col: str) -> pd.DataFrame:
    """The :class:`MegEpochs` metadata columns from an events table or a THINGS attributes table."""
    if "trial_type" not in table.columns:
        raise ValueError(
            f"{source}: no 'trial_type' column (columns: {list(table.columns)}); THINGS-MEG marks each trial "
            "as exp / test / catch there, which the train/test split needs"
        )
    trial_type = table["trial_type"].astype(str).str.strip()
    bad = sorted(set(trial_type) - set(_TRIAL_TYPES))
    if bad:
        raise ValueError(f"{source}: unknown trial_type values {bad[:5]} (expected {list(_TRIAL_TYPES)})")
    image = pd.to_numeric(table[image_col], errors="coerce")
    image = image.where(image != _CATCH_VALUE)
    missing = image.isna() & (trial_type != "catch")
    if missing.any():
        raise ValueError(f"{source}: {int(missing.sum())} exp/test trial(s) without an image number in '{image_col}'")
    category = pd.to_numeric(table.get("things_category_nr", pd.Series(np.nan, index=table.index)), errors="coerce")
    path_col = next((c for c in ("image_path", "file_path", "image_name") if c in table.columns), None)
    concept = table[path_col].map(_concept_from_path) if path_col else pd.Series("", index=table.index)
    return pd.DataFrame(
        {
            "trial_type": trial_type.to_numpy(),
            "image_nr": image.fillna(-1).astype(np.int64).to_numpy(),
            "category_nr": category.fillna(-1).astype(np.int64).to_numpy(),
            "concept": concept.fillna("").astype(str).to_numpy(),
        }
    )


def read_events_tsv(path: str | Path) -> pd.DataFrame:
    """A BIDS ``*_events.tsv`` of THINGS-MEG (``n/a`` read as missing); checks the columns the loader needs.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: no ``onset`` or ``value`` column, no rows, or non-finite onsets.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"events file {path} does not exist")
    table = pd.read_csv(path, sep="\t", na_values=["n/a"])
    need = [c for c in ("onset", "value") if c not in table.columns]
    if need:
        raise ValueError(f"{path}: missing column(s) {need} (columns: {list(table.columns)})")
    if table.empty:
        raise ValueError(f"{path}: no events")
    onset = pd.to_numeric(table["onset"], errors="coerce")
    if onset.isna().any() or not np.isfinite(onset.to_numpy()).all():
        raise ValueError(f"{path}: onsets must be finite numbers (seconds from the recording's first sample)")
    return table


# ------------------------------------------------------------------------------------- resampling
def _resample_window(
    data: np.ndarray, t0: float, sfreq_in: float, sfreq_out: float, tmin: float, tmax: float, source: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``[..., S]`` (first sample at ``t0`` s) to ``sfreq_out`` and cut ``tmin..tmax`` inclusive."""
    from scipy.signal import resample_poly

    ratio = Fraction(sfreq_out / sfreq_in).limit_denominator(1000)
    if abs(float(ratio) - sfreq_out / sfreq_in) > 1e-9:
        raise ValueError(f"{source}: cannot resample {sfreq_in} Hz to {sfreq_out} Hz by a rational factor")
    if abs(t0 * sfreq_out - round(t0 * sfreq_out)) > 1e-6:
        raise ValueError(
            f"{source}: the epoch starts at {t0} s, which is not on the {sfreq_out} Hz grid anchored at the onset"
        )
    if ratio == 1:
        out = data
    else:
        out = resample_poly(data, ratio.numerator, ratio.denominator, axis=-1, padtype="line")
    times = t0 + np.arange(out.shape[-1]) / sfreq_out
    n = int(round((tmax - tmin) * sfreq_out)) + 1
    start = int(round((tmin - t0) * sfreq_out))
    if start < 0 or start + n > out.shape[-1]:
        raise ValueError(
            f"{source}: the window {tmin}..{tmax} s is not inside the epochs ({times[0]:.3f}..{times[-1]:.3f} s)"
        )
    return out[..., start : start + n].astype(np.float32), np.round(times[start : start + n], 9)


def _check_sfreq(sfreq: float, expected: float | None, source: Path) -> None:
    if expected is not None and abs(sfreq - expected) > 1e-6:
        raise ValueError(f"{source}: sampling rate is {sfreq} Hz, expected {expected} Hz")


# ---------------------------------------------------------------------------------------- loading
def _read_raw(path: Path):
    import mne

    if not path.exists():
        raise FileNotFoundError(f"recording {path} does not exist")
    if path.name.endswith(".ds"):
        return mne.io.read_raw_ctf(path, preload=False, verbose="error")
    if path.name.endswith(".fif"):
        return mne.io.read_raw_fif(path, preload=False, verbose="error")
    raise ValueError(f"{path}: not a CTF .ds folder or a .fif file")


def read_things_meg_run(
    run: ThingsMegRun,
    *,
    tmin: float = DECODER_TMIN,
    tmax: float = DECODER_TMAX,
    sfreq: float = DECODER_SFREQ,
    expected_sfreq: float | None = RAW_SFREQ,
    channels: Sequence[str] | None = None,
    exclude: Iterable[str] = EXCLUDED_CHANNELS,
) -> MegEpochs:
    """Epochs of one BIDS recording around its events' onsets, resampled to ``sfreq``.

    Args:
        run: from :func:`find_things_meg_runs`.
        tmin, tmax: the window (s) around each onset; both ends are included (-0.5..1.0 at 120 Hz
            is 181 samples).
        sfreq: output rate (Hz).
        expected_sfreq: the recording's rate must be this (``None``: any).
        channels: the expected MEG channels (base names) in the output order; by default the
            recording's own, checked against the CTF-275 layout.
        exclude: channels dropped first (the official script drops ``MRO11``).

    Raises:
        ValueError: wrong rate, channel set or events (the message names the file).
    """
    raw = _read_raw(run.recording)
    sf = float(raw.info["sfreq"])
    _check_sfreq(sf, expected_sfreq, run.recording)
    picks, names = _meg_picks(raw.info, exclude)
    if not picks:
        raise ValueError(f"{run.recording}: no MEG sensor channels")
    order = _check_channels(names, run.recording, channels)
    picks = [picks[i] for i in order]
    names = [names[i] for i in order]
    events = read_events_tsv(run.events)
    meta = _normalise_metadata(events, run.events, "value")

    t0 = np.floor((tmin - RESAMPLE_PAD) * sfreq) / sfreq  # on the output grid, before the window
    t1 = tmax + RESAMPLE_PAD
    lo, hi = int(round(t0 * sf)), int(round(t1 * sf))
    if abs(lo - t0 * sf) > 1e-6:
        raise ValueError(f"{run.recording}: {sf} Hz and {sfreq} Hz do not share the sample grid of the window")
    onsets = np.round(events["onset"].to_numpy(float) * sf).astype(np.int64)  # samples from the first one
    n_times = raw.n_times
    bad = np.flatnonzero((onsets + lo < 0) | (onsets + hi >= n_times))
    if bad.size:
        raise ValueError(
            f"{run.events}: {bad.size} event(s) (first at onset {events['onset'].iloc[bad[0]]} s) do not fit a "
            f"{t0:.3f}..{t1:.3f} s window inside {run.recording.name} ({n_times / sf:.3f} s): wrong events file?"
        )
    parts = []
    for start in range(0, len(onsets), _CHUNK_TRIALS):  # bounded memory: a CTF run is ~1 GB as float64
        chunk = onsets[start : start + _CHUNK_TRIALS]
        first, last = int(chunk.min()) + lo, int(chunk.max()) + hi + 1
        span = raw.get_data(picks=picks, start=first, stop=last)  # [C, S_chunk]
        idx = chunk[:, None] - first + np.arange(lo, hi + 1)[None, :]  # [n, W]
        windows = span[:, idx].transpose(1, 0, 2)  # [n, C, W]
        parts.append(_resample_window(windows, lo / sf, sf, sfreq, tmin, tmax, run.recording))
    data, times = np.concatenate([p[0] for p in parts]), parts[0][1]
    meta["subject"] = run.subject
    meta["session"] = -1 if run.session is None else run.session
    meta["run"] = -1 if run.run is None else run.run
    meta["source"] = str(run.recording)
    return MegEpochs(data=data, times=times, ch_names=names, metadata=meta, sfreq=float(sfreq))


def load_things_meg(
    root: str | Path,
    subject: str | int,
    *,
    sessions: Iterable[int] | None = None,
    tmin: float = DECODER_TMIN,
    tmax: float = DECODER_TMAX,
    sfreq: float = DECODER_SFREQ,
    expected_sfreq: float | None = RAW_SFREQ,
    channels: Sequence[str] | None = None,
    exclude: Iterable[str] = EXCLUDED_CHANNELS,
) -> MegEpochs:
    """All runs of one subject from the BIDS tree, concatenated (same channels and rate in every run).

    The first run fixes the channel set when ``channels`` is not given; a later run with other
    sensors or another rate raises an error naming it. Arguments as in :func:`read_things_meg_run`.
    """
    parts = []
    for run in find_things_meg_runs(root, subject, sessions):
        part = read_things_meg_run(
            run, tmin=tmin, tmax=tmax, sfreq=sfreq, expected_sfreq=expected_sfreq, channels=channels, exclude=exclude
        )
        channels = channels if channels is not None else part.ch_names
        if expected_sfreq is None:  # the first run fixes the rate of the others
            expected_sfreq = float(_read_raw(run.recording).info["sfreq"])
        parts.append(part)
    return MegEpochs.concatenate(parts)


def read_preprocessed_epochs(
    path: str | Path,
    *,
    tmin: float = -0.1,
    tmax: float = DECODER_TMAX,
    sfreq: float = DECODER_SFREQ,
    expected_sfreq: float | None = PREPROCESSED_SFREQ,
    channels: Sequence[str] | None = None,
    subject: str | int | None = None,
) -> MegEpochs:
    """The official ``preprocessed_P{n}-epo.fif`` (or any THINGS epochs FIF with its metadata), resampled.

    The file's metadata (``sample_attributes_P{n}.csv``) must have ``trial_type`` and
    ``things_image_nr``; ``things_category_nr`` and ``image_path`` are used when present.

    Args:
        path: the ``-epo.fif`` file.
        tmin, tmax: the window (s); the official epochs start at -0.1 s, so ``tmin`` cannot be
            earlier (the decoder's -0.5 s needs the raw BIDS recordings).
        sfreq: output rate (Hz).
        expected_sfreq: the file's rate must be this (``None``: any).
        channels: the expected MEG channels (base names) in output order.
        subject: stored in the metadata (default: the ``P{n}`` of the file name, else the stem).

    Raises:
        FileNotFoundError: missing file. ValueError: wrong rate, channels, window or metadata.
    """
    import mne

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"preprocessed epochs {path} do not exist (THINGS-MEG derivatives/preprocessed/)")
    epochs = mne.read_epochs(path, preload=True, verbose="error")
    sf = float(epochs.info["sfreq"])
    _check_sfreq(sf, expected_sfreq, path)
    if epochs.metadata is None:
        raise ValueError(f"{path}: the epochs have no metadata (THINGS attributes with trial_type, things_image_nr)")
    if "things_image_nr" not in epochs.metadata.columns:
        raise ValueError(f"{path}: metadata has no 'things_image_nr' column (columns: {list(epochs.metadata.columns)})")
    picks, names = _meg_picks(epochs.info, exclude=())
    order = _check_channels(names, path, channels)
    picks = [picks[i] for i in order]
    names = [names[i] for i in order]
    meta = _normalise_metadata(epochs.metadata.reset_index(drop=True), path, "things_image_nr")
    data, times = _resample_window(epochs.get_data(picks=picks), float(epochs.times[0]), sf, sfreq, tmin, tmax, path)
    if subject is None:
        m = re.search(r"P(\d+)", path.name)
        subject = f"BIGMEG{m.group(1)}" if m else path.stem
    meta["subject"] = str(subject)
    meta["session"] = epochs.metadata["session_nr"].to_numpy() if "session_nr" in epochs.metadata else -1
    meta["run"] = -1
    meta["source"] = str(path)
    return MegEpochs(data=data, times=times, ch_names=names, metadata=meta, sfreq=float(sfreq))


# ---------------------------------------------------------------------------------- preprocessing
def baseline_correct(
    data: np.ndarray, times: np.ndarray, window: tuple[float | None, float | None] = (None, 0.0)
) -> np.ndarray:
    """Subtract each epoch's per-channel mean over ``window`` (``None`` = the epoch's edge): ``[N, C, T]``."""
    lo = times[0] if window[0] is None else window[0]
    hi = times[-1] if window[1] is None else window[1]
    mask = (times >= lo - 1e-9) & (times <= hi + 1e-9)
    if not mask.any():
        raise ValueError(f"baseline window {window} holds no sample of the epoch ({times[0]:.3f}..{times[-1]:.3f} s)")
    return data - data[..., mask].mean(axis=-1, keepdims=True)


class RobustChannelScaler:
    """Per-channel robust scaling fitted on training epochs, then clamping (scikit-learn conventions).

    ``x -> clip((x - median_c) / IQR_c, -clamp, clamp)`` with the median and inter-quartile range of
    channel ``c`` over all training trials and times (scikit-learn's ``RobustScaler`` with quantiles
    25/75 computes them).

    Args:
        clamp: bound of the scaled values (``None``: no clamping).
        quantile_range: the quantiles (percent) whose distance is the scale.
    """

    def __init__(self, clamp: float | None = CLAMP, quantile_range: tuple[float, float] = (25.0, 75.0)) -> None:
        self.clamp = clamp
        self.quantile_range = quantile_range

    def fit(self, data: np.ndarray) -> RobustChannelScaler:
        """Fit on ``[N, C, T]`` training epochs; sets ``center_`` and ``scale_`` (``[C]``)."""
        from sklearn.preprocessing import RobustScaler

        if data.ndim != 3 or data.shape[0] == 0:
            raise ValueError(f"expected training epochs [N, C, T] with N > 0, got shape {data.shape}")
        flat = data.transpose(0, 2, 1).reshape(-1, data.shape[1])  # [N*T, C]
        scaler = RobustScaler(quantile_range=self.quantile_range).fit(flat)
        self.center_ = scaler.center_.astype(np.float64)
        self.scale_ = scaler.scale_.astype(np.float64)  # a constant channel gets scale 1 (sklearn)
        return self

    def transform(self, data: np.ndarray) -> np.ndarray:
        """Scale (and clamp) ``[N, C, T]`` epochs with the fitted statistics."""
        if not hasattr(self, "center_"):
            raise ValueError("RobustChannelScaler is not fitted: call fit(train_epochs) first")
        if data.shape[1] != self.center_.shape[0]:
            raise ValueError(f"fitted on {self.center_.shape[0]} channels, got {data.shape[1]}")
        out = (data - self.center_[None, :, None]) / self.scale_[None, :, None]
        if self.clamp is not None:
            out = np.clip(out, -self.clamp, self.clamp)
        return out.astype(np.float32)

    def fit_transform(self, data: np.ndarray) -> np.ndarray:
        return self.fit(data).transform(data)


@dataclass
class MegSplit:
    """Decoder-ready epochs of one split.

    Attributes:
        data: ``[N, C, T]`` float32, baseline-corrected, robust-scaled and clamped.
        image_nr, category_nr: ``[N]`` THINGS image / concept numbers.
        concept: ``[N]`` concept names (``""`` when unknown).
        n_trials: ``[N]`` trials averaged into each row (1 for single trials).
        subject: ``[N]`` subject labels.
        times, ch_names: as in :class:`MegEpochs`.
    """

    data: np.ndarray
    image_nr: np.ndarray
    category_nr: np.ndarray
    concept: np.ndarray
    n_trials: np.ndarray
    subject: np.ndarray
    times: np.ndarray
    ch_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.data.shape[0])


@dataclass
class ThingsMegSplits:
    """``train`` (single ``exp`` trials), ``test`` (``test`` trials averaged per image), a scaler per subject."""

    train: MegSplit
    test: MegSplit
    scalers: dict[str, RobustChannelScaler]


def average_repeats(data: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average the rows sharing a key: ``(means [K, ...], keys [K] sorted, counts [K])``."""
    uniq, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    sums = np.zeros((len(uniq),) + data.shape[1:], dtype=np.float64)
    np.add.at(sums, inverse, data)
    return (sums / counts.reshape((-1,) + (1,) * (data.ndim - 1))).astype(np.float32), uniq, counts


def make_splits(
    epochs: MegEpochs,
    *,
    baseline: tuple[float | None, float | None] | None = (None, 0.0),
    clamp: float | None = CLAMP,
    average_test: bool = True,
) -> ThingsMegSplits:
    """The decoder's preprocessing and split: baseline, robust scaling fitted on train, clamp, test averaging.

    Each subject gets its own scaler, fitted on its training trials. Test trials are scaled and
    clamped one by one (as training trials are), then averaged per subject and image.

    Raises:
        ValueError: no training or no test trial.
    """
    meta = epochs.metadata
    sources = sorted(set(meta["source"]))[:3]
    kind = meta["trial_type"].to_numpy()
    data = epochs.data if baseline is None else baseline_correct(epochs.data, epochs.times, baseline)
    is_train, is_test = kind == "exp", kind == "test"
    if not is_train.any() or not is_test.any():
        raise ValueError(
            f"{sources}: need both 'exp' (train) and 'test' trials, got {int(is_train.sum())} and {int(is_test.sum())}"
        )
    subjects = meta["subject"].astype(str).to_numpy()
    scaled = np.empty(data.shape, dtype=np.float32)
    scalers: dict[str, RobustChannelScaler] = {}
    for subject in sorted(set(subjects)):
        mine = subjects == subject
        if not (mine & is_train).any():
            raise ValueError(f"subject {subject}: no 'exp' (train) trials to fit its scaler on")
        scalers[subject] = RobustChannelScaler(clamp=clamp).fit(data[mine & is_train])
        scaled[mine] = scalers[subject].transform(data[mine])

    def rows(mask: np.ndarray) -> dict[str, np.ndarray]:
        m = meta[mask]
        return {
            "image_nr": m["image_nr"].to_numpy(),
            "category_nr": m["category_nr"].to_numpy(),
            "concept": m["concept"].to_numpy(dtype=object),
            "subject": m["subject"].astype(str).to_numpy(dtype=object),
        }

    tr = rows(is_train)
    train = MegSplit(
        data=scaled[is_train],
        n_trials=np.ones(int(is_train.sum()), dtype=np.int64),
        times=epochs.times,
        ch_names=list(epochs.ch_names),
        **tr,
    )
    te = rows(is_test)
    test_data = scaled[is_test]
    n_trials = np.ones(len(test_data), dtype=np.int64)
    if average_test:
        keys = np.array([f"{s}\x00{i:012d}" for s, i in zip(te["subject"], te["image_nr"])])
        test_data, uniq, n_trials = average_repeats(test_data, keys)
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        pick = np.array([first[k] for k in uniq])
        te = {k: v[pick] for k, v in te.items()}
    test = MegSplit(data=test_data, n_trials=n_trials, times=epochs.times, ch_names=list(epochs.ch_names), **te)
    return ThingsMegSplits(train=train, test=test, scalers=scalers)


def image_concepts(metadata: pd.DataFrame) -> pd.DataFrame:
    """Image -> concept table (``image_nr`` index; ``category_nr``, ``concept``) from epochs' metadata.

    Raises:
        ValueError: one image is labelled with two different concepts.
    """
    m = metadata[metadata["image_nr"] >= 0][["image_nr", "category_nr", "concept"]]
    conflicts = m.groupby("image_nr")[["category_nr", "concept"]].nunique()
    bad = conflicts[(conflicts > 1).any(axis=1)].index.tolist()
    if bad:
        raise ValueError(f"images with more than one concept: {bad[:10]}")
    return m.drop_duplicates("image_nr").set_index("image_nr").sort_index()
