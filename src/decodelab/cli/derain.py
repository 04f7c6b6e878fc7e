"""``decodelab derain IN... --out DIR`` and ``decodelab eval derain --model ... --data ...``.

``derain`` removes rain from users' photos (files or folders of images) with the shipped default
``mcwnet-small-synthetic`` or any model directory / authors' ``.pth`` checkpoint, using the
horizontal-flip self-ensemble and overlapping tiles for large photos.

``eval derain`` scores a model on a paired dataset (a name such as ``Rain200H`` resolved under
``$DECODELAB_DATA/rain``, a folder, a SPA ``.txt`` list, or ``synthetic`` = held-out synthetic rain over
the bundled test photos) with PSNR/SSIM of the derained output **and** of the rainy input (the
baseline), under the ``rgb`` protocol (the MCW-Net authors') and/or ``y`` (most later papers);
the protocol is recorded in the JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

__all__ = ["add_eval_parser", "add_parser", "run", "run_eval"]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _common(p: argparse.ArgumentParser) -> None:
    from decodelab.derain.infer import DEFAULT_MODEL, DEFAULT_OVERLAP, DEFAULT_TILE

    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="shipped model name, model directory (config.json + model.safetensors) or authors' .pth",
    )
    p.add_argument("--tile", type=int, default=DEFAULT_TILE, help="tile size for large images (0: no tiling)")
    p.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP, help="tile overlap in pixels (blended)")
    p.add_argument("--no-ensemble", action="store_true", help="skip the horizontal-flip self-ensemble")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")  # fmt: skip


def add_parser(sub) -> None:
    p = sub.add_parser(
        "derain",
        help="remove rain from photos (MCW-Net)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Derain image files (or every image in the given folders) and write PNGs into --out.",
    )
    p.add_argument("inputs", nargs="+", metavar="IN", help="image files or folders of images")
    p.add_argument("--out", required=True, help="output directory (one <name>.png per input)")
    _common(p)
    p.set_defaults(func=run)


def _collect(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(_IMAGE_SUFFIXES)}) in the folder {path}")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"input not found: {path}")
    return files


def _setup(args: argparse.Namespace):
    import torch

    from decodelab.derain.infer import load_derainer

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.tile < 0 or (0 < args.tile < 8):
        raise ValueError(f"--tile must be 0 (no tiling) or >= 8, got {args.tile}")
    model = load_derainer(args.model).to(args.device)
    return model, (args.tile or None)


def run(args: argparse.Namespace) -> int:
    from decodelab.derain.infer import derain, load_image, save_image

    files = _collect(args.inputs)
    model, tile = _setup(args)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for path in files:
        name = path.stem + ".png"
        if name in used:  # same stem from two folders: keep both
            name = f"{path.parent.name}_{name}"
        used.add(name)
        t0 = time.perf_counter()
        out = derain(model, load_image(path), tile=tile, overlap=args.overlap, self_ensemble=not args.no_ensemble)
        dest = save_image(out, out_dir / name)
        print(f"{path} -> {dest} ({time.perf_counter() - t0:.1f}s)")
    return 0


def add_eval_parser(esub) -> None:
    """Add ``decodelab eval derain`` to the ``eval`` sub-parsers."""
    p = esub.add_parser(
        "derain",
        help="PSNR/SSIM of a derainer and of the rainy input (rgb or y protocol)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _common(p)
    p.add_argument("--data", required=True,
                   help="'synthetic' (held-out synthetic rain), a dataset name (Rain200H, Rain200L, Rain1400, SPA, "
                   "...), a folder or a SPA .txt list")  # fmt: skip
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--layout", default="auto", help="dataset layout (see decodelab.datasets.rain.LAYOUTS)")
    p.add_argument("--data-dir", default=None, help="folder holding <dataset name>/ (before $DECODELAB_DATA/rain)")
    p.add_argument("--protocol", default="both", choices=["rgb", "y", "both"],
                   help="rgb: the MCW-Net authors' protocol; y: MATLAB rgb2ycbcr luma (later papers)")  # fmt: skip
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N pairs")
    p.add_argument("--seed", type=int, default=2024, help="synthetic: rain seed of the test set")
    p.add_argument("--json", default=None, help="write the full results (per image, settings) here")
    p.set_defaults(func=run_eval)


def _pairs(args: argparse.Namespace):
    if args.data == "synthetic":
        from decodelab.derain.synth import synthetic_test_pairs

        pairs = synthetic_test_pairs("test", seed=args.seed)
        return pairs[: args.max_images] if args.max_images else pairs
    from decodelab.datasets.rain import NamedRainPairs, RainPairs

    return NamedRainPairs(RainPairs(args.data, args.split, args.layout, args.data_dir), args.max_images)


def run_eval(args: argparse.Namespace) -> int:
    from decodelab.derain.evaluate import evaluate_derain

    pairs = _pairs(args)
    model, tile = _setup(args)
    protocols = ["rgb", "y"] if args.protocol == "both" else [args.protocol]
    res = evaluate_derain(model, pairs, protocols=protocols, self_ensemble=not args.no_ensemble, tile=tile,
                          overlap=args.overlap)  # fmt: skip
    res["model"] = str(args.model)
    res["data"] = {"data": args.data, "split": args.split, "layout": args.layout, "num_images": len(pairs)}
    if args.data == "synthetic":
        res["data"]["seed"] = args.seed
    m = res["metrics"]
    print(f"{len(pairs)} images, protocol(s) {', '.join(protocols)}")
    print(f"{'protocol':<9} {'':<8} {'PSNR':>8} {'SSIM':>7}")
    for p in protocols:
        print(f"{p:<9} {'derained':<8} {m[f'psnr_{p}']:8.2f} {m[f'ssim_{p}']:7.4f}")
        print(f"{p:<9} {'rainy':<8} {m[f'psnr_{p}_rainy']:8.2f} {m[f'ssim_{p}_rainy']:7.4f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0
