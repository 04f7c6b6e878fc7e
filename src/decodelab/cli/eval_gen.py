"""``decodelab eval fid|geneval|clip|psnr``: generation and image quality with published protocols.

Each subcommand parses its options, calls one library function and writes a JSON file holding the
numbers and every setting needed to reproduce them. ``--help`` documents each protocol option.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from decodelab.datasets.sr import MAX_INPUT_PIXELS
from decodelab.eval.metrics import DEFAULTS

_FMT = argparse.ArgumentDefaultsHelpFormatter


def write_json(path: str | Path | None, obj: dict[str, Any], extra: str | None = None) -> None:
    """Write ``obj`` as strict JSON (:func:`decodelab.config.write_json`) to ``path`` and ``extra`` when given."""
    from decodelab.config import write_json as write_strict

    for p in [path, extra]:
        if p:
            write_strict(p, obj, default=str)


def add_metric_args(p: argparse.ArgumentParser, with_metrics: bool = True) -> None:
    """Feature-network and metric options shared by ``eval fid`` and ``sample``."""
    from decodelab.eval.resize import RESIZE_MODES

    if with_metrics:
        p.add_argument("--metrics", default="fid", help="comma list of fid, kid, is, pr")
    p.add_argument(
        "--ref",
        default=None,
        help="reference: ADM batch .npz (mu/sigma used as stored, e.g. VIRTUAL_imagenet256_labeled.npz), "
        "statistics .npz, image folder, .npz sample file, or fashion_mnist:train|test, mnist:all",
    )
    p.add_argument(
        "--extractor",
        default=DEFAULTS["extractor"],
        help="feature network: inception-2015-12-05 (standard FID), efficientnet-lite0 (offline), "
        "fmnist-classifier (domain); non-standard networks label their results",
    )
    p.add_argument(
        "--extractor-weights",
        default=None,
        help="weights file, e.g. pt_inception-2015-12-05-6726825d.pth (default: $DECODELAB_CACHE/weights)",
    )
    p.add_argument("--no-check-hash", action="store_true", help="accept weights whose sha256 is not the known one")
    p.add_argument(
        "--resize-mode",
        default=None,
        choices=list(RESIZE_MODES),
        help="resize to the network input (default: the extractor's; Inception: tf1-bilinear as ADM/"
        "torch-fidelity; pytorch-bilinear = pytorch-fid, pil-bicubic = clean-fid clean, "
        "antialias-bilinear = torchmetrics>=1.8)",
    )
    p.add_argument("--input-size", type=int, default=None, help="network input side (efficientnet-lite0 only)")
    p.add_argument("--is-splits", type=int, default=DEFAULTS["is_splits"], help="inception score splits (ADM: 10)")
    p.add_argument("--pr-k", type=int, default=DEFAULTS["pr_k"], help="precision/recall neighbourhood k")
    p.add_argument("--kid-subsets", type=int, default=DEFAULTS["kid_subsets"])
    p.add_argument("--kid-subset-size", type=int, default=DEFAULTS["kid_subset_size"])
    p.add_argument("--eval-batch-size", type=int, default=DEFAULTS["batch_size"], help="images per feature pass")
    p.add_argument("--no-cache", action="store_true", help="do not read/write cached reference statistics")
    p.add_argument("--json", default=None, help="also write the result JSON here")


def extractor_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of the chosen extractor from the shared CLI options."""
    kw: dict[str, Any] = {"weights": args.extractor_weights}
    if args.extractor == "fmnist-classifier":
        if args.resize_mode is not None:
            raise ValueError("the fmnist-classifier extractor has its own preprocessing: drop --resize-mode")
    else:
        kw.update(resize_mode=args.resize_mode, check_hash=not args.no_check_hash)
    if args.input_size is not None:
        if args.extractor != "efficientnet-lite0":
            raise ValueError(f"--input-size applies to efficientnet-lite0 only, not {args.extractor}")
        kw["input_size"] = args.input_size
    return kw


