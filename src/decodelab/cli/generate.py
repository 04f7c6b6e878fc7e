"""``decodelab generate``: images from a pipeline with any decoder, plus a JSON record."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from decodelab.config import parse_value, write_json


def parse_decoder_args(items: list[str] | None) -> dict:
    """``["window=32", "init=vertical"]`` -> ``{"window": 32, "init": "vertical"}``."""
    out = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--decoder-arg {item!r} must look like key=value")
        out[key.strip()] = parse_value(raw)
    return out


def add_drafter_args(p: argparse.ArgumentParser) -> None:
    """``--drafter`` and ``--upsampler``: the extra models of drafter decoders (``mulo``), shared by every command."""
    p.add_argument("--drafter", default=None, metavar="NAME_OR_DIR",
                   help="drafter pipeline of drafter decoders (mulo): a shipped asset (e.g. shapes-t2i-lowres) or a "
                   "pipeline directory (default: the pipeline's own: shapes-t2i -> shapes-t2i-lowres)")  # fmt: skip
    p.add_argument("--upsampler", default=None, metavar="NAME_OR_PATH",
                   help="up-sampler of drafter decoders: bicubic (default), bilinear, nearest, lsr (the shipped "
                   "lsr-sr-small SR model) or a continuous SR model directory / checkpoint")  # fmt: skip


def load_pipeline_from_args(args: argparse.Namespace, **kwargs):
    """``load_pipeline(args.model, drafter=args.drafter, upsampler=args.upsampler, **kwargs)``."""
    from decodelab.vision.pipeline import load_pipeline

    return load_pipeline(args.model, drafter=getattr(args, "drafter", None), upsampler=getattr(args, "upsampler", None),
                         **kwargs)  # fmt: skip


def add_parser(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="generate images and a JSON record",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Generate images with a pipeline (a registered name such as fmnist-c2i / test-c2i, or a "
        "pipeline directory) and a decoder; writes PNGs and record.json into --out.",
    )
    p.add_argument("--model", required=True, help="pipeline name or directory (see `decodelab models`)")
    p.add_argument("--weights", default=None, metavar="DIR",
                   help="checkpoint directory of an adapter pipeline (janus-pro-1b, ...; default: the local "
                   "Hugging Face cache, never downloaded)")  # fmt: skip
    p.add_argument("--decoder", default=None,
                   help="decoder name (see `decodelab decoders`; default: ar, or nar for a NAR model)")  # fmt: skip
    p.add_argument("--decoder-arg", action="append", metavar="KEY=VALUE", help="decoder keyword, repeatable")
    add_drafter_args(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--class-id", type=int, nargs="+", help="class ids (class-conditional models)")
    g.add_argument("--prompt", nargs="+", help="prompts (text-conditional models)")
    p.add_argument("--num-images", type=int, default=1, help="images per class id / prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--cfg-scale", type=float, default=None, help="default: the pipeline's")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--out", default="generated", help="output directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    kwargs = {}
    if args.weights is not None:
        from decodelab.registry import PIPELINES

        if args.model not in PIPELINES or PIPELINES.get(args.model).kind != "adapter":
            raise ValueError(f"--weights is for adapter pipelines ({', '.join(PIPELINES.list(kind='adapter'))})")
        kwargs["weights"] = args.weights
    pipe = load_pipeline_from_args(args, **kwargs)
    out = pipe(
        classes=args.class_id,
        prompts=args.prompt,
        decoder=args.decoder,
        decoder_kwargs=parse_decoder_args(args.decoder_arg),
        seed=args.seed,
        num_images=args.num_images,
        batch_size=args.batch_size,
        cfg_scale=args.cfg_scale,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
    )
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for i, (img, c) in enumerate(zip(out.images, out.conditions)):
        name = f"{i:04d}_{'class' + str(c) if isinstance(c, int) else 'prompt'}.png"
        img.save(out_dir / name)
        files.append({"file": name, "condition": c})
    record = {
        "model": str(args.model),
        "trained": bool(pipe.info.get("trained", False)),
        **out.settings,
        "nfe": out.nfe,
        "wall_time_s": out.wall_time,
        "decode": [o.summary() for o in out.outputs],
        "images": files,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_json(out_dir / "record.json", record)
    note = "" if record["trained"] else " (untrained model: images are noise)"
    print(f"wrote {len(files)} images and record.json to {out_dir}{note}; nfe={out.nfe}, {out.wall_time:.2f}s")
    return 0
