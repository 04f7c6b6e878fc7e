"""``decodelab derain IN... --out DIR`` and ``decodelab eval derain --model ... --data ...``.

``derain`` removes rain from users' photos (files or folders of images) with the shipped default
``mcwnet-small-synthetic`` or any model directory / authors' ``.pth`` checkpoint, using the
horizontal-flip self-ensemble and overlapping tiles for large photos.

``eval derain`` scores a model on a paired dataset (a name such as ``Rain200H`` resolved under
``$DECODELAB_DATA/rain``, a folder, a SPA ``.txt`` list, or ``synthetic`` = held-out synthetic rain over
the bundled test photos) with PSNR/SSIM of the derained output **and** of the rainy input (the
baseline), under the ``rgb`` protocol (the MCW-Net authors') and/or ``y`` (most later papers);
the protocol is recorded in the JSON.

Both read images through :func:`decodelab.datasets.sr.read_image` after checking every input's size
from its header (``--max-input-pixels``). ``derain`` never writes over one of its inputs unless
``--overwrite`` is given, and gives every input its own output name.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["add_eval_parser", "add_parser", "output_names", "run", "run_eval"]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _common(p: argparse.ArgumentParser) -> None:
    from decodelab.datasets.sr import MAX_INPUT_PIXELS
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
    p.add_argument("--max-input-pixels", type=int, default=MAX_INPUT_PIXELS,
                   help="refuse input images with more pixels (width x height, read from the file header)")  # fmt: skip


def add_parser(sub) -> None:
    p = sub.add_parser(
        "derain",
        help="remove rain from photos (MCW-Net)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Derain image files (or every image in the given folders) and write PNGs into --out.",
    )
    p.add_argument("inputs", nargs="+", metavar="IN", help="image files or folders of images")
    p.add_argument("--out", required=True,
                   help="output directory: one <stem>.png per input (<stem>_<ext>.png when stems clash)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true",
                   help="allow writing an output over its own input (derain in place)")  # fmt: skip
    _common(p)
    p.set_defaults(func=run)


def _collect(inputs: list[str]) -> list[Path]:
    """The image files named by ``inputs`` (files, or folders of images), each file once."""
    files: list[Path] = []
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(_IMAGE_SUFFIXES)}) in the folder {path}")
        elif path.is_file():
            found = [path]
        else:
            raise FileNotFoundError(f"input not found: {path}")
        for f in found:
            if f.resolve() not in seen:
                seen.add(f.resolve())
                files.append(f)
    return files


def output_names(files: list[Path]) -> list[str]:
    """One distinct output file name per input, independent of the input order.

    ``<stem>.png``; inputs sharing a stem keep their extension (``a.jpg`` -> ``a_jpg.png``); inputs
    sharing a name in different folders get the folder's name in front (``x/a.png`` -> ``x_a.png``).

    Raises:
        ValueError: when two inputs would still share an output name.
    """

    def clashes(names: list[str]) -> set[str]:
        keys = [n.casefold() for n in names]  # case-insensitive file systems: a.png and A.png clash
        return {k for k in keys if keys.count(k) > 1}

    names = [f.stem + ".png" for f in files]
    dup = clashes(names)
    names = [f"{f.stem}_{f.suffix.lstrip('.').lower()}.png" if n.casefold() in dup and f.suffix else n
             for f, n in zip(files, names)]  # fmt: skip
    dup = clashes(names)
    names = [f"{f.parent.name}_{n}" if n.casefold() in dup else n for f, n in zip(files, names)]
    dup = clashes(names)
    if dup:
        both = [str(f) for f, n in zip(files, names) if n.casefold() in dup][:2]
        raise ValueError(
            f"the inputs {' and '.join(both)} would be written to the same output file; rename one of them or "
            "derain them into separate --out folders"
        )
    return names


def _check_destinations(files: list[Path], dests: list[Path], overwrite: bool) -> None:
    """Refuse an output that is an input file (its own only with ``overwrite``)."""
    ids = {}
    for i, f in enumerate(files):
        st = f.stat()
        ids[(st.st_dev, st.st_ino)] = i
    for i, dest in enumerate(dests):
        if not dest.exists():
            continue
        st = dest.stat()
        j = ids.get((st.st_dev, st.st_ino))
        if j is None:
            continue
        if j != i:
            raise ValueError(
                f"the output of {files[i]} would overwrite another input, {files[j]}; choose another --out folder"
            )
        if not overwrite:
            raise ValueError(
                f"the output {dest} would overwrite its input; choose another --out folder, or pass --overwrite "
                "to derain in place"
            )


def _check_positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def _probe(model: Any, spec: str, device: Any) -> None:
    """Raise ``ValueError`` unless ``model`` maps an RGB batch ``[1, 3, 16, 16]`` to the same shape."""
    import torch

    param = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    try:
        with torch.no_grad():
            y = model.eval()(x)
        ok = isinstance(y, torch.Tensor) and tuple(y.shape) == (1, 3, 16, 16)
    except Exception:  # any failure of the probe means: not an image-to-image model
        ok = False
    if not ok:
        from decodelab.derain.infer import DEFAULT_MODEL

        raise ValueError(
            f"--model {spec} holds a {type(model).__name__}, not a deraining model (it does not map an RGB image "
            f"[1, 3, H, W] to an image of the same size); pass a derainer: {DEFAULT_MODEL}, a directory saved by "
            "MCWNet.save_pretrained, or the MCW-Net authors' .pth checkpoint"
        )


def _setup(args: argparse.Namespace):
    import torch

    from decodelab.cli import torch_device
    from decodelab.derain.infer import load_derainer

    _check_positive(args, "threads", "max_input_pixels")
    if args.tile < 0 or (0 < args.tile < 8):
        raise ValueError(f"--tile must be 0 (no tiling) or >= 8, got {args.tile}")
    if args.overlap < 0 or (args.tile and args.overlap >= args.tile):
        raise ValueError(f"--overlap must be >= 0 and smaller than --tile, got {args.overlap} (tile {args.tile})")
    device = torch_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model = load_derainer(args.model)
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"--model {args.model} does not hold a torch module")
    model = model.to(device)
    _probe(model, str(args.model), device)
    return model, (args.tile or None)


def run(args: argparse.Namespace) -> int:
    from decodelab.datasets.sr import image_size
    from decodelab.derain.infer import derain, load_image, save_image

    _check_positive(args, "threads", "max_input_pixels")
    files = _collect(args.inputs)
    out_dir = Path(args.out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; pass a folder for the derained images")
    dests = [out_dir / name for name in output_names(files)]
    _check_destinations(files, dests, args.overwrite)
    for path in files:  # sizes from the headers before any decoding (and before loading the model)
        image_size(path, args.max_input_pixels)
    model, tile = _setup(args)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK):
        raise PermissionError(13, "Permission denied (the --out folder is not writable)", str(out_dir))
    for path, dest in zip(files, dests):
        t0 = time.perf_counter()
        image = load_image(path, max_pixels=args.max_input_pixels)
        out = derain(model, image, tile=tile, overlap=args.overlap, self_ensemble=not args.no_ensemble)
        save_image(out, dest)
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
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N pairs (N >= 1)")
    p.add_argument("--seed", type=int, default=2024, help="synthetic: rain seed of the test set")
    p.add_argument("--json", default=None, help="write the full results (per image, settings) here")
    p.set_defaults(func=run_eval)


def _pairs(args: argparse.Namespace):
    if args.data == "synthetic":
        from decodelab.derain.synth import synthetic_test_pairs

        pairs = synthetic_test_pairs("test", seed=args.seed)
        return pairs[: args.max_images] if args.max_images is not None else pairs
    from decodelab.datasets.rain import NamedRainPairs, RainPairs
    from decodelab.datasets.sr import image_size

    named = NamedRainPairs(RainPairs(args.data, args.split, args.layout, args.data_dir), args.max_images)
    for pair in named.ds.pairs[: len(named)]:  # sizes from the headers before any decoding
        image_size(pair.rain, args.max_input_pixels)
        image_size(pair.clean, args.max_input_pixels)
    return named


def run_eval(args: argparse.Namespace) -> int:
    from decodelab.config import write_json
    from decodelab.derain.evaluate import evaluate_derain

    _check_positive(args, "max_images", "threads", "max_input_pixels")
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
        write_json(args.json, res)
    return 0
