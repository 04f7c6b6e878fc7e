"""Does stage 2's best-of-N selection help? 2-way identification per selection rule on one fMRI run.

Takes a finished ``decodelab neuro run-fmri`` folder (its ``predictions.npz``) and the simulation it
was fitted on, draws ``--candidates`` stage-2 samples per test image at ``--strength`` exactly as
``run-fmri --candidates N`` does (candidate ``k`` resamples with seed ``k``), and scores, with the
evaluation network (efficientnet-lite0) and a 95% bootstrap interval over test images:

- ``first``: candidate 0 alone (what ``--candidates 1`` keeps);
- ``luminance@S``: the best candidate by correlation between its luminance, average-pooled to
  ``S x S``, and the luminance ridge predicts from the betas (``S = 32`` is ``run-fmri``'s rule);
- ``best-of-n``: the 32 px rule over the first ``n`` candidates;
- ``mbr-S``: minimum-Bayes-risk selection, the candidate most similar (mean correlation) to the
  other candidates in feature space ``S`` — ``pixels``, ``classifier`` (the shipped Fashion-MNIST
  classifier's penultimate features) or ``eval-network`` (efficientnet-lite0 itself: a diagnostic,
  since it selects in the metric's own feature space, though it never sees the seen image);
- ``encoding``: the candidate whose *predicted betas* are most likely under the measured ones, as in
  "Second Sight" (Kneeland et al. 2023): a voxel-wise ridge encoding model (``sqrt`` of the 32 px
  luminance plus a one-hot of the class named in the captions, penalty by leave-one-out CV) is fitted
  on the training images and betas; each candidate's predicted betas (with the class stage 2 decoded)
  are scored by Gaussian log-likelihood with each voxel's training-residual variance
  (``encoding-corr``: by correlation over voxels instead);
- ``oracle``: the best candidate by correlation of *its evaluation-network features with the seen
  image's* — not a method (it looks at the answer), the ceiling of any selection rule;
- ``stage1``: the stage-1 images.

Candidates are kept as ``.npy`` files in ``--cache`` (rerunning skips the ones there). Threads are
pinned and printed.

Usage::

    python benchmarks/fmri_selection.py --data NSD --run RUN --cache CACHE --strength 0.75 --candidates 8 \\
        --threads 1 --json benchmarks/results/neuro_fmri_selection_test300.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from decodelab.eval.brain import bootstrap_ci, row_correlation, two_way_per_reconstruction
from decodelab.neuro.runs import fmri as F


def _git() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def encoding_scores(data, classes: np.ndarray, cands: list[np.ndarray], class_names: list[str]) -> dict:
    """``{"loglik", "corr"}``, each ``[C, M]``: how well each candidate's predicted betas fit the measured ones."""
    from decodelab.neuro.ridge import MultiTargetRidgeCV

    def feats(images: np.ndarray, cls: np.ndarray) -> np.ndarray:
        lum = np.sqrt(np.clip(F.luminance(images).astype(np.float64), 0.0, None))
        return np.concatenate([lum, np.eye(len(class_names))[cls]], 1)

    if (data.train_labels < 0).any():
        raise ValueError(
            "encoding-model selection needs class labels of the training images (stim-info 'label' column)"
        )
    x = feats(data.train_images, data.train_labels)
    mu, sd = x.mean(0), x.std(0) + 1e-8
    model = MultiTargetRidgeCV(alphas=(1.0, 10.0, 100.0, 1e3, 1e4, 1e5)).fit((x - mu) / sd, data.train_x)
    var = (data.train_x - model.predict((x - mu) / sd)).var(0)
    loglik, corr = [], []
    for c in cands:
        pred = model.predict((feats(c, classes) - mu) / sd)
        loglik.append(-(((pred - data.test_x) ** 2) / var).sum(1))
        corr.append(row_correlation(pred, data.test_x, constant="zero"))
    return {"loglik": np.stack(loglik), "corr": np.stack(corr)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the simulated NSD root the run was fitted on")
    p.add_argument("--run", required=True, help="a run-fmri output folder (needs predictions.npz)")
    p.add_argument("--cache", required=True, help="folder for the candidates' images")
    p.add_argument("--subject", type=int, default=1)
    p.add_argument("--strength", type=float, default=0.75)
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    t0 = time.time()
    data = F.load_fmri_data(args.data, args.subject)
    if data.world != "fmnist":
        raise SystemExit(f"{args.data}: the selection study is written for the fmnist world, got {data.world!r}")
    pipe = F._pipeline(data.world, None)
    with np.load(Path(args.run) / F.PREDICTIONS) as z:
        pred = {k: z[k] for k in z.files}
    s2 = F.stage2_inputs(pred, data.world, pipe)  # run-fmri's default rescale, as reconstruct_step makes them
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    cands = []
    for k in range(args.candidates):
        f = cache / f"cand_s{args.strength:g}_{k}.npy"
        if not f.is_file():
            tok = F.partial_resample(pipe, s2.cond, s2.tokens1, args.strength, cond_mask=s2.cond_mask, seed=k)
            np.save(f, F._to_uint8(pipe.tokenizer.decode(tok.to(pipe.device)).cpu()))
            print(f"candidate {k}: {time.time() - t0:.0f} s", flush=True)
        cands.append(np.load(f))
    M = len(data.test_images)
    net = F.lite0_network()
    f_gt = F.network_features(net, data.test_images)
    f_c = np.stack([F.network_features(net, c) for c in cands])  # [C, M, D]

    def two_way(choice: np.ndarray) -> dict:
        wins = two_way_per_reconstruction(f_gt, f_c[choice, np.arange(M)])
        return {"twoway": float(np.mean(wins)), "ci95": bootstrap_ci(wins)}

    def pooled(x: np.ndarray, side: int) -> np.ndarray:
        t = torch.from_numpy(np.asarray(x, np.float32)).view(len(x), 1, F.LUMINANCE_SIDE, F.LUMINANCE_SIDE)
        return torch.nn.functional.adaptive_avg_pool2d(t, side).view(len(x), -1).numpy()

    rows = {"first": two_way(np.zeros(M, dtype=int))}
    for side in (32, 16, 8):
        target = pooled(s2.pred["pixels"], side)
        scores = np.stack([row_correlation(pooled(F.luminance(c), side), target, constant="zero") for c in cands])
        rows[f"luminance@{side}"] = two_way(scores.argmax(0))
        if side == 32:
            for n in sorted({n for n in (2, 4, args.candidates) if n <= args.candidates}):  # best-of-n only for n <= N
                rows[f"best-of-{n}"] = two_way(scores[:n].argmax(0))

    def medoid(feats: np.ndarray) -> np.ndarray:
        """``[C, M, D]`` -> ``[M]``: per image, the candidate with the highest mean correlation to the others."""
        z = feats - feats.mean(-1, keepdims=True)
        z = z / np.linalg.norm(z, axis=-1, keepdims=True).clip(1e-12)
        sim = np.einsum("cmd,kmd->mck", z, z)
        return (sim.sum(-1) - np.einsum("mcc->mc", sim)).argmax(1)

    from decodelab.eval.fmnist import features as classifier_features

    pix = np.stack([np.asarray(c, np.float32).reshape(M, -1) for c in cands])
    rows["mbr-pixels"] = two_way(medoid(pix))
    rows["mbr-classifier"] = two_way(medoid(np.stack([classifier_features(c) for c in cands])))
    rows["mbr-eval-network (diagnostic)"] = two_way(medoid(f_c))
    enc = encoding_scores(data, s2.extra["classes"], cands, pipe.info["class_names"])
    rows["encoding"] = two_way(enc["loglik"].argmax(0))
    rows["encoding-corr"] = two_way(enc["corr"].argmax(0))
    oracle = np.stack([row_correlation(f_c[k], f_gt, constant="zero") for k in range(len(cands))])
    rows["oracle (looks at the seen image)"] = two_way(oracle.argmax(0))
    wins = two_way_per_reconstruction(f_gt, F.network_features(net, s2.stage1))
    rows["stage1"] = {"twoway": float(np.mean(wins)), "ci95": bootstrap_ci(wins)}
    print(f"\n| rule ({args.candidates} candidates, strength {args.strength:g}, {M} images) | 2-way (95% interval) |")
    for name, r in rows.items():
        print(f"| {name} | {r['twoway']:.3f} ({r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}) |")
    if args.json:
        report = {
            "benchmark": "stage-2 best-of-N selection rules, embedded fMRI pipeline (fmnist world)",
            "command": f"python benchmarks/fmri_selection.py --data NSD --run RUN --cache CACHE --strength "
            f"{args.strength:g} --candidates {args.candidates} --threads {args.threads}",
            "git": _git(),
            "threads": torch.get_num_threads(),
            "n_test_images": M,
            "strength": args.strength,
            "candidates": args.candidates,
            "network": "efficientnet-lite0",
            "rows": rows,
            "seconds": round(time.time() - t0, 1),
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
