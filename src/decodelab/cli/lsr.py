"""``decodelab upscale`` / ``decodelab reconstruct`` / ``decodelab eval lsr``: continuous image models.

- ``decodelab upscale IN --scale 3.7 --out OUT`` (or ``--size WxH``): arbitrary-scale SR with any
  float scale; the input is processed in tiles (:func:`~decodelab.vision.lsr.render.render_tiled`)
  and queries in chunks, so memory stays bounded whatever the sizes.
- ``decodelab reconstruct IN --out OUT [--size WxH]``: GB-LSR native continuous reconstruction
  (at the input size, or re-sampled at any size).
- ``decodelab eval lsr --model DIR --data bundled|set14|... [--scales 2 3 4]``: PSNR/SSIM table.

Inputs are size-checked from their file headers before decoding (``--max-input-pixels``; default
:data:`~decodelab.datasets.sr.MAX_INPUT_PIXELS` for ``upscale`` and ``eval lsr``,
:data:`MAX_NATIVE_INPUT_PIXELS` for ``reconstruct``), and ``--out`` may not be the input file
unless ``--overwrite`` is given.

``--model`` takes a model directory (``config.json`` + ``model.safetensors``, e.g. a training run's
``final/``) or an upstream checkpoint file (GB-LSR ``.safetensors``/``.pt``, LIIF/LTE ``.pth``). The
defaults are the shipped assets ``lsr-sr-small`` and ``gblsr-native-small``.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_MODELS", "MAX_OUTPUT_PIXELS", "add_eval_parser", "add_parsers", "load_model", "parse_size"]

#: command -> shipped asset name
DEFAULT_MODELS = {"upscale": "lsr-sr-small", "reconstruct": "gblsr-native-small"}
#: config that trains each shipped asset
ASSET_CONFIGS = {"lsr-sr-small": "configs/embedded/lsr-sr-small.yaml",
                 "gblsr-native-small": "configs/embedded/gblsr-native-small.yaml"}  # fmt: skip
#: queries per pass (same value as decodelab.vision.lsr.DEFAULT_CHUNK; not imported so --help stays light)
DEFAULT_CHUNK = 4096
#: largest output (pixels) accepted without --max-pixels (64 MP: 768 MiB of float RGB).
MAX_OUTPUT_PIXELS = 64_000_000
#: largest input for the untiled native reconstruction (GroupNorm needs the whole image at once).
MAX_NATIVE_INPUT_PIXELS = 16_000_000
#: largest input of ``upscale`` and ``eval lsr`` (64 MP; same value as decodelab.datasets.sr.MAX_INPUT_PIXELS,
#: not imported so --help stays light)
MAX_INPUT_PIXELS = 64_000_000
FMT = argparse.ArgumentDefaultsHelpFormatter


def parse_size(text: str) -> tuple[int, int]:
    """``"WxH"`` -> ``(height, width)``.

    Raises:
        ValueError: for anything but two positive integers.
    """
    m = re.fullmatch(r"\s*(\d+)\s*[xX*,]\s*(\d+)\s*", str(text))
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ValueError(f"--size must look like WIDTHxHEIGHT with positive integers (e.g. 1920x1080), got {text!r}")
    return int(m.group(2)), int(m.group(1))


def load_model(spec: str | None, command: str) -> Any:
    """The model of ``--model`` (a directory or an upstream file), or the shipped default.

    Raises:
        FileNotFoundError: when the path (or the default asset) does not exist, saying how to get it.
    """
    from decodelab.vision.lsr import load_lsr_model

    if spec is None:
        from decodelab.assets import ASSETS_DIR

        name = DEFAULT_MODELS[command]
        path = ASSETS_DIR / name
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"the default model {name!r} is not shipped in this installation ({path} is missing). Train it with "
                f"`decodelab train --config {ASSET_CONFIGS[name]}` and copy the run's final/ directory to {path}, "
                "or pass --model DIR (a trained model directory) or --model FILE (a GB-LSR/LIIF/LTE checkpoint)"
            )
        return load_lsr_model(str(path))
    p = Path(spec).expanduser()
    if not p.exists() and spec in ASSET_CONFIGS:
        from decodelab.assets import ASSETS_DIR

        p = ASSETS_DIR / spec  # a shipped asset by name
    if p.is_dir():
        return load_lsr_model(str(p))
    if p.is_file():
        from decodelab.vision.lsr.importers import import_checkpoint

        return import_checkpoint(p)
    raise FileNotFoundError(
        f"--model {spec!r} is neither a model directory (config.json + model.safetensors), a checkpoint file, "
        f"nor a shipped model ({', '.join(ASSET_CONFIGS)})"
    )


def _read_input(path: str, max_pixels: int) -> Any:
    from decodelab.datasets.sr import read_image

    return read_image(path, max_pixels=max_pixels)


def _check_out_path(args: argparse.Namespace) -> None:
    """Refuse ``--out`` naming the input file (unless ``--overwrite``) or a folder."""
    src, out = Path(args.input).expanduser(), Path(args.out).expanduser()
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; pass an image file name such as {out / 'out.png'}")
    same = out.exists() and src.exists() and src.samefile(out)
    if (same or out.resolve() == src.resolve()) and not args.overwrite:
        raise ValueError(f"--out {out} is the input image; choose another file name, or pass --overwrite to replace it")


def _check_counts(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def _write_png(img: Any, out: str) -> None:
    import numpy as np
    from PIL import Image

    arr = (img[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        Image.fromarray(arr).save(out_path)
    except (ValueError, OSError) as e:
        raise ValueError(f"could not write {out_path}: {e} (use a .png/.jpg/.bmp/.tif name)") from e


def _check_out_size(h: int, w: int, max_pixels: int) -> None:
    if h * w > max_pixels:
        raise ValueError(
            f"the output would be {w}x{h} = {h * w / 1e6:.1f} MP, over the {max_pixels / 1e6:.0f} MP limit; pick a "
            "smaller --scale/--size or raise --max-pixels"
        )


def _setup(args: argparse.Namespace) -> None:
    import torch

    _check_counts(args, "threads", "chunk", "tile", "max_pixels", "max_input_pixels", "num_images", "crop")
    if args.threads is not None:
        torch.set_num_threads(args.threads)


def run_upscale(args: argparse.Namespace) -> int:
    """Arbitrary-scale SR of one image."""
    from decodelab.vision.lsr.render import render_tiled

    _setup(args)
    if (args.scale is None) == (args.size is None):
        raise ValueError("pass exactly one of --scale (any float > 0, e.g. 3.7) or --size WIDTHxHEIGHT")
    if args.scale is not None and not (math.isfinite(args.scale) and args.scale > 0):
        raise ValueError(f"--scale must be a positive finite number, got {args.scale}")
    _check_out_path(args)
    img = _read_input(args.input, args.max_input_pixels)
    H, W = img.shape[-2:]
    if args.size is not None:
        h, w = parse_size(args.size)
    else:
        h, w = max(1, round(H * args.scale)), max(1, round(W * args.scale))
    _check_out_size(h, w, args.max_pixels)
    model = load_model(args.model, "upscale").eval()
    out = render_tiled(model, img, (h, w), tile=args.tile, chunk=args.chunk)
    _write_png(out, args.out)
    print(f"{args.input} ({W}x{H}) -> {args.out} ({w}x{h}), x{w / W:.4g} horizontally, x{h / H:.4g} vertically")
    return 0


def run_reconstruct(args: argparse.Namespace) -> int:
    """Native continuous reconstruction (optionally re-sampled)."""
    from decodelab.datasets.sr import image_size

    _setup(args)
    _check_out_path(args)
    W, H = image_size(args.input, max(args.max_input_pixels, MAX_INPUT_PIXELS))  # from the header only
    if H * W > args.max_input_pixels:
        raise ValueError(
            f"the input is {W}x{H} = {H * W:,} pixels; native reconstruction encodes it whole (GroupNorm spans "
            f"the image), so inputs over {args.max_input_pixels:,} pixels are refused: crop or downscale it, or "
            "raise --max-input-pixels"
        )
    img = _read_input(args.input, args.max_input_pixels)
    H, W = img.shape[-2:]
    h, w = parse_size(args.size) if args.size else (H, W)
    _check_out_size(h, w, args.max_pixels)
    model = load_model(args.model, "reconstruct").eval()
    from decodelab.vision.lsr.render import render_tiled

    out = render_tiled(model, img, (h, w), tile=args.tile, chunk=args.chunk)
    _write_png(out, args.out)
    print(f"{args.input} ({W}x{H}) -> {args.out} ({w}x{h})")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="IN", help="input image (png/jpg/...)")
    p.add_argument("--out", required=True, help="output image path")
    p.add_argument("--size", default=None, help="output size WIDTHxHEIGHT")
    p.add_argument(
        "--model", default=None, help="model directory or upstream checkpoint; None = the shipped default asset"
    )
    p.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help="queries per pass (bounds memory)")
    p.add_argument("--tile", type=int, default=256, help="input tile side for stride-1 encoders (bounds memory)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--max-pixels", type=int, default=MAX_OUTPUT_PIXELS, help="refuse larger outputs")
    p.add_argument("--overwrite", action="store_true", help="allow --out to be the input file (replace it)")


def add_parsers(sub: Any) -> None:
    """Register ``upscale`` and ``reconstruct``."""
    up = sub.add_parser("upscale", help="upsample an image to any scale with a continuous SR model",
                        description=run_upscale.__doc__, formatter_class=FMT)  # fmt: skip
    _common(up)
    up.add_argument("--scale", type=float, default=None, help="any float scale > 0, e.g. 3.7")
    up.add_argument("--max-input-pixels", type=int, default=MAX_INPUT_PIXELS,
                    help="refuse larger input images (width x height, read from the file header)")  # fmt: skip
    up.set_defaults(func=run_upscale)
    rec = sub.add_parser("reconstruct", help="GB-LSR native continuous reconstruction of an image",
                         description=run_reconstruct.__doc__, formatter_class=FMT)  # fmt: skip
    _common(rec)
    rec.add_argument("--max-input-pixels", type=int, default=MAX_NATIVE_INPUT_PIXELS,
                     help="refuse larger input images (the whole image is encoded at once)")  # fmt: skip
    rec.set_defaults(func=run_reconstruct)


def add_eval_parser(esub: Any) -> None:
    """Register ``decodelab eval lsr``."""
    p = esub.add_parser("lsr", help="PSNR/SSIM of a continuous model (native reconstruction or SR scales)",
                        formatter_class=FMT)  # fmt: skip
    p.add_argument("--model", required=True, help="model directory, upstream checkpoint, or bicubic (the SR baseline)")
    p.add_argument("--data", default="bundled", help="bundled, set5, set14, b100, urban100, kodak, div2k or a folder")
    p.add_argument("--data-dir", default=None, help="data directory (default $DECODELAB_DATA/sr)")
    p.add_argument("--split", default=None, help="bundled: test/train/all; div2k: valid/train")
    p.add_argument("--mode", choices=("native", "sr"), default="sr")
    p.add_argument("--scales", type=float, nargs="+", default=[2.0, 3.0, 4.0])
    p.add_argument("--crop", type=int, default=None, help="centre-crop HR images to this side")
    p.add_argument("--num-images", type=int, default=None, help="evaluate only the first N images (N >= 1)")
    p.add_argument("--chunk", type=int, default=DEFAULT_CHUNK)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--max-input-pixels", type=int, default=MAX_INPUT_PIXELS,
                   help="refuse dataset images with more pixels (read from the file headers)")  # fmt: skip
    p.add_argument("--json", default=None, help="also write the results here")
    p.set_defaults(func=run_eval)


def _check_dataset_sizes(ds: Any, n: int, max_pixels: int) -> None:
    """Check the first ``n`` images of an SR dataset (HR and LR files) from their headers."""
    from decodelab.datasets.sr import image_size

    for f in list(ds.hr_files or [])[:n] + [f for f in ds.lr_files[:n] if f is not None]:
        image_size(f, max_pixels)


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate one model; print and optionally save JSON."""
    from decodelab.config import write_json
    from decodelab.datasets.sr import load_sr_dataset
    from decodelab.vision.lsr.evaluate import evaluate_native, evaluate_sr

    _setup(args)
    bad = [s for s in args.scales if not (math.isfinite(s) and s > 0)]
    if bad:
        raise ValueError(f"--scales must be positive finite numbers, got {bad[0]}")
    if args.model == "bicubic":
        if args.mode != "sr":
            raise ValueError("--model bicubic is the SR baseline: use it with --mode sr")
        from decodelab.vision.lsr.evaluate import BicubicBaseline

        model = BicubicBaseline()
    else:
        model = load_model(args.model, "upscale").eval()
    results: dict[str, Any] = {"model": args.model, "data": args.data, "mode": args.mode,
                               "num_parameters": model.num_parameters()}  # fmt: skip
    if args.mode == "native":
        ds = load_sr_dataset(args.data, None, args.data_dir, args.split)
        n = len(ds) if args.num_images is None else min(args.num_images, len(ds))
        _check_dataset_sizes(ds, n, args.max_input_pixels)
        res = evaluate_native(model, [ds.hr(i) for i in range(n)], ds.names[:n], crop=args.crop, chunk=args.chunk)
        results["native"] = res
        print(f"native: PSNR {res['psnr']:.3f} dB, SSIM {res['ssim']:.4f} ({res['num_images']} images)")
    else:
        for s in args.scales:
            ds = load_sr_dataset(args.data, float(s), args.data_dir, args.split)
            n = len(ds) if args.num_images is None else min(args.num_images, len(ds))
            _check_dataset_sizes(ds, n, args.max_input_pixels)
            res = evaluate_sr(model, [ds[i] for i in range(n)], crop=args.crop, chunk=args.chunk)
            results[f"x{s:g}"] = res
            print(
                f"x{s:g}: PSNR-Y {res['psnr_y']:.3f} dB, SSIM-Y {res['ssim_y']:.4f}, PSNR-RGB {res['psnr_rgb']:.3f} dB"
            )
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":  # pragma: no cover
    from decodelab.cli import main

    sys.exit(main(sys.argv[1:]))
