"""Multi-target ridge at NSD size: time and peak memory of :class:`decodelab.neuro.MultiTargetRidge`.

The problem is Brain-Diffuser's VDVAE regression for subject 1 with synthetic numbers: 15,724
voxels, 8,859 training samples, 91,168 targets, alpha 5e4, fit and predict 982 test samples. Its own
script needs a 15,724 x 91,168 float64 weight matrix (11.5 GB); the bound here is a peak RSS < 4 GB.

Three parts, each in a fresh subprocess so that ``ru_maxrss`` is that part's own peak:

1. ``data``: writes the synthetic arrays to ``--workdir`` (X as .npy float32, Y as a chunked
   float32 HDF5 dataset; Y alone is 3.2 GB, so it is streamed rather than held in memory).
2. ``full``: fits and predicts at full size with ``--store`` (default ``targets``: nothing per
   target is kept, predictions come through the smoother matrix; an ``.h5`` path keeps the
   eigen-coefficients on disk), records fit / predict time and peak RSS.
3. ``compare``: on a subsample (``--sub-*``), the same problem with decodelab (Cholesky, eigen,
   ``store="targets"``), scikit-learn's ``Ridge`` and himalaya's ``KernelRidge`` (numpy and torch
   backends, CPU), with wall and CPU time, peak RSS and the largest prediction difference to scikit-learn.
   CPU time is the fairer number on a shared machine, wall time the one a user waits.

Threads are pinned with threadpoolctl (BLAS) and ``torch.set_num_threads`` and printed.

    python benchmarks/bench_ridge_nsd.py --threads 2                 # full size (tens of minutes)
    python benchmarks/bench_ridge_nsd.py --threads 1 --scale 0.05   # a small run that proves the script

``--scale`` multiplies every full-size dimension (samples, voxels, targets, test samples).
Measured here (1 thread, shared machine): ``--scale 0.2`` peak RSS 0.95 GB, ``--scale 0.5`` 1.53 GB
(fit 35 s, predict 39 s). The peak is ~0.8 GB of imports (decodelab pulls in torch) plus X (float32),
the float64 Gram (its Cholesky factor in place), two float64 target chunks and the float32
predictions; at full size that adds up to ~3.1 GB (lower with ``--chunk-size 2048``), with fit
and predict each ~8x the half-size times. The synthetic data need ~3.8 GB of disk in ``--workdir``.
Results go to ``benchmarks/results/bench_ridge_nsd.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "bench_ridge_nsd.json"
FULL = {"train": 8859, "voxels": 15724, "targets": 91168, "test": 982}
ALPHA = 5e4  # Brain-Diffuser's VDVAE ridge


def _pin(threads: int, torch_too: bool = False) -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    if torch_too:  # only where torch runs: importing it alone adds ~0.7 GB to the peak RSS
        import torch

        torch.set_num_threads(threads)


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def _write_data(workdir: Path, dims: dict, seed: int, chunk: int) -> None:
    import h5py

    rng = np.random.default_rng(seed)
    n, p, t, m = dims["train"], dims["voxels"], dims["targets"], dims["test"]
    np.save(workdir / "x_train.npy", rng.standard_normal((n, p), dtype=np.float32))
    np.save(workdir / "x_test.npy", rng.standard_normal((m, p), dtype=np.float32))
    x = np.load(workdir / "x_train.npy", mmap_mode="r")
    rank = 32  # targets = low-rank linear read-out of the voxels + noise (values do not change the cost)
    latent = np.asarray(x[:, : min(p, 512)]) @ rng.standard_normal((min(p, 512), rank), dtype=np.float32)
    with h5py.File(workdir / "y_train.h5", "w") as f:
        ds = f.create_dataset("Y", shape=(n, t), dtype=np.float32, chunks=(n, min(t, chunk)))
        for a in range(0, t, chunk):
            b = min(a + chunk, t)
            mix = rng.standard_normal((rank, b - a), dtype=np.float32)
            ds[:, a:b] = latent @ mix + rng.standard_normal((n, b - a), dtype=np.float32)


def _run_full(workdir: Path, args: argparse.Namespace) -> dict:
    import h5py

    from decodelab.neuro import MultiTargetRidge

    x = np.load(workdir / "x_train.npy")
    xt = np.load(workdir / "x_test.npy")
    store = args.store if args.store in ("targets", "memory") else str(workdir / args.store)
    with h5py.File(workdir / "y_train.h5", "r") as f:
        y = f["Y"]
        model = MultiTargetRidge(ALPHA, method=args.method, chunk_size=args.chunk_size, dtype=args.dtype, store=store)
        t0, c0 = time.perf_counter(), time.process_time()
        model.fit(x, y)
        fit_s, fit_cpu = time.perf_counter() - t0, time.process_time() - c0
        out = np.empty((len(xt), y.shape[1]), np.float32)
        t0, c0 = time.perf_counter(), time.process_time()
        model.predict(xt, out=out)
        predict_s, predict_cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"fit_s": round(fit_s, 2), "predict_s": round(predict_s, 2), "fit_cpu_s": round(fit_cpu, 2),
            "predict_cpu_s": round(predict_cpu, 2), "solver": model.solver_, "method": model.method_,
            "store": args.store, "dtype": args.dtype, "chunk_size": args.chunk_size,
            "prediction_finite": bool(np.isfinite(out).all()), "peak_rss_gb": round(_peak_rss_gb(), 3)}  # fmt: skip


def _run_compare(workdir: Path, args: argparse.Namespace, which: str) -> dict:
    import h5py

    n, p, t = args.sub_train, args.sub_voxels, args.sub_targets
    x = np.load(workdir / "x_train.npy", mmap_mode="r")
    n, p = min(n, x.shape[0]), min(p, x.shape[1])
    x = np.ascontiguousarray(x[:n, :p], dtype=np.float64)
    xt = np.ascontiguousarray(np.load(workdir / "x_test.npy", mmap_mode="r")[:, :p], dtype=np.float64)
    with h5py.File(workdir / "y_train.h5", "r") as f:
        t = min(t, f["Y"].shape[1])
        y = np.asarray(f["Y"][:n, :t], dtype=np.float64)
    from sklearn.linear_model import Ridge  # imports outside the timed region

    from decodelab.neuro import MultiTargetRidge

    if which.startswith("himalaya-"):
        from himalaya.backend import set_backend
        from himalaya.kernel_ridge import KernelRidge

        backend = set_backend(which.removeprefix("himalaya-"), on_error="raise")
    t0, c0 = time.perf_counter(), time.process_time()
    if which in ("decodelab", "decodelab-eigen"):
        method = "eigen" if which == "decodelab-eigen" else "auto"
        pred = MultiTargetRidge(ALPHA, method=method, chunk_size=args.chunk_size).fit(x, y).predict(xt)
    elif which == "decodelab-targets":
        pred = MultiTargetRidge(ALPHA, chunk_size=args.chunk_size, store="targets").fit(x, y).predict(xt)
    elif which == "sklearn":
        pred = Ridge(ALPHA).fit(x, y).predict(xt)
    else:
        model = KernelRidge(ALPHA, kernel="linear", fit_intercept=True, force_cpu=True).fit(x, y)
        pred = backend.to_numpy(model.predict(xt))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    np.save(workdir / f"pred_{which}.npy", pred)
    return {"seconds": round(seconds, 3), "cpu_s": round(cpu, 3), "peak_rss_gb": round(_peak_rss_gb(), 3),
            "shape": [n, p, t]}  # fmt: skip


def _child(part: str, args: argparse.Namespace, extra: list[str], timeout: float | None = None) -> dict:
    cmd = [sys.executable, __file__, "--_part", part, *extra]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"part {part} did not finish within {timeout:.0f} s (killed)") from None
    if proc.returncode != 0:
        raise RuntimeError(f"part {part} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    ap.add_argument("--threads", type=int, default=2, help="BLAS / torch threads (pinned and printed)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every full-size dimension")
    ap.add_argument("--chunk-size", type=int, default=4096, help="targets per chunk")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--method", default="auto", choices=["auto", "cholesky", "eigen"])
    ap.add_argument("--store", default="targets", help="'targets', 'memory' or a file name ending in .h5")
    ap.add_argument("--sub-train", type=int, default=2000)
    ap.add_argument("--sub-voxels", type=int, default=4000)
    ap.add_argument("--sub-targets", type=int, default=8192)
    ap.add_argument(
        "--compare-with",
        default="sklearn,decodelab,decodelab-eigen,decodelab-targets,himalaya-numpy,himalaya-torch",
        help="comma-separated implementations for the subsample comparison (sklearn is the reference)",
    )
    ap.add_argument("--compare-timeout", type=float, default=1800.0, help="seconds allowed per compared run")
    ap.add_argument("--skip-full", action="store_true")
    ap.add_argument("--skip-compare", action="store_true")
    ap.add_argument("--workdir", default=None, help="folder for the synthetic data (default: a temporary one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--_part", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_which", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    dims = {k: max(2, int(round(v * args.scale))) for k, v in FULL.items()}

    if args._part is not None:  # a child process: one part, one JSON line on stdout
        _pin(args.threads, torch_too=args._which == "himalaya-torch")
        workdir = Path(args.workdir)
        if args._part == "data":
            _write_data(workdir, dims, args.seed, args.chunk_size)
            res = {"peak_rss_gb": round(_peak_rss_gb(), 3)}
        elif args._part == "full":
            res = _run_full(workdir, args)
        else:
            res = _run_compare(workdir, args, args._which)
        print(json.dumps(res))
        return

    own_dir = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_ridge_nsd_"))
    workdir.mkdir(parents=True, exist_ok=True)
    passthrough = [f"--threads={args.threads}", f"--scale={args.scale}", f"--chunk-size={args.chunk_size}",
                   f"--dtype={args.dtype}", f"--method={args.method}", f"--store={args.store}",
                   f"--sub-train={args.sub_train}", f"--sub-voxels={args.sub_voxels}",
                   f"--sub-targets={args.sub_targets}", f"--workdir={workdir}", f"--seed={args.seed}"]  # fmt: skip
    print(f"threads={args.threads} dims={dims} workdir={workdir}", flush=True)
    report: dict = {"threads": args.threads, "dims": dims, "alpha": ALPHA, "python": platform.python_version(),
                    "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}  # fmt: skip
    try:
        t0 = time.perf_counter()
        report["data"] = _child("data", args, passthrough) | {"seconds": round(time.perf_counter() - t0, 1)}
        if not args.skip_full:
            report["full"] = full = _child("full", args, passthrough)
            full["under_4gb"] = full["peak_rss_gb"] < 4.0
            print(f"full: fit {full['fit_s']} s, predict {full['predict_s']} s, peak RSS {full['peak_rss_gb']} GB",
                  flush=True)  # fmt: skip
        if not args.skip_compare:
            cmp: dict = {}
            names = ["sklearn"] + [w for w in args.compare_with.split(",") if w and w != "sklearn"]
            for which in names:
                try:
                    cmp[which] = _child("compare", args, [*passthrough, f"--_which={which}"], args.compare_timeout)
                except RuntimeError as err:
                    cmp[which] = {"error": str(err)[-500:]}
                    continue
                ref = np.load(workdir / "pred_sklearn.npy")
                cmp[which]["max_abs_diff_vs_sklearn"] = float(
                    np.abs(np.load(workdir / f"pred_{which}.npy") - ref).max()
                )
                print(f"compare {which}: {cmp[which]}", flush=True)
            report["compare"] = cmp
    finally:
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
