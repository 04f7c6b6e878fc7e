"""MEG-to-image decoding on simulated THINGS-MEG: brain module vs linear ridge, per noise level.

For each single-trial SNR (the calibrated one and half / double the noise, i.e. 2x / 0.5x the SNR):
simulate the Fashion-MNIST world (``decodelab neuro simulate --modality meg``), train the brain
module through the one loop (``fit-meg``), evaluate it against the per-subject ridge on the 200
averaged test images with the time-resolved curves (``eval-meg``) and reconstruct the test images
with ``fmnist-c2i`` from both decoders (``reconstruct``). Writes ``OUT/bench_meg_sim.json`` and
prints a table. Threads are pinned and printed (shared 2-core machines).

Usage::

    python benchmarks/bench_meg_sim.py --out runs/bench_meg_sim --snr 0.04 0.08 0.02 --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from decodelab.neuro.runs.meg import load_meg_data
from decodelab.neuro.runs.meg_experiment import eval_meg, fit_meg, reconstruct_meg, simulate_meg


def run_level(out: Path, snr: float, args: argparse.Namespace) -> dict:
    sim = out / f"sim_snr{snr:g}"
    t0 = time.time()
    if not (sim / "world.npz").is_file():
        simulate_meg(sim, n_images=args.n_images, n_subjects=args.n_subjects, snr=snr, seed=args.seed)
    t_sim = time.time() - t0
    data = load_meg_data(sim)
    t_load = time.time() - t0 - t_sim
    nn = "_nn" if args.noise_normalization else ""
    run_dir = out / f"brain_module_snr{snr:g}{nn}"
    overrides = {"steps": args.steps, "preset": args.preset, "threads": args.threads, "progress": False,
                 "seed": args.seed, "noise_normalization": args.noise_normalization}  # fmt: skip
    resume = (run_dir / "checkpoint.pt").is_file() and not (run_dir / "final" / "metrics.json").is_file()
    if not (run_dir / "final" / "metrics.json").is_file():
        result = fit_meg(sim, run_dir, overrides=overrides, data=data, resume=resume)
        train_time = result.card.get("train_time_s")
    else:
        train_time = json.loads((run_dir / "card.json").read_text()).get("train_time_s")
    ev_dir = out / f"eval_snr{snr:g}{nn}"
    t1 = time.time()
    res = eval_meg(sim, run_dir, ev_dir, data=data, noise_normalization=args.noise_normalization)
    t_eval = time.time() - t1
    rec = {}
    for source in ("brain_module", "linear"):
        rec[source] = reconstruct_meg(sim, ev_dir, source=source, n_images=args.n_recon, data=data, seed=args.seed)
    return {
        "snr": snr,
        "noise_normalization": args.noise_normalization,
        "linear": res["linear"]["summary"],
        "linear_alphas": res["linear"]["alphas"],
        "brain_module": res["brain_module.clip"]["summary"],
        "brain_module_mse_head": res["brain_module.mse"]["summary"],
        "ratio_top5": res["ratio_top5_brain_module_over_linear"],
        "peak_time": {k: v["peak_time"] for k, v in res["time_resolved"].items()},
        "simulated_latencies": res.get("simulated_latencies"),
        "reconstruction": rec,
        "train_trials": res["train_trials"],
        "wall_s": {
            "simulate": round(t_sim, 1),
            "load": round(t_load, 1),
            "train": train_time,
            "eval": round(t_eval, 1),
        },  # fmt: skip
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/bench_meg_sim")
    p.add_argument("--snr", type=float, nargs="+", default=[0.04, 0.08, 0.02])
    p.add_argument("--n-images", type=int, default=1800)
    p.add_argument("--n-subjects", type=int, default=2)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--preset", default="small")
    p.add_argument("--n-recon", type=int, default=100, help="test images reconstructed per subject")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--noise-normalization",
        action="store_true",
        help="whiten the epochs with the pre-stimulus noise covariance (both decoders)",
    )
    p.add_argument("--tag", default="", help="suffix of the JSON name (parallel runs into one --out)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads: {torch.get_num_threads()}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench_meg_sim{'_' + args.tag if args.tag else ''}.json"
    results = json.loads(path.read_text())["levels"] if path.is_file() else {}
    for snr in args.snr:
        results[f"{snr:g}"] = run_level(out, snr, args)
        path.write_text(json.dumps({"args": vars(args), "levels": results}, indent=2) + "\n")
        r = results[f"{snr:g}"]
        print(json.dumps(r, indent=1), flush=True)
    print(f"\n{'snr':>6} {'chance':>7} {'linear top5':>12} {'brain top5':>11} {'ratio':>6} {'peak sem':>9} "
          f"{'recon acc BM':>12} {'recon acc lin':>13}")  # fmt: skip
    for key, r in results.items():
        print(f"{key:>6} {r['linear']['small.chance.top5']:7.3f} {r['linear']['small.meg_to_image.top5']:12.3f} "
              f"{r['brain_module']['small.meg_to_image.top5']:11.3f} {r['ratio_top5'] or float('nan'):6.2f} "
              f"{r['peak_time']['semantic']:9.3f} "
              f"{r['reconstruction']['brain_module']['reconstruction_class_accuracy']:12.3f} "
              f"{r['reconstruction']['linear']['reconstruction_class_accuracy']:13.3f}")  # fmt: skip
    print(f"results in {path}")


if __name__ == "__main__":
    main()
