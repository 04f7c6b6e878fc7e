"""``decodelab sample``: many samples in resumable PNG shards, on one or many processes (torchrun).

Single process::

    decodelab sample --model fmnist-c2i --num-samples 10000 --out samples/fmnist

Several processes (one shard per rank with ``--shard-size = N / W``; gloo on CPU, NCCL on GPU)::

    torchrun --nproc_per_node 8 -m decodelab.cli sample --model DIR --num-samples 50000 \\
        --shard-size 6250 --out samples/run --metrics fid,is,pr --ref VIRTUAL_imagenet256_labeled.npz \\
        --extractor-weights pt_inception-2015-12-05-6726825d.pth --npz samples/run.npz

Re-running the same command resumes (the folder format and resume rule are those of
:mod:`decodelab.vision.sampler`; a second run into a folder in use is refused). ``--metrics``
extracts features on every rank, gathers them in sample order and writes ``metrics.json`` (every
setting needed to reproduce the number).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from decodelab.cli.eval_gen import add_metric_args, extractor_kwargs, write_json
from decodelab.cli.generate import add_drafter_args, load_pipeline_from_args, parse_decoder_args


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sample", help="generate many samples in resumable PNG shards (torchrun for several processes)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, description=__doc__.split("\n\n")[0],
    )  # fmt: skip
    p.add_argument("--model", required=True, help="pipeline name or directory")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--num-samples", type=int, help="class-conditional: N samples, class of sample i = i %% classes")
    g.add_argument("--per-class", type=int, help="class-conditional: this many samples of every class")
    g.add_argument("--prompts", help="text-conditional: a .txt (one prompt per line) or GenEval .jsonl file")
    p.add_argument("--images-per-prompt", type=int, default=1, help="with --prompts")
    p.add_argument("--out", required=True, help="sample folder (manifest.json + shard_*/NNNNNN.png); re-run resumes")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (fixed for a folder)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="seed of the per-sample random streams")
    p.add_argument("--decoder", default=None, help="default: ar, or nar for a NAR model")
    p.add_argument("--decoder-arg", action="append", metavar="KEY=VALUE")
    add_drafter_args(p)
    p.add_argument("--cfg-scale", type=float, default=None, help="default: the pipeline's")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument(
        "--image-size-eval",
        type=int,
        default=None,
        metavar="N",
        help="save samples resized to NxN (bicubic), as LlamaGen's --image-size-eval (384 px -> 256)",
    )
    p.add_argument("--npz", default=None, help="also pack the samples as an ADM-layout .npz (arr_0 uint8 NHWC)")
    p.add_argument("--metrics", default="", help="comma list of fid,kid,is,pr computed on the samples (needs --ref)")
    add_metric_args(p, with_metrics=False)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _conditions(pipe, args: argparse.Namespace) -> list:
    if args.prompts:
        if pipe.condition_kind == "class":
            raise ValueError("this pipeline is class-conditional: pass --num-samples N or --per-class N, not --prompts")
        path = Path(args.prompts)
        if not path.is_file():
            raise FileNotFoundError(f"prompt file not found: {path}")
        if path.suffix == ".jsonl":
            from decodelab.eval.geneval import read_metadata

            prompts = [m["prompt"] for m in read_metadata(path)]
        else:
            prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [p for p in prompts for _ in range(args.images_per_prompt)]
    if pipe.condition_kind != "class":
        raise ValueError("this pipeline is text-conditional: pass --prompts FILE, not --num-samples/--per-class")
    c = pipe.num_classes
    if args.per_class is not None:
        return [k for k in range(c) for _ in range(args.per_class)]
    return [i % c for i in range(args.num_samples)]


def pack_npz(out_dir: str | Path, npz_path: str | Path) -> Path:
    """Write every sample of a folder, in order, as ``arr_0`` uint8 ``[N, H, W, 3]`` (ADM layout)."""
    from PIL import Image

    from decodelab.vision.sampler import check_complete, sample_files

    missing = check_complete(out_dir)
    if missing:
        raise ValueError(f"{out_dir} lacks {len(missing)} samples (first: {missing[0]}); re-run to finish it")
    arr = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in sample_files(out_dir)])
    npz_path = Path(npz_path)
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(npz_path, arr_0=arr)
    return npz_path


def run(args: argparse.Namespace) -> int:
    from decodelab.eval.distributed import finalize_distributed

    try:
        return _run(args)
    finally:
        finalize_distributed()


def _run(args: argparse.Namespace) -> int:
    from decodelab.eval.distributed import init_distributed
    from decodelab.vision.sampler import sample_to_folder

    rank, world = init_distributed()
    metrics = [m for m in args.metrics.split(",") if m.strip()]
    if metrics and not args.ref and any(m.strip() != "is" for m in metrics):
        raise ValueError("--metrics fid/kid/pr need --ref (reference statistics, images or dataset name)")
    if metrics and args.ref:
        from decodelab.eval.refstats import check_reference

        check_reference(args.ref)  # fail before sampling, not after
    pipe = load_pipeline_from_args(args)
    sampling = pipe.sampling_config(cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k,
                                    top_p=args.top_p)  # fmt: skip
    conds = _conditions(pipe, args)
    stats = sample_to_folder(
        pipe, conds, args.out, decoder=args.decoder, decoder_kwargs=parse_decoder_args(args.decoder_arg),
        sampling=sampling, seed=args.seed, batch_size=args.batch_size, shard_size=args.shard_size,
        image_size=args.image_size_eval, progress=not args.no_progress,
    )  # fmt: skip
    record = {"model": str(args.model), "out": str(Path(args.out).resolve()), "sampling_run": stats}
    if rank == 0 and args.npz:
        record["npz"] = str(pack_npz(args.out, args.npz))
    if metrics:
        from decodelab.eval.metrics import compute_metrics

        res = compute_metrics(args.out, args.ref, extractor=args.extractor, extractor_kwargs=extractor_kwargs(args),
                              metrics=metrics, batch_size=args.eval_batch_size, use_cache=not args.no_cache,
                              progress=not args.no_progress, **_metric_options(args))  # fmt: skip
        if res is not None:
            record.update(res)
    if rank == 0:
        write_json(Path(args.out) / ("metrics.json" if metrics else "sample_record.json"), record, args.json)
        print(f"{stats['num_samples']} samples in {args.out} ({stats['generated']} generated, {stats['resumed']} "
              f"resumed, {world} process(es))")  # fmt: skip
        for k, v in record.get("metrics", {}).items():
            print(f"{k}: {v:.4f}")
    return 0


def _metric_options(args: argparse.Namespace) -> dict:
    return {"is_splits": args.is_splits, "pr_k": args.pr_k, "kid_subsets": args.kid_subsets,
            "kid_subset_size": args.kid_subset_size}  # fmt: skip
