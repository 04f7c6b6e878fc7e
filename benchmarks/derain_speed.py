"""Deraining speed and memory of MCW-Net small on CPU.

1. Median wall time to derain a 512x512 image (``decodelab.derain.derain``: horizontal-flip
   self-ensemble, so two forward passes; also reported without it) at ``--threads`` threads (2),
   after one warm-up, over ``--repeats`` runs.
2. Peak resident memory (RSS) and wall time of deraining a 4000x3000 photo through 512-px tiles
   with 32-px overlaps, measured in a fresh subprocess (``ru_maxrss`` of that process only). The
   target is staying under 8 GB.

The shipped ``mcwnet-small-synthetic`` is used when present, else a randomly initialised
``mcwnet_small`` (same cost: the speed does not depend on the weight values). Results go to
``benchmarks/results/derain_speed.json``.

    python benchmarks/derain_speed.py                 # both parts (the 4000x3000 one takes minutes)
    python benchmarks/derain_speed.py --skip-large    # only the 512x512 timing
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "derain_speed.json"


def _model():
    from decodelab.derain import load_derainer, mcwnet_small

    try:
        return load_derainer("mcwnet-small-synthetic"), "mcwnet-small-synthetic (shipped)"
    except FileNotFoundError:
        torch.manual_seed(0)
        return mcwnet_small().eval(), "mcwnet_small (random init; cost does not depend on the weights)"


def _time_512(repeats: int) -> dict:
    from decodelab.derain import derain

    model, which = _model()
    x = torch.rand(3, 512, 512, generator=torch.Generator().manual_seed(0))
    out: dict = {"model": which, "size": [512, 512]}
    for ensemble in (True, False):
        derain(model, x, self_ensemble=ensemble)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            derain(model, x, self_ensemble=ensemble)
            times.append(time.perf_counter() - t0)
        key = "self_ensemble" if ensemble else "single_pass"
        out[key] = {"median_s": round(statistics.median(times), 3), "times_s": [round(t, 3) for t in times]}
    return out


def _large_child(height: int, width: int, tile: int, overlap: int) -> None:
    """Run in a subprocess: derain one big image, print JSON with time and peak RSS."""
    from decodelab.derain import derain

    model, which = _model()
    x = torch.rand(3, height, width, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    y = derain(model, x, tile=tile, overlap=overlap, self_ensemble=True)
    wall = time.perf_counter() - t0
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"model": which, "size": [height, width], "tile": tile, "overlap": overlap,
                      "self_ensemble": True, "wall_s": round(wall, 1), "peak_rss_gb": round(rss_kb / 2**20, 3),
                      "output_shape": list(y.shape)}))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-large", action="store_true", help="skip the 4000x3000 tiled run")
    ap.add_argument("--large-size", type=int, nargs=2, default=[3000, 4000], metavar=("H", "W"))
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--json", default=str(RESULTS))
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args._child:
        _large_child(*args.large_size, args.tile, args.overlap)
        return

    results: dict = {
        "threads": args.threads,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__},
        "derain_512": _time_512(args.repeats),
    }
    print(json.dumps(results["derain_512"], indent=2))
    prev = {}
    path = Path(args.json)
    if path.is_file():
        prev = json.loads(path.read_text())
    if args.skip_large:
        if "derain_4000x3000_tiled" in prev:
            results["derain_4000x3000_tiled"] = prev["derain_4000x3000_tiled"]  # keep the last measurement
    else:
        cmd = [sys.executable, __file__, "--_child", "--threads", str(args.threads), "--tile", str(args.tile),
               "--overlap", str(args.overlap), "--large-size", *map(str, args.large_size)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results["derain_4000x3000_tiled"] = json.loads(proc.stdout.strip().splitlines()[-1])
        results["derain_4000x3000_tiled"]["under_8gb"] = results["derain_4000x3000_tiled"]["peak_rss_gb"] < 8.0
        print(json.dumps(results["derain_4000x3000_tiled"], indent=2))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