def add_eval_parser(esub) -> None:
    f = esub.add_parser("fid", formatter_class=_FMT, help="FID / KID / IS / precision-recall of samples vs a reference",
                        description="Standard protocol (LlamaGen/ADM ImageNet-256): --extractor inception-2015-12-05 "
                        "--resize-mode tf1-bilinear --metrics fid,is,pr --ref VIRTUAL_imagenet256_labeled.npz on 50k "
                        "samples; IS over 10 contiguous splits of the unbiased logits; precision/recall with k=3. "
                        "Runs under torchrun (features split across ranks, gathered in sample order).")  # fmt: skip
    f.add_argument("--samples", required=True, help="folder of PNGs (e.g. `decodelab sample --out`) or ADM .npz")
    add_metric_args(f)
    f.add_argument("--out", default=None, help="result JSON (default: <samples>/fid_results.json or next to the npz)")
    f.set_defaults(func=run_fid)

    g = esub.add_parser("geneval", formatter_class=_FMT, help="GenEval: generate in GenEval's layout and score",
                        description="GenEval protocol: 4 images per prompt in <out>/<00000>/samples/0000.png; "
                        "detections kept at score > 0.3 (> 0.9 for counting), at most 16 per class; colour by "
                        "CLIP zero-shot on the mask-composited crop over grey (10 colours x 3 templates); position "
                        "by box centres with a 0.1 margin; overall = mean of the 6 task scores.")  # fmt: skip
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--metadata", help="GenEval metadata jsonl (the official prompts/evaluation_metadata.jsonl)")
    src.add_argument("--shapes-prompts", type=int, help="generate a shapes-world prompt set, N prompts per task")
    g.add_argument("--prompt-seed", type=int, default=2024, help="seed of --shapes-prompts")
    g.add_argument("--out", required=True, help="GenEval folder (generated into, then scored; re-running resumes)")
    g.add_argument("--model", default=None, help="pipeline to generate with (omit to score existing images)")
    g.add_argument("--images-per-prompt", type=int, default=4)
    g.add_argument("--seed", type=int, default=42, help="GenEval re-seeds every prompt with this seed")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--decoder", default=None, help="default: ar, or nar for a NAR model")
    g.add_argument("--decoder-arg", action="append", metavar="KEY=VALUE")
    from decodelab.cli.generate import add_drafter_args

    add_drafter_args(g)
    g.add_argument("--cfg-scale", type=float, default=None)
    g.add_argument("--temperature", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument(
        "--detector",
        choices=["shapes", "mask2former"],
        default="shapes",
        help="shapes: the symbolic shapes-world detector (offline); mask2former: transformers Mask2Former "
        "COCO instance model + CLIP colour classifier (needs both weights)",
    )
    g.add_argument(
        "--detector-weights", default=None, help="Mask2Former folder (facebook/mask2former-swin-small-coco-instance)"
    )
    g.add_argument(
        "--clip-weights",
        default=None,
        help="CLIP ViT-L/14: HF folder (openai/clip-vit-large-patch14) or open_clip checkpoint",
    )
    g.add_argument("--device", default="cpu")
    g.add_argument("--threshold", type=float, default=0.3)
    g.add_argument("--counting-threshold", type=float, default=0.9)
    g.add_argument("--max-objects", type=int, default=16)
    g.add_argument("--position-threshold", type=float, default=0.1)
    g.add_argument("--json", default=None, help="also write the summary JSON here")
    g.set_defaults(func=run_geneval)

    c = esub.add_parser("clip", formatter_class=_FMT, help="CLIP score (100 x cosine, torchmetrics convention)",
                        description="CLIP score = max(mean_i 100 cos(E_I, E_T), 0) with CLIP ViT-L/14; captions "
                        "truncated to 77 tokens.")  # fmt: skip
    c.add_argument("--images", required=True, help="GenEval folder (captions = prompts) or folder of PNGs")
    c.add_argument("--captions", default=None, help="for a plain folder: .txt, one caption per image in file order")
    c.add_argument("--clip-weights", default=None, help="HF CLIP folder or open_clip checkpoint")
    c.add_argument("--clip-backend", choices=["auto", "transformers", "open_clip"], default="auto")
    c.add_argument("--clip-model", default="ViT-L-14", help="open_clip architecture")
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--device", default="cpu")
    c.add_argument("--json", default=None)
    c.set_defaults(func=run_clip)

    q = esub.add_parser("psnr", formatter_class=_FMT, help="PSNR / SSIM (/ LPIPS) of image pairs",
                        description="Pairs are files with the same relative path in --pred and --target. RGB "
                        "on [0, 1] by default; --y-channel uses MATLAB rgb2ycbcr luma; --shave crops "
                        "borders.")  # fmt: skip
    q.add_argument("--pred", required=True)
    q.add_argument("--target", required=True)
    q.add_argument("--y-channel", action="store_true")
    q.add_argument("--shave", type=int, default=0)
    q.add_argument("--ssim", action="store_true", help="also SSIM (11x11 Gaussian, sigma 1.5)")
    q.add_argument("--lpips-weights", default=None, help="also LPIPS-Alex: torchvision alexnet-owt-7be5be79.pth")
    q.add_argument("--json", default=None, help="write the results here (nothing is written into --pred)")
    q.add_argument("--max-input-pixels", type=int, default=MAX_INPUT_PIXELS,
                   help="largest accepted image (width x height), checked from the file header")  # fmt: skip
    q.set_defaults(func=run_psnr)


def _print_metrics(values: dict[str, Any]) -> None:
    for k, v in values.items():
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")


def run_fid(args: argparse.Namespace) -> int:
    from decodelab.eval.distributed import finalize_distributed

    try:
        return _run_fid(args)
    finally:
        finalize_distributed()


def _run_fid(args: argparse.Namespace) -> int:
    from decodelab.eval.distributed import init_distributed
    from decodelab.eval.metrics import compute_metrics

    rank, _ = init_distributed()
    metrics = [m for m in args.metrics.split(",") if m.strip()]
    res = compute_metrics(args.samples, args.ref, extractor=args.extractor, extractor_kwargs=extractor_kwargs(args),
                          metrics=metrics, batch_size=args.eval_batch_size, use_cache=not args.no_cache,
                          is_splits=args.is_splits, pr_k=args.pr_k, kid_subsets=args.kid_subsets,
                          kid_subset_size=args.kid_subset_size)  # fmt: skip
    if rank != 0 or res is None:
        return 0
    s = Path(args.samples)
    out = args.out or (s / "fid_results.json" if s.is_dir() else s.with_name(s.stem + "_fid_results.json"))
    write_json(out, res, args.json)
    _print_metrics(res["metrics"])
    if not res["settings"]["standard_protocol"]:
        print("note: not the standard Inception FID protocol (see settings in the JSON)", file=sys.stderr)
    return 0


def run_geneval(args: argparse.Namespace) -> int:
    from decodelab.eval import geneval

    out = Path(args.out)
    if args.metadata:
        metas = geneval.read_metadata(args.metadata)
    else:
        from decodelab.datasets.shapes import make_prompt_set

        metas = make_prompt_set(args.shapes_prompts, seed=args.prompt_seed, path=out / "prompts.jsonl")
    record: dict[str, Any] = {"metadata": args.metadata or str(out / "prompts.jsonl"), "num_prompts": len(metas)}
    if args.model:
        from decodelab.cli.generate import load_pipeline_from_args, parse_decoder_args
        from decodelab.vision.sampler import generate_geneval

        pipe = load_pipeline_from_args(args)
        sampling = pipe.sampling_config(cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k)
        record["generation"] = generate_geneval(
            pipe, metas, out, images_per_prompt=args.images_per_prompt, decoder=args.decoder,
            decoder_kwargs=parse_decoder_args(args.decoder_arg), sampling=sampling, seed=args.seed,
            batch_size=args.batch_size,
        )  # fmt: skip
        record["model"] = str(args.model)
    else:
        geneval.write_prompt_folders(out, metas)
    if args.detector == "shapes":
        from decodelab.eval.shapes_geneval import ShapesDetector

        detector, colors = ShapesDetector(), None
        record["detector"] = {**detector.settings(), "label": "geneval (shapes detector)"}
    else:
        from decodelab.eval.geneval_models import load_geneval_models

        detector, colors = load_geneval_models(args.detector_weights, args.clip_weights, args.device)
        record["detector"] = {**detector.settings(), **colors.settings()}
    rules = {"threshold": args.threshold, "counting_threshold": args.counting_threshold,
             "max_objects": args.max_objects, "position_threshold": args.position_threshold}  # fmt: skip
    res = geneval.score_folder(out, detector, color_classifier=colors, **rules)
    res.pop("per_image")
    record.update({"rules": rules, "scores": res, "results_file": str(out / geneval.RESULTS_FILE)})
    write_json(out / "geneval.json", record, args.json)
    print(f"overall: {res['overall']:.4f}  ({res['num_images']} images, {res['num_prompts']} prompts)")
    _print_metrics({f"task {k}": v for k, v in res["per_task"].items()})
    return 0


def run_clip(args: argparse.Namespace) -> int:
    from PIL import Image

    from decodelab.eval.clip_score import ClipModel, clip_scores
    from decodelab.eval.images import list_image_files

    root = Path(args.images)
    files = list_image_files(root)
    if args.captions:
        caps = [c.strip() for c in Path(args.captions).read_text(encoding="utf-8").splitlines() if c.strip()]
    else:  # GenEval layout: the prompt of <prompt>/samples/<n>.png
        caps = []
        for f in files:
            meta = f.parent.parent / "metadata.jsonl"
            if not meta.is_file():
                raise ValueError(f"{f} has no GenEval metadata.jsonl two folders up: pass --captions FILE")
            caps.append(json.loads(meta.read_text())["prompt"])
    if len(caps) != len(files):
        raise ValueError(f"{len(files)} images but {len(caps)} captions")
    model = ClipModel(args.clip_weights, backend=args.clip_backend, model_name=args.clip_model, device=args.device)
    per = clip_scores([Image.open(f) for f in files], caps, model, batch_size=args.batch_size)
    res = {"metrics": {"clip_score": float(max(per.mean(), 0.0)), "clip_score_std": float(per.std())},
           "settings": {**model.settings(), "num_images": len(files), "images": str(root.resolve()),
                        "convention": "torchmetrics: max(mean(100 * cos), 0)"}}  # fmt: skip
    write_json(root / "clip_score.json" if root.is_dir() else "clip_score.json", res, args.json)
    _print_metrics(res["metrics"])
    return 0


def run_psnr(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from decodelab.datasets.sr import read_image
    from decodelab.eval import quality
    from decodelab.eval.images import list_image_files

    pred_root, tgt_root = Path(args.pred), Path(args.target)
    files = list_image_files(pred_root)
    if not files:
        raise ValueError(f"no PNG images in {pred_root}")
    lp = quality.load_lpips(args.lpips_weights) if args.lpips_weights else None
    rows: dict[str, list[float]] = {"psnr": [], "ssim": [], "lpips": []}
    for f in files:
        t = tgt_root / f.relative_to(pred_root)
        if not t.is_file():
            raise FileNotFoundError(f"no target for {f} (expected {t})")
        a, b = (read_image(x, max_pixels=args.max_input_pixels, dtype=torch.float64) for x in (f, t))
        if a.shape != b.shape:
            raise ValueError(f"{f} and {t} differ in size: {tuple(a.shape)} vs {tuple(b.shape)}")
        rows["psnr"].append(float(quality.psnr(a, b, y_channel=args.y_channel, shave=args.shave)))
        if args.ssim:
            rows["ssim"].append(float(quality.ssim(a, b, y_channel=args.y_channel, shave=args.shave)))
        if lp is not None:
            rows["lpips"].append(float(quality.lpips_distance(a[None].float(), b[None].float(), model=lp)[0]))
    metrics = {f"{k}_mean": float(np.mean(v)) for k, v in rows.items() if v}
    res = {"metrics": metrics, "settings": {"pred": str(pred_root.resolve()), "target": str(tgt_root.resolve()),
           "num_images": len(files), "y_channel": args.y_channel, "shave": args.shave, "data_range": 1.0,
           "psnr": "mean over images of per-image PSNR"}}  # fmt: skip
    write_json(args.json, res)
    _print_metrics(metrics)
    return 0
