"""``decodelab train --config FILE [--resume] [--out DIR] [key.sub=value ...]``.

Trains any model decodelab trains from a YAML config: its top-level ``task`` picks the task in the
one table (:data:`decodelab.train.TASKS`: vq, gpt, classifier, derain, lsr) and every task runs
through the one training loop. Dotted overrides change any config key; an unknown key is an error
listing valid ones. ``--resume`` continues the run in ``out_dir`` exactly where its last
checkpoint stopped.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from typing import Any

__all__ = ["add_parser", "build_parser", "main", "run"]

HELP = "train a model (VQ tokenizer, image-token GPT, domain classifier, derainer, LSR) from a YAML config"


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


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser (``python -m decodelab.cli.train``)."""
    return _configure(argparse.ArgumentParser(prog="decodelab train", description=HELP))


def run(args: argparse.Namespace) -> int:
    """Load the config, apply overrides and flags, train through the task table; return the exit status."""
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
    cfg = load_train_config(args.config, overrides)
    recorded = [o for o in overrides if not o.startswith(("out_dir=", "threads=", "progress=", "overwrite="))]
    result = run_training(cfg, resume=args.resume, stop_at=args.stop_at, config_path=args.config, overrides=recorded)
    if result.finished:
        print(f"finished {result.step} steps; outputs in {result.final_dir}")
        for k, v in result.metrics.items():
            print(f"  {k}: {v:.4f}" if isinstance(v, float) and math.isfinite(v) else f"  {k}: {v}")
    else:
        print(f"stopped after {result.step} steps (of {result.total_steps}); continue with --resume "
              f"(checkpoint in {result.out_dir})")  # fmt: skip
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
