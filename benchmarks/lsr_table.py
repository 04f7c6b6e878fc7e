"""Side-by-side table of continuous image models: quality, query throughput, peak memory, parameters.

Two tracks, matching the matched-budget configs (``configs/{gblsr,liif,lte,wire}/*-cpu*.yaml``):

- ``native``: native reconstruction of the bundled test photos (PSNR / SSIM on RGB);
- ``sr``: x2 / x3 / x4 SR of the bundled test photos (PSNR-Y / SSIM-Y, shave = scale).

Every model is measured in this one process, on the same CPU and thread count: query throughput
(queries/s of ``query`` on an encoded state, median of repeats, cell size of a x4 output for SR),
encode time, peak memory growth while rendering one image (forked child, Linux ``VmHWM``), and the
parameter count. By default the trained runs of the matched-budget configs are read from
``runs/lsr/<name>/final``; ``--random-init`` measures registry models at random initialisation
(speed, memory and size only: their quality columns are meaningless and are left out).

    python benchmarks/lsr_table.py --track native            # after training the native-cpu configs
    python benchmarks/lsr_table.py --track sr --crop 192
    python benchmarks/lsr_table.py --track sr --random-init  # speed/memory only
    python benchmarks/lsr_table.py --track native --data kodak --data-dir ~/data   # a real benchmark set

Results go to ``benchmarks/results/lsr_<track>[_<data>].json`` plus a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from decodelab.datasets.sr import load_sr_dataset
from decodelab.vision.lsr import create_lsr_model, load_lsr_model
from decodelab.vision.lsr.evaluate import (
    center_crop,
    evaluate_native,
    evaluate_sr,
    measure_peak_memory_mb,
    measure_query_throughput,
)

RUNS = {
    "native": ["gblsr-native-cpu", "gblsr-native-cpu-fixed", "gblsr-native-cpu-local", "liif-native-cpu",
               "lte-native-cpu", "wire-native-cpu"],
    "sr": ["gblsr-sr-cpu", "gblsr-sr-cpu-nole", "liif-sr-cpu", "lte-sr-cpu", "wire-sr-cpu"],
}  # fmt: skip
REGISTRY = {
    "native": ["gblsr_native_small", "liif_native_small", "lte_native_small", "wire_native_small"],
    "sr": ["gblsr_sr_small", "gblsr_sr_small_nole", "liif_small", "lte_small", "wire_small"],
}


def _models(args: argparse.Namespace) -> list[tuple[str, torch.nn.Module]]:
    if args.random_init:
        torch.manual_seed(0)
        return [(n, create_lsr_model(n).eval()) for n in (args.models or REGISTRY[args.track])]
    out = []
    for name in args.models or RUNS[args.track]:
        path = Path(name) if Path(name).is_dir() else Path(args.runs_dir) / name / "final"
        if not (path / "config.json").is_file():
            sys.exit(f"lsr_table: no trained model at {path}: train it (decodelab train --config configs/...) "
                     "or pass --random-init for speed/memory only")  # fmt: skip
        out.append((name, load_lsr_model(str(path))))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--track", choices=("native", "sr"), required=True)
    p.add_argument("--models", nargs="*", default=None, help="run names / model dirs (or registry names)")
    p.add_argument("--runs-dir", default="runs/lsr")
    p.add_argument("--random-init", action="store_true")
    p.add_argument("--data", default="bundled")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--split", default=None)
    p.add_argument("--crop", type=int, default=256, help="centre crop of the evaluation images (0: whole)")
    p.add_argument("--num-images", type=int, default=None)
    p.add_argument("--scales", type=float, nargs="+", default=[2.0, 3.0, 4.0])
    p.add_argument("--queries", type=int, default=65536, help="queries per timed pass")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    crop = args.crop or None
    models = _models(args)
    probe_hr = center_crop(load_sr_dataset("bundled", None, split="test").hr(0), 256)  # fixed timing image
    rows = []
    for name, model in models:
        row: dict = {"model": name, "architecture": type(model).__name__, "params": model.num_parameters()}
        if args.track == "native":
            probe, out_size, scale = probe_hr, tuple(probe_hr.shape[-2:]), 1.0
        else:
            probe, out_size, scale = probe_hr[:, ::4, ::4].contiguous(), tuple(probe_hr.shape[-2:]), 4.0
        row.update(measure_query_throughput(model, probe, args.queries, repeats=args.repeats, scale=scale))
        row["peak_mem_mb"] = measure_peak_memory_mb(lambda m=model, x=probe, o=out_size: m.render(x.unsqueeze(0), o))
        if not args.random_init:
            if args.track == "native":
                ds = load_sr_dataset(args.data, None, args.data_dir, args.split)
                n = len(ds) if args.num_images is None else min(args.num_images, len(ds))
                res = evaluate_native(model, [ds.hr(i) for i in range(n)], ds.names[:n], crop=crop)
                row.update(psnr=res["psnr"], ssim=res["ssim"], num_images=n)
            else:
                for s in args.scales:
                    ds = load_sr_dataset(args.data, s, args.data_dir, args.split)
                    n = len(ds) if args.num_images is None else min(args.num_images, len(ds))
                    res = evaluate_sr(model, [ds[i] for i in range(n)], crop=crop)
                    row.update({f"x{s:g}_psnr_y": res["psnr_y"], f"x{s:g}_ssim_y": res["ssim_y"]})
        rows.append(row)
        print(f"measured {name}", file=sys.stderr)
    ref = next((r for r in rows if r["architecture"] == "LIIF"), None)
    for r in rows:
        r["throughput_vs_liif"] = r["queries_per_s"] / ref["queries_per_s"] if ref else None
    result = {"track": args.track, "data": args.data, "crop": crop, "random_init": args.random_init,
              "threads": args.threads, "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows}  # fmt: skip
    out = Path(args.out or f"benchmarks/results/lsr_{args.track}{'' if args.data == 'bundled' else '_' + args.data}"
               f"{'_random_init' if args.random_init else ''}.json")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if args.random_init:
        qcols = []
    elif args.track == "native":
        qcols = ["psnr", "ssim"]
    else:
        qcols = [f"x{s:g}_psnr_y" for s in args.scales] + [f"x{s:g}_ssim_y" for s in args.scales]
    cols = ["model", "params"] + qcols + ["queries_per_s", "throughput_vs_liif", "encode_s", "peak_mem_mb"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        cells = [f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c)) for c in cols]
        print("| " + " | ".join(cells) + " |")
    print(f"\nwritten {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
