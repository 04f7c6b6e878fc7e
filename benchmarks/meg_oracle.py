"""The ceiling of MEG retrieval on a simulated THINGS-MEG folder: Bayes-optimal identification.

For each subject of a folder written by ``decodelab neuro simulate --modality meg`` (or
``bench_meg_sim.py``), average the test epochs of each of the 200 test images over their repeats and
rank the 200 candidates by their likelihood under the simulation's own forward model and noise
covariance (:mod:`decodelab.neuro.meg.oracle`). The top-5 of that ranking is the highest top-5
retrieval any decoder can reach on those epochs; the script prints it next to the linear baseline
and the brain module of a ``bench_meg_sim.py`` JSON, if given.

It also checks its own noise model: the averaged test epochs minus their true signal, whitened with
the simulation's covariance, must have the same variance in every direction (reported as the
spread of the per-direction variances, ~1 when the model is right).

Usage::

    python benchmarks/meg_oracle.py --data OUT/sim_snr0.06 --bench OUT/bench_meg_sim_0.06.json \\
        --json benchmarks/results/neuro_meg_oracle_snr0.06.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from decodelab.neuro.meg.oracle import NoiseWhitener, identification_ranks, signal_templates
from decodelab.neuro.meg.simulate import TESLA, zscore_columns


def averaged_test_epochs(path: Path, n_train: int) -> tuple[np.ndarray, np.ndarray]:
    """``([N_test, C, T] averaged epochs in simulation units, [N_test] image index)`` of one subject's FIF."""
    import mne

    ep = mne.read_epochs(path, preload=False, verbose="error")
    meta = ep.metadata
    test = np.flatnonzero(meta["trial_type"].to_numpy() == "test")
    img = meta["things_image_nr"].to_numpy()[test] - 1
    images = np.unique(img)
    sums = np.zeros((len(images), len(ep.ch_names), len(ep.times)))
    counts = np.zeros(len(images))
    where = np.searchsorted(images, img)
    for lo in range(0, len(test), 200):  # bounded memory: 200 epochs at a time
        x = ep[test[lo : lo + 200]].get_data(copy=True, verbose="error") / TESLA
        np.add.at(sums, where[lo : lo + 200], x)
        np.add.at(counts, where[lo : lo + 200], 1)
    if images.min() < n_train:
        raise ValueError(f"{path}: test trials show training images")
    return sums / counts[:, None, None], images


def subject_ceiling(folder: Path, s: int, cfg: dict, world, truth) -> dict:
    """Oracle ranks and the noise-model check for subject ``s`` (0-based)."""
    key = f"noise_mix_P{s + 1}"
    if key not in truth:
        raise ValueError(
            f"{folder}/simulation_truth.npz has no {key}: it was written before the noise mixing was saved; "
            "simulate again with the same settings and seed (the epochs come out identical)"
        )
    low, high = zscore_columns(world["low"].astype(np.float64)), zscore_columns(world["semantic"].astype(np.float64))
    n_img = len(low)
    n_train = n_img - int(world["n_test"])
    avg, images = averaged_test_epochs(folder / f"preprocessed_P{s + 1}-epo.fif", n_train)
    templates = signal_templates(
        low[n_train:], high[n_train:], truth[f"patterns_low_P{s + 1}"], truth[f"patterns_high_P{s + 1}"],
        truth["early"], truth["late"],
    )  # fmt: skip
    whitener = NoiseWhitener.from_simulation(
        truth[key], avg.shape[-1], noise_ar=cfg["noise_ar"], white_noise=cfg["white_noise"]
    )
    ranks = identification_ranks(avg, templates, images - n_train, whitener)
    resid = whitener.whiten(avg - templates[images - n_train])
    var = resid.var(0)  # per whitened direction, over the test images
    return {
        "top1": float((ranks < 1).mean()),
        "top5": float((ranks < 5).mean()),
        "median_relative_rank": float(np.median(ranks) / (len(templates) - 1)),
        "n_test": len(ranks),
        "whitened_noise_variance": {
            "median": float(np.median(var)),
            "p1": float(np.percentile(var, 1)),
            "p99": float(np.percentile(var, 99)),
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, type=Path, help="a simulated THINGS-MEG folder")
    p.add_argument("--bench", type=Path, help="bench_meg_sim.py JSON of the same folder (for the comparison)")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args()
    if args.json is not None and args.json.resolve().parent == args.data.resolve():
        raise ValueError("--json must not be written inside the simulation folder (it would sit among its inputs)")
    meta = json.loads((args.data / "simulation.json").read_text())
    cfg = meta["config"]
    world = np.load(args.data / "world.npz")
    truth = np.load(args.data / "simulation_truth.npz")
    per = {f"P{s + 1}": subject_ceiling(args.data, s, cfg, world, truth) for s in range(cfg["n_subjects"])}
    mean = {k: float(np.mean([r[k] for r in per.values()])) for k in ("top1", "top5", "median_relative_rank")}
    out = {"data": args.data.name, "snr": cfg["snr"], "chance_top5": 5 / per["P1"]["n_test"], "oracle": mean,
           "per_subject": per}  # fmt: skip
    if args.bench is not None:
        bench = json.loads(args.bench.read_text())["levels"][f"{cfg['snr']:g}"]
        out["linear_top5"] = bench["linear"]["small.meg_to_image.top5"]
        out["brain_module_top5"] = bench["brain_module"]["small.meg_to_image.top5"]
        out["three_times_linear"] = 3 * out["linear_top5"]
    print(json.dumps(out, indent=1))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
