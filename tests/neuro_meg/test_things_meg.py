"""THINGS-MEG loader on tiny recordings written in the real formats (CTF .ds / FIF raw + BIDS events, -epo.fif).

mne reads CTF ``.ds`` folders but cannot write them, so :func:`write_ctf_ds` below writes the two
files ``mne.io.read_raw_ctf`` needs: ``<name>.res4`` (the binary header: run information, channel
names, per-channel gains and coil geometry, G1BR compensation records) and ``<name>.meg4``
(``MEG41CP`` then big-endian int32 samples, channel-major, one trial). The layout is the one mne's
reader parses (``mne/io/ctf/res4.py``, ``ctf.py``), read for facts; a test checks that mne reads the
samples back exactly. Optional files (``.hc`` head coils, ``.infods``, ``MarkerFile.mrk``) are left
out: mne skips them, and the loader does not use them.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import mne
import numpy as np
import pandas as pd
import pytest
from mne.io.constants import FIFF

from decodelab.datasets import things_meg
from decodelab.datasets.things_meg import (
    MegEpochs,
    RobustChannelScaler,
    ThingsMegRun,
    average_repeats,
    baseline_correct,
    ctf275_channel_names,
    ctf275_sensor_positions,
    find_things_meg_runs,
    image_concepts,
    load_things_meg,
    make_splits,
    read_events_tsv,
    read_preprocessed_epochs,
    read_things_meg_run,
)

SF = 240.0  # tiny recordings: 240 Hz (THINGS-MEG raw is 1200 Hz); 240 -> 120 is the same code path
SENSORS = [n for n in ctf275_channel_names() if n not in ("MRO11", "MLF25", "MRF43")][:272]  # 272 like ds004212
LATENCY, PLATEAU = 0.05, 0.2  # s: channel 0 carries a plateau of height image_nr at 0.05..0.25 s


def _info(names: list[str], sfreq: float) -> mne.Info:
    full = [f"{n}-1609" for n in names]
    info = mne.create_info(full + ["BG1-1609", "UPPT001"], sfreq, ["mag"] * len(names) + ["ref_meg", "stim"])
    with info._unlock():
        for ch in info["chs"][: len(names)]:
            ch["coil_type"] = FIFF.FIFFV_COIL_CTF_GRAD  # as mne reads a CTF-275 axial gradiometer
    return info


_COIL = np.dtype(
    [("pos", ">f8", 3), ("d0", ">f8"), ("norm", ">f8", 3), ("d1", ">f8"), ("turns", ">i2"), ("d2", ">i4"),
     ("d3", ">i2"), ("area", ">f8")]
)  # fmt: skip
_CHANNEL = np.dtype(
    [("sensor_type_index", ">i2"), ("original_run_no", ">i2"), ("coil_type", ">i4"), ("proper_gain", ">f8"),
     ("qgain", ">f8"), ("io_gain", ">f8"), ("io_offset", ">f8"), ("num_coils", ">i2"), ("grad_order_no", ">i2"),
     ("d0", ">i4"), ("coil", _COIL, 8), ("head_coil", _COIL, 8)]
)  # fmt: skip
_COMP = np.dtype(
    [("sensor_name", "S32"), ("coeff_type", ">i4"), ("d0", ">i4"), ("ncoeff", ">i2"), ("sensors", "S31", 50),
     ("coeffs", ">f8", 50)]
)  # fmt: skip
_CTF_TYPES = {"meg": 5, "ref": 0, "stim": 11}  # CTF sensor_type_index
_QGAIN = 1e6  # samples are stored as round(value * qgain) int32


def write_ctf_ds(ds: Path, names: list[str], kinds: list[str], data: np.ndarray, sfreq: float) -> None:
    """Write a minimal CTF ``.ds`` folder: ``names``, ``kinds`` (meg/ref/stim), ``data`` ``[C, S]``."""
    ds.mkdir(parents=True)
    nchan, nsamp = data.shape
    b = io.BytesIO()

    def text(value: str, n: int) -> None:
        b.write(value.encode()[:n].ljust(n, b"\0"))

    def pack(fmt: str, *values) -> None:
        b.write(struct.pack(">" + fmt, *values))

    def align(n: int) -> None:
        b.write(b"\0" * (-b.tell() % n))

    text("MEG41RS", 8)
    for n in (256, 256, 256):  # application, origin, description
        text("decodelab test", n)
    pack("h", 1)  # averages
    text("10:00:00", 255)
    text("01/02/2020", 255)
    pack("i", nsamp), pack("h", nchan), align(8)
    pack("dd", sfreq, nsamp / sfreq), pack("h", 1), align(4)  # rate, epoch length, trials
    pack("i", 0), pack("hh", 1, 0), align(4)  # pre-trigger points, trials done, display
    pack("i", 1), b.write(b"\0" * 10), pack("h", 0), align(4)  # save trials, triggers, trigger mode
    pack("i", 0), pack("h", 0), align(4)  # accept/reject, run-time display
    pack("i", 0), align(4)  # zero head
    pack("ii", 0, 0)  # artifact mode, padding
    for n in (32, 256, 32, 32, 32, 32, 60):  # run name/title, instruments, descriptor, subject, operator, sensors
        text("", n)
    align(4)
    pack("i", 0)  # no run description
    b.write(b"\0" * (1844 - b.tell()))  # the channel section starts at byte 1844
    pack("h", 0)  # no filters
    for name in names:
        text(name, 32)
    chs = np.zeros(nchan, _CHANNEL)
    pos = {c: p for c, p in zip(ctf275_channel_names(), ctf275_sensor_positions(ctf275_channel_names()))}
    for i, (name, kind) in enumerate(zip(names, kinds)):
        chs[i]["sensor_type_index"] = _CTF_TYPES[kind]
        chs[i]["proper_gain"], chs[i]["qgain"], chs[i]["io_gain"] = 1.0, _QGAIN, 1.0
        if kind != "stim":  # a coil 10 cm over the layout position (cm), axial gradiometers have two
            x, y = (pos.get(name.split("-")[0], np.array([0.5, 0.5])) - 0.5) * 20
            r = np.array([x, y, 10.0])
            chs[i]["num_coils"] = 2 if kind == "meg" else 1
            chs[i]["coil"]["pos"][:2] = [r, r * 1.5]
            chs[i]["coil"]["norm"][:2] = [r / np.linalg.norm(r), -r / np.linalg.norm(r)]
            chs[i]["coil"]["turns"][:2] = 1
            chs[i]["coil"]["area"][:2] = 1.0
    b.write(chs.tobytes())
    meg = [n for n, k in zip(names, kinds) if k == "meg"]
    ref = next(n for n, k in zip(names, kinds) if k == "ref")
    comp = np.zeros(len(meg), _COMP)  # one G1BR record per sensor (zero weights): mne needs the table
    comp["sensor_name"] = [n.encode() for n in meg]
    comp["coeff_type"], comp["ncoeff"] = 0x47314252, 1
    comp["sensors"][:, 0] = ref.encode()
    pack("h", len(comp))
    b.write(comp.tobytes())
    stem = ds.name[: -len(".ds")]
    (ds / f"{stem}.res4").write_bytes(b.getvalue())
    (ds / f"{stem}.meg4").write_bytes(b"MEG41CP\0" + np.round(data * _QGAIN).astype(">i4").tobytes())


def _write_run(
    folder: Path, stem: str, events: pd.DataFrame, *, names=SENSORS, sfreq=SF, seconds=None, rng=None, fmt="ds"
) -> Path:
    rng = rng or np.random.default_rng(0)
    seconds = seconds or float(events["onset"].max() + 2.0)
    n = int(seconds * sfreq)
    x = rng.normal(size=(len(names) + 2, n)) * 1e-3
    for onset, value in zip(events["onset"], events["value"]):
        s = int(round((onset + LATENCY) * sfreq))
        x[0, s : s + int(PLATEAU * sfreq)] += 0.0 if pd.isna(value) else float(value)
    x[len(names) + 1] = 0.0
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}_meg.{fmt}"
    if fmt == "ds":
        full = [f"{n}-1609" for n in names] + ["BG1-1609", "UPPT001"]
        write_ctf_ds(path, full, ["meg"] * len(names) + ["ref", "stim"], x, sfreq)
    else:
        mne.io.RawArray(x, _info(list(names), sfreq), verbose="error").save(path, overwrite=True, verbose="error")
    events.to_csv(folder / f"{stem}_events.tsv", sep="\t", index=False, na_rep="n/a")
    return path


def _events(session: int, n_exp: int = 6) -> pd.DataFrame:
    rows = []
    t = 1.0
    for i in range(n_exp):  # each training image once
        img = 10 * session + i + 1
        rows.append(("exp", img, img % 3 + 1, f"images_meg/concept{img % 3 + 1}/concept{img % 3 + 1}_{i:02d}b.jpg"))
    for img in (1, 2):  # the two test images, once per session
        rows.append(("test", img, img + 100, f"images_test_meg/probe{img}_13s.jpg"))
    rows.append(("catch", np.nan, np.nan, "n/a"))
    out = []
    for kind, img, cat, path in rows:
        out.append(
            {
                "onset": t,
                "duration": 0.5,
                "value": img,
                "trial_type": kind,
                "things_category_nr": cat,
                "image_path": path,
            }
        )
        t += 1.5
    return pd.DataFrame(out)


@pytest.fixture(scope="module")
def bids_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds004212")
    for ses in (1, 2):
        folder = root / "sub-BIGMEG1" / f"ses-{ses:02d}" / "meg"
        _write_run(folder, f"sub-BIGMEG1_ses-{ses:02d}_task-main_run-01", _events(ses), rng=np.random.default_rng(ses))
    return root


def test_ctf275_layout_positions_are_normalised_and_matched_by_base_name():
    names = ctf275_channel_names()
    assert len(names) == 275 and "MRO11" in names and names[0] == "MLC11"
    pos = ctf275_sensor_positions(["MLC11-1609", "MRC11", "MZO01"])
    assert pos.shape == (3, 2)
    all_pos = ctf275_sensor_positions(names)
    np.testing.assert_allclose(all_pos.min(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(all_pos.max(0), 1.0, atol=1e-12)
    assert pos[0, 0] < pos[1, 0]  # left central sensor is left of its right twin
    with pytest.raises(ValueError, match="EEG001"):
        ctf275_sensor_positions(["EEG001"])


def test_bids_round_trip_window_rate_alignment_and_metadata(bids_root):
    runs = find_things_meg_runs(bids_root, 1)
    assert [r.session for r in runs] == [1, 2] and runs[0].events.name.endswith("_events.tsv")
    ep = load_things_meg(bids_root, "BIGMEG1", expected_sfreq=SF)
    assert ep.data.shape == (2 * 9, 272, 181) and ep.data.dtype == np.float32
    assert ep.sfreq == 120.0 and ep.times[0] == pytest.approx(-0.5) and ep.times[-1] == pytest.approx(1.0)
    assert ep.ch_names == SENSORS and "MRO11" not in ep.ch_names
    meta = ep.metadata
    assert list(meta["trial_type"][:9]) == ["exp"] * 6 + ["test"] * 2 + ["catch"]
    assert meta["image_nr"].iloc[8] == -1 and meta["image_nr"].iloc[0] == 11
    assert meta["concept"].iloc[0] == "concept3" and meta["concept"].iloc[6] == "probe1"
    assert set(meta["session"]) == {1, 2} and meta["source"].iloc[0].endswith("run-01_meg.ds")
    # channel 0 holds a plateau of height image_nr during 0.05..0.25 s: alignment of the onset
    x = baseline_correct(ep.data, ep.times)
    during = (ep.times > 0.1) & (ep.times < 0.2)
    after = (ep.times > 0.4) & (ep.times < 0.9)
    expected = meta["image_nr"].clip(lower=0).to_numpy()
    np.testing.assert_allclose(x[:, 0, during].mean(-1), expected, atol=0.05)
    np.testing.assert_allclose(x[:, 0, after].mean(-1), 0.0, atol=0.05)


def test_fif_and_ds_recordings_give_the_same_epochs(tmp_path, monkeypatch):
    ev = _events(1, n_exp=2)
    for fmt in ("ds", "fif"):
        folder = tmp_path / fmt / "sub-BIGMEG1" / "ses-01" / "meg"
        _write_run(folder, "sub-BIGMEG1_ses-01_task-main_run-01", ev, rng=np.random.default_rng(5), fmt=fmt)
    raw = mne.io.read_raw_ctf(next((tmp_path / "ds").glob("**/*_meg.ds")), verbose="error")
    assert raw.get_channel_types()[-2:] == ["ref_meg", "stim"] and raw.info["sfreq"] == SF
    ds = load_things_meg(tmp_path / "ds", 1, expected_sfreq=SF)
    fif = load_things_meg(tmp_path / "fif", 1, expected_sfreq=SF)
    assert ds.ch_names == fif.ch_names == SENSORS and ds.metadata["source"].iloc[0].endswith("_meg.ds")
    np.testing.assert_allclose(ds.data, fif.data, atol=2e-6)  # int32 quantisation of the .ds (1e-6)
    assert np.abs(ds.data[:, 0]).max() > 1.0  # the plateau is there
    monkeypatch.setattr(things_meg, "_CHUNK_TRIALS", 2)  # trials cut in several chunks: the same epochs
    np.testing.assert_array_equal(load_things_meg(tmp_path / "ds", 1, expected_sfreq=SF).data, ds.data)


def test_errors_name_the_file(tmp_path, bids_root):
    run = find_things_meg_runs(bids_root, 1)[0]
    with pytest.raises(ValueError, match=r"run-01_meg\.ds.*240\.0 Hz, expected 1200\.0 Hz"):
        read_things_meg_run(run)  # THINGS-MEG raw is 1200 Hz
    with pytest.raises(ValueError, match=r"run-01_meg\.ds.*missing \['MRO11'\]"):
        read_things_meg_run(run, expected_sfreq=SF, channels=SENSORS + ["MRO11"])
    # a non-CTF sensor set
    folder = tmp_path / "sub-BIGMEG2" / "ses-01" / "meg"
    _write_run(folder, "sub-BIGMEG2_ses-01_task-main_run-01", _events(1), names=["MEG0111", "MEG0121"])
    with pytest.raises(ValueError, match=r"sub-BIGMEG2_ses-01_task-main_run-01_meg\.ds.*not CTF-275"):
        load_things_meg(tmp_path, 2, expected_sfreq=SF)
    # a second session with other sensors or another rate
    folder = tmp_path / "sub-BIGMEG3"
    _write_run(folder / "ses-01" / "meg", "sub-BIGMEG3_ses-01_task-main_run-01", _events(1))
    _write_run(folder / "ses-02" / "meg", "sub-BIGMEG3_ses-02_task-main_run-01", _events(2), names=SENSORS[:-1])
    with pytest.raises(ValueError, match=r"ses-02_task-main_run-01_meg\.ds: channel set differs.*missing"):
        load_things_meg(tmp_path, 3, expected_sfreq=SF)
    with pytest.raises(ValueError, match=r"ses-01_task-main_run-01_meg\.ds.*1200\.0 Hz"):
        load_things_meg(tmp_path, 3)
    folder = tmp_path / "sub-BIGMEG4"
    _write_run(folder / "ses-01" / "meg", "sub-BIGMEG4_ses-01_task-main_run-01", _events(1))
    _write_run(folder / "ses-02" / "meg", "sub-BIGMEG4_ses-02_task-main_run-01", _events(2), sfreq=480.0)
    with pytest.raises(ValueError, match=r"sub-BIGMEG4_ses-02_task-main_run-01_meg\.ds: sampling rate is 480"):
        load_things_meg(tmp_path, 4, expected_sfreq=None)  # the first run fixes the rate
    # missing events file; events beyond the recording; events without the columns
    (folder / "ses-01" / "meg" / "sub-BIGMEG4_ses-01_task-main_run-01_events.tsv").unlink()
    with pytest.raises(FileNotFoundError, match=r"sub-BIGMEG4_ses-01_task-main_run-01_meg\.ds.*events"):
        find_things_meg_runs(tmp_path, 4)
    ev = _events(1)
    path = _write_run(tmp_path / "x", "sub-X_ses-01_task-main_run-01", ev, seconds=5.0)
    ev.to_csv(path.with_name("sub-X_ses-01_task-main_run-01_events.tsv"), sep="\t", index=False)
    bad_run = ThingsMegRun(path, path.with_name("sub-X_ses-01_task-main_run-01_events.tsv"), "X", 1, 1)
    with pytest.raises(ValueError, match=r"sub-X_ses-01_task-main_run-01_events\.tsv.*do not fit"):
        read_things_meg_run(bad_run, expected_sfreq=SF)
    ev.drop(columns="value").to_csv(bad_run.events, sep="\t", index=False)
    with pytest.raises(ValueError, match=r"sub-X_ses-01_task-main_run-01_events\.tsv: missing column\(s\) \['value'\]"):
        read_events_tsv(bad_run.events)
    with pytest.raises(FileNotFoundError, match="sub-BIGMEG9"):
        find_things_meg_runs(tmp_path, 9)


def test_preprocessed_epochs_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    n, sf = 12, 200.0
    info = _info(SENSORS, sf)
    times = np.arange(-0.1, 1.3 + 1e-9, 1 / sf)
    x = 0.1 * rng.normal(size=(n, len(SENSORS) + 2, len(times)))
    x[:, 5] += np.sin(2 * np.pi * 3 * times)  # a slow component survives resampling unchanged
    meta = pd.DataFrame(
        {
            "trial_type": ["exp"] * 8 + ["test"] * 4,
            "things_image_nr": [1, 2, 3, 4, 5, 6, 7, 8, 100, 100, 101, 101],
            "things_category_nr": [1, 1, 2, 2, 3, 3, 4, 4, 9, 9, 7, 7],
            "session_nr": [1] * 6 + [2] * 6,
            "image_path": [f"images_meg/c{i}/c{i}_01b.jpg" for i in range(12)],
        }
    )
    events = np.c_[np.arange(n) * 400, np.zeros(n, int), np.ones(n, int)]
    epochs = mne.EpochsArray(x, info, events=events, tmin=-0.1, metadata=meta, verbose="error")
    path = tmp_path / "preprocessed_P1-epo.fif"
    epochs.save(path, verbose="error")
    ep = read_preprocessed_epochs(path)
    assert ep.data.shape == (12, 272, 133) and ep.times[0] == pytest.approx(-0.1) and ep.sfreq == 120.0
    assert ep.metadata["subject"].iloc[0] == "BIGMEG1" and list(ep.metadata["session"][:7]) == [1] * 6 + [2]
    inner = (ep.times > 0.05) & (ep.times < 0.95)  # away from the resampling edges
    np.testing.assert_allclose(ep.data[:, 5, inner].mean(0), np.sin(2 * np.pi * 3 * ep.times[inner]), atol=0.08)
    with pytest.raises(ValueError, match=r"preprocessed_P1-epo\.fif.*window -0\.5\.\.1\.0 s is not inside"):
        read_preprocessed_epochs(path, tmin=-0.5)
    with pytest.raises(ValueError, match=r"preprocessed_P1-epo\.fif: sampling rate is 200\.0 Hz, expected 1200"):
        read_preprocessed_epochs(path, expected_sfreq=1200.0)
    with pytest.raises(ValueError, match=r"preprocessed_P1-epo\.fif: channel set differs"):
        read_preprocessed_epochs(path, channels=SENSORS[:10])
    bare = tmp_path / "bare-epo.fif"
    mne.EpochsArray(x, info, events=events, tmin=-0.1, verbose="error").save(bare, verbose="error")
    with pytest.raises(ValueError, match=r"bare-epo\.fif: the epochs have no metadata"):
        read_preprocessed_epochs(bare)
    with pytest.raises(FileNotFoundError, match="preprocessed_P7-epo.fif"):
        read_preprocessed_epochs(tmp_path / "preprocessed_P7-epo.fif")


def test_splits_scale_on_train_clamp_and_average_test(bids_root):
    ep = load_things_meg(bids_root, 1, expected_sfreq=SF)
    splits = make_splits(ep)
    train, test = splits.train, splits.test
    assert len(train) == 12 and (train.n_trials == 1).all()
    assert list(test.image_nr) == [1, 2] and list(test.n_trials) == [2, 2]  # two sessions averaged
    assert list(test.concept) == ["probe1", "probe2"] and list(test.category_nr) == [101, 102]
    assert np.abs(train.data).max() <= 20.0 and np.abs(test.data).max() <= 20.0
    # the scaler saw only training trials: its medians are the training medians
    x = baseline_correct(ep.data, ep.times)
    is_train = (ep.metadata["trial_type"] == "exp").to_numpy()
    med = np.median(x[is_train].transpose(1, 0, 2).reshape(272, -1), axis=1)
    scaler = splits.scalers["BIGMEG1"]
    np.testing.assert_allclose(scaler.center_, med, rtol=1e-5, atol=1e-9)
    # the test rows are the mean of the scaled single trials
    single = scaler.transform(x[(ep.metadata["image_nr"] == 2).to_numpy()])
    np.testing.assert_allclose(test.data[1], single.mean(0), rtol=1e-5, atol=1e-5)
    # a second subject recorded with 10x the gain is scaled by its own statistics
    other = MegEpochs(10 * ep.data, ep.times, ep.ch_names, ep.metadata.assign(subject="BIGMEG2"), ep.sfreq)
    both = make_splits(MegEpochs.concatenate([ep, other]))
    assert sorted(both.scalers) == ["BIGMEG1", "BIGMEG2"] and len(both.test) == 4
    np.testing.assert_allclose(both.train.data[12:], both.train.data[:12], atol=1e-4)
    np.testing.assert_allclose(both.scalers["BIGMEG2"].scale_, 10 * both.scalers["BIGMEG1"].scale_, rtol=1e-5)
    with pytest.raises(ValueError, match="need both 'exp'"):
        make_splits(MegEpochs(ep.data[:3], ep.times, ep.ch_names, ep.metadata.iloc[:3], ep.sfreq))


def test_robust_scaler_and_clamp_known_values():
    x = np.zeros((2, 2, 5))
    x[:, 0] = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 1000]]  # median 4.5, IQR 6.75-2.25 = 4.5
    x[:, 1] = 3.0  # constant channel: scale 1, centre 3
    s = RobustChannelScaler(clamp=20.0).fit(x)
    np.testing.assert_allclose(s.center_, [4.5, 3.0])
    np.testing.assert_allclose(s.scale_, [4.5, 1.0])
    y = s.transform(x)
    assert y[1, 0, -1] == 20.0 and y[0, 0, 0] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="not fitted"):
        RobustChannelScaler().transform(x)


def test_baseline_and_average_repeats_known_values():
    times = np.array([-0.2, -0.1, 0.0, 0.1])
    x = np.array([[[1.0, 3.0, 2.0, 10.0]]])
    np.testing.assert_allclose(baseline_correct(x, times)[0, 0], [-1, 1, 0, 8])
    means, keys, counts = average_repeats(np.array([[1.0], [3.0], [10.0]]), np.array([7, 7, 2]))
    assert list(keys) == [2, 7] and list(counts) == [1, 2]
    np.testing.assert_allclose(means[:, 0], [10.0, 2.0])


def test_image_concepts_mapping_and_conflicts(bids_root):
    ep = load_things_meg(bids_root, 1, expected_sfreq=SF)
    table = image_concepts(ep.metadata)
    assert table.loc[11, "concept"] == "concept3" and table.loc[11, "category_nr"] == 3
    assert table.loc[1, "concept"] == "probe1" and -1 not in table.index
    broken = pd.concat([ep.metadata, ep.metadata.iloc[[0]].assign(category_nr=5)], ignore_index=True)
    with pytest.raises(ValueError, match=r"more than one concept: \[11\]"):
        image_concepts(broken)
