"""``decodelab eval fmnist|shapes|vq``: domain quality of the shipped worlds (resumable).

- ``fmnist``: class accuracy of generated samples under the shipped Fashion-MNIST classifier and
  "FID (fmnist features)" against the test split, next to the noise floor (an equal-size real
  train subset vs the test split). These are domain metrics, not Inception FID.
- ``shapes``: GenEval-style scores from the symbolic detector on a fixed prompt set (GenEval's
  folder layout is not needed: images are kept per sample index).

``fmnist`` and ``shapes`` write their samples into ``--out`` in the folder format of
:mod:`decodelab.vision.sampler` (``manifest.json`` + ``shard_*/NNNNNN.png``) and ``results.json`` next
to them; re-running the same command resumes.
- ``vq``: reconstruction PSNR of a pipeline's tokenizer on a real split.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from decodelab.cli.generate import add_drafter_args, load_pipeline_from_args, parse_decoder_args
from decodelab.config import dumps_json, write_json

# Further ``decodelab eval <name>`` subcommands live in their own modules; each exposes
# ``add_eval_parser(esub)`` (``esub`` = the ``eval`` sub-parsers) and sets ``func`` on its parser.
EVAL_EXTENSIONS: list[str] = ["decodelab.cli.derain", "decodelab.cli.lsr", "decodelab.cli.eval_gen"]


def add_parsers(sub) -> None:
    p = sub.add_parser("eval", help="evaluate generated images (domain metrics of the shipped worlds)")
    esub = p.add_subparsers(dest="eval_command", metavar="WORLD")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--model", required=True, help="pipeline name or directory")
        q.add_argument("--decoder", default=None, help="default: ar, or nar for a NAR model")
        q.add_argument("--decoder-arg", action="append", metavar="KEY=VALUE")
        add_drafter_args(q)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--batch-size", type=int, default=50)
        q.add_argument("--cfg-scale", type=float, default=None, help="default: the pipeline's")
        q.add_argument("--temperature", type=float, default=None)
        q.add_argument("--top-k", type=int, default=None)
        q.add_argument("--out", required=True, help="run folder (samples + results.json); re-running resumes")
        q.add_argument("--json", default=None, help="also write the results here")

    f = esub.add_parser("fmnist", help="class accuracy + FID (fmnist features)", formatter_class=fmt)
    common(f)
    f.add_argument("--per-class", type=int, default=100, help="samples per class")
    f.set_defaults(func=run_fmnist)
    s = esub.add_parser("shapes", help="GenEval-style score with the symbolic detector", formatter_class=fmt)
    common(s)
    s.add_argument("--prompts-per-family", type=int, default=34, help="6 families -> 6x this many prompts")
    s.add_argument("--images-per-prompt", type=int, default=4)
    s.add_argument("--prompt-seed", type=int, default=2024)
    s.set_defaults(func=run_shapes)
    v = esub.add_parser("vq", help="tokenizer reconstruction PSNR on a real split", formatter_class=fmt)
    v.add_argument("--model", required=True)
    v.add_argument("--num-images", type=int, default=10000)
    v.add_argument("--json", default=None)
    v.set_defaults(func=run_vq)
    import importlib

    for module in EVAL_EXTENSIONS:
        importlib.import_module(module).add_eval_parser(esub)
    p.set_defaults(func=lambda a: p.print_help() or 1)


def _sampling(pipe, args):
    return pipe.sampling_config(cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k)


def _finish(args, results: dict) -> int:
    text = dumps_json(results, default=str)
    Path(args.out, "results.json").write_text(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
    for k, v in results["metrics"].items():
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    return 0


def _generate(pipe, conds: list, args: argparse.Namespace, sampling) -> tuple[list, dict]:
    """Samples of ``conds`` in ``args.out`` (resuming) -> (images in sample order, generation counts)."""
    from decodelab.vision.sampler import MANIFEST, load_samples, sample_to_folder

    out = Path(args.out)
    if (out / "run.json").is_file() and not (out / MANIFEST).is_file():
        raise ValueError(f"{out} holds an evaluation run of an older decodelab (run.json + images/); use another "
                         "--out folder or delete it to start over")  # fmt: skip
    stats = sample_to_folder(
        pipe, conds, out, decoder=args.decoder, decoder_kwargs=parse_decoder_args(args.decoder_arg),
        sampling=sampling, seed=args.seed, batch_size=args.batch_size,
    )  # fmt: skip
    return load_samples(out), stats


def run_fmnist(args: argparse.Namespace) -> int:
    from decodelab.eval import fmnist

    pipe = load_pipeline_from_args(args)
    if pipe.condition_kind != "class":
        raise ValueError(f"eval fmnist needs a class-conditional pipeline; {args.model} is text-conditional")
    C = pipe.num_classes
    conds = [c for c in range(C) for _ in range(args.per_class)]
    sampling = _sampling(pipe, args)
    images, stats = _generate(pipe, conds, args, sampling)
    metrics = fmnist.evaluate_generated(images, conds)
    metrics[f"noise floor: fid (fmnist features), {len(conds)} real train images"] = fmnist.noise_floor_fid(
        len(conds), seed=args.seed
    )
    return _finish(args, {"model": args.model, "sampling": vars(sampling), "generation": stats, "metrics": metrics})


def run_shapes(args: argparse.Namespace) -> int:
    from decodelab.datasets.shapes import make_prompt_set
    from decodelab.eval.shapes_geneval import score_batch

    pipe = load_pipeline_from_args(args)
    metas = make_prompt_set(args.prompts_per_family, seed=args.prompt_seed)
    rows = [m for m in metas for _ in range(args.images_per_prompt)]
    sampling = _sampling(pipe, args)
    images, stats = _generate(pipe, [m["prompt"] for m in rows], args, sampling)
    res = score_batch(images, rows)
    metrics = {"geneval_overall (shapes detector)": float(res["overall"]), "num_prompts": len(metas),
               "num_images": len(rows)}  # fmt: skip
    metrics.update({f"task {k}": float(v) for k, v in res["per_task"].items()})
    return _finish(args, {"model": args.model, "sampling": vars(sampling), "generation": stats, "metrics": metrics})


def run_vq(args: argparse.Namespace) -> int:
    import torch

    from decodelab.vision.pipeline import load_pipeline

    pipe = load_pipeline(args.model)
    world = pipe.info.get("world")
    if world == "fashion_mnist":
        from decodelab.datasets.fashion_mnist import FashionMNIST

        ds = FashionMNIST("test", image_size=32, channels=pipe.tokenizer.config.get("in_channels", 1))
        imgs = torch.stack([ds[i][0] for i in range(min(args.num_images, len(ds)))])
    elif world == "shapes_world":
        from decodelab.datasets.shapes import ShapesWorld

        ds = ShapesWorld(num_samples=args.num_images, seed=12345)
        imgs = torch.stack([ds[i]["image"] for i in range(len(ds))])
    else:
        raise ValueError(f"no real split known for the world {world!r} of {args.model}")
    from decodelab.eval.quality import psnr, psnr_from_mse

    scores, mse = [], []
    with torch.no_grad():
        for s in range(0, len(imgs), 256):
            x = (imgs[s : s + 256] + 1) / 2  # the [0, 1] scale
            rec = (pipe.tokenizer.decode(pipe.tokenizer.encode(imgs[s : s + 256])).clamp(-1, 1) + 1) / 2
            scores.append(psnr(rec, x))
            mse.append((rec - x).double().pow(2).flatten(1).mean(1))
    out = {"model": args.model, "world": world, "num_images": len(imgs),
           "psnr_db_mean_per_image": float(torch.cat(scores).mean()),
           "psnr_db_of_mean_mse": psnr_from_mse(float(torch.cat(mse).mean()))}  # fmt: skip
    print(dumps_json(out), end="")
    if args.json:
        write_json(args.json, out)
    return 0
