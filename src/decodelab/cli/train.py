"""``decodelab train --config FILE [--resume] [--out DIR] [key.sub=value ...]``.

Trains a VQ tokenizer or an image-token GPT from a YAML config (its top-level ``task`` picks the
trainer). Dotted overrides change any config key; an unknown key is an error listing valid ones.
``--resume`` continues the run in ``out_dir`` exactly where its last checkpoint stopped.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

__all__ = ["add_parser", "build_parser", "main", "run"]

HELP = "train a VQ tokenizer, an image-token GPT or the domain classifier from a YAML config"


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", required=True, help="training YAML (e.g. configs/embedded/fmnist-c2i-vq.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue the run in the output directory")
    parser.add_argument("--out", default=None, help="output directory (overrides the config's out_dir)")
    parser.add_argument(
        "--stop-at", type=int, default=None, help="stop with a checkpoint after this many steps (resume later)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (overrides the config)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    parser.set_defaults(func=run)
    return parser


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``train`` subcommand on an ``argparse`` sub-parser collection."""
    parser = subparsers.add_parser("train", help=HELP, description=__doc__.split("\n\n")[0] + "\n\n" + HELP)
    return _configure(parser)


# ``task: <name>`` configs handled outside the tokenizer/GPT trainers: module exposing
# ``run_from_cli(args, overrides) -> int`` (``args`` has config, resume, stop_at, out, threads).
TASK_MODULES: dict[str, str] = {"derain": "decodelab.derain.train", "lsr": "decodelab.vision.lsr.train"}


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser (``python -m decodelab.cli.train``)."""
    return _configure(argparse.ArgumentParser(prog="decodelab train", description=HELP))


def run(args: argparse.Namespace) -> int:
    """Load the config, apply overrides and flags, train; return the exit status."""
    from decodelab.train import load_train_config, run_training

    overrides = list(args.overrides or [])
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"overrides must look like key.sub=value, got {', '.join(bad)}")
    if args.out is not None:
        overrides.append(f"out_dir={args.out}")
    if args.threads is not None:
        overrides.append(f"threads={args.threads}")
    if args.no_progress:
        overrides.append("progress=false")
    task = _task(args.config)
    if task == "classifier":
        return _run_classifier(args, overrides)
    if task in TASK_MODULES:
        import importlib

        return int(importlib.import_module(TASK_MODULES[task]).run_from_cli(args, overrides))
    cfg = load_train_config(args.config, overrides)
    recorded = [o for o in overrides if not o.startswith(("out_dir=", "threads=", "progress=", "overwrite="))]
    result = run_training(cfg, resume=args.resume, stop_at=args.stop_at, config_path=args.config, overrides=recorded)
    if result.finished:
        print(f"finished {result.step} steps; outputs in {result.final_dir}")
        for k, v in result.metrics.items():
            print(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")
    else:
        print(f"stopped after {result.step} steps; continue with --resume (checkpoint in {result.out_dir})")
    return 0


def _task(path: str) -> str:
    from decodelab.config import load_yaml

    return str(load_yaml(path).get("task", ""))


def _run_classifier(args: argparse.Namespace, overrides: list[str]) -> int:
    """``task: classifier`` configs train the domain classifier (``decodelab.train.classifier``)."""
    from decodelab.train.classifier import load_classifier_config, train_from_config

    if args.resume or args.stop_at is not None:
        raise ValueError("the classifier trainer has no --resume/--stop-at: it trains in a few minutes from scratch")
    overrides = [o for o in overrides if not o.startswith("progress=")]
    cfg = load_classifier_config(args.config, overrides)
    result = train_from_config(cfg, command=f"decodelab train --config {args.config}")
    print(f"finished {result.steps} steps; test accuracy {result.test_accuracy:.4f}; outputs in {result.out_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"decodelab train: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
