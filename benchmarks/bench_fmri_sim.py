"""fMRI-to-image decoding on simulated NSD at the calibrated noise and at half / double the noise.

For each noise level: simulate one subject of the Fashion-MNIST world with NSD's training-set size
(``decodelab neuro simulate-fmri``; 8,900 training images, close to subject 1's 8,859 in the
Brain-Diffuser split, 100 shared test images, 3 repeats averaged), then run the embedded two-stage
pipeline (``decodelab neuro run-fmri``: ridge fit, stage 1, stage 2 with best-of-N candidates,
evaluation). Writes ``--json`` (every level's ``results.json`` with the simulation summary and
the commands) and copies the calibrated level's image grid next to it. Threads are pinned and
printed (shared 2-core machines). Each step is resumable: rerunning skips finished levels.

Usage::

    python benchmarks/bench_fmri_sim.py --out runs/bench_fmri --threads 1 \\
        --json benchmarks/results/neuro_fmri_fmnist_nsd.json --grid benchmarks/results/neuro_fmri_fmnist_grid.png
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path

import torch

from decodelab.neuro.runs.fmri import run_fmri
from decodelab.neuro.simulate_fmri import read_simulation, simulate_nsd


def _git() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def run_level(out: Path, noise: float, args: argparse.Namespace) -> dict:
    root, run_dir = out / f"nsd_noise{noise:g}", out / f"run_noise{noise:g}"
    t0 = time.time()
    if not (root / "simulation.json").is_file():
        simulate_nsd(root, (1,), world="fmnist", noise=noise, n_train=args.n_train, n_test=args.n_test,
                     trials_per_session=args.trials_per_session, seed=args.seed)  # fmt: skip
    res = run_fmri(run_dir, root, 1, candidates=args.candidates, select=args.select, seed=args.seed)
    sim = read_simulation(root)
    return {
        "noise": noise,
        "commands": [
            f"decodelab neuro simulate-fmri --out NSD --world fmnist --noise {noise:g} --subjects 1 "
            f"--n-train {args.n_train} --n-test {args.n_test} --trials-per-session {args.trials_per_session}",
            f"decodelab neuro run-fmri --data NSD --out RUN --subject 1 --candidates {args.candidates} "
            f"--select {args.select}",
        ],
        "simulation": {k: sim[k] for k in ("noise", "n_train", "n_test", "n_repeats", "seed")}
        | {"per_subject": sim["per_subject"]},
        "results": res,
        "seconds": round(time.time() - t0, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="work folder (simulations and runs)")
    p.add_argument("--noise", type=float, nargs="+", default=[1.0, 0.5, 2.0])
    p.add_argument("--n-train", type=int, default=8900)
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--trials-per-session", type=int, default=750)
    p.add_argument("--candidates", type=int, default=16)
    p.add_argument("--select", default="pixels", choices=["pixels", "latents"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument("--grid", default=None, help="copy the calibrated (first) level's image grid here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    levels = [run_level(out, n, args) for n in args.noise]
    net = next(k for k in levels[0]["results"]["stage2"] if k.startswith("twoway_") and not k.endswith("_ci95"))
    print("\n| noise | median ncsnr | stage 1 PixCorr / SSIM / 2-way | stage 2 (2-way CI) | shuffled |")
    for lv in levels:
        r = lv["results"]
        row = [f"{r[s]['pixcorr']:.3f} / {r[s]['ssim']:.3f} / {r[s][net]:.3f}" for s in ("stage1", "stage2")]
        lo, hi = r["stage2"].get(f"{net}_ci95", (float("nan"), float("nan")))
        print(f"| x{lv['noise']:g} | {r['ncsnr_median']:.2f} | {row[0]} | {row[1]} ({lo:.3f}-{hi:.3f}) | "
              f"{r['stage2_shuffled']['pixcorr']:.3f} / {r['stage2_shuffled'][net]:.3f} |")  # fmt: skip
    report = {
        "benchmark": "embedded fMRI->image on simulated NSD (fmnist world), subject 1, NSD-sized training set",
        "git": _git(),
        "threads": torch.get_num_threads(),
        "metric_notes": "pixcorr/ssim: MindEye protocol; twoway/corrdist: EfficientNet-Lite0 pooled features "
        "(an offline stand-in for AlexNet/Inception/CLIP); *_shuffled: reconstructions paired with another test "
        "image (fixed derangement). stage 2 keeps the best of N candidates by correlation with the "
        "fMRI-predicted luminance (never the seen image).",
        "levels": levels,
    }
    if args.grid:
        shutil.copyfile(out / f"run_noise{args.noise[0]:g}" / "grid.png", args.grid)
        report["grid"] = Path(args.grid).name
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
