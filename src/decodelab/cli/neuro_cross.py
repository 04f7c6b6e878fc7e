"""Issue-23 subcommands of ``decodelab neuro``: the cross-subject K-sweep and shapes-world brain captioning.

:func:`add_crosssubject_commands` adds them to the ``neuro`` subparsers; ``python -m decodelab.cli.neuro_cross
SUBCOMMAND ...`` runs them without it. Both read a simulated (or real) NSD tree made with
``simulate-fmri`` (:mod:`decodelab.cli.neuro_fmri`).

- ``crosssubject --data ROOT --out RESULTS.json [--train-subjects 1 2 5 --heldout 7 --k 30 100 300 700]``:
  in-context decoding of the held-out subject with no fine-tuning vs ridge on the same K images vs
  the training subjects' ridge after functional alignment; writes the JSON and a PNG plot next to it
  (:func:`decodelab.neuro.runs.crosssubject.k_sweep`); ``--diagnose`` adds the rows that locate the
  in-context decoder's weak stage (:data:`decodelab.neuro.runs.crosssubject.DIAGNOSTICS`);
- ``caption --data ROOT --out FOLDER [--subject 1 --prefix neuro_captioning]``: ridge to the MiniLM
  caption embedding, nearest grammar caption, ``shapes-t2i`` image; ``FOLDER/PREFIX.json`` and
  ``FOLDER/PREFIX_grid.png`` (:func:`decodelab.neuro.runs.crosssubject.caption_experiment`).

Every command prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_crosssubject_commands", "main", "run_caption", "run_crosssubject"]


def run_crosssubject(args: argparse.Namespace) -> int:
    import torch

    from decodelab.neuro.runs.crosssubject import k_sweep, plot_k_sweep

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if out.suffix != ".json":
        raise SystemExit(f"--out must name a .json file, got {out}")
    res = k_sweep(
        args.data,
        args.train_subjects,
        args.heldout,
        k_values=args.k,
        embed_dim=args.embed_dim or None,
        seed=args.seed,
        steps_encoder=args.steps_encoder,
        steps_pretrain=args.steps_pretrain,
        steps_meta=args.steps_meta,
        diagnose=args.diagnose,
        log=None if args.quiet else print,
    )
    res["plot"] = out.with_suffix(".png").name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    plot_k_sweep(res, out.with_suffix(".png"))
    print(json.dumps({k: res[k] for k in ("heldout", "n_test", "chance", "rows", "wall_time_s")}, indent=2))
    return 0


def run_caption(args: argparse.Namespace) -> int:
    import torch

    from decodelab.neuro.runs.crosssubject import caption_experiment

    if args.threads:
        torch.set_num_threads(args.threads)
    res = caption_experiment(
        args.data,
        args.out,
        args.subject,
        pipeline=args.pipeline,
        seed=args.seed,
        n_grid=args.n_grid,
        prefix=args.prefix,
    )
    keys = ("caption_attributes", "caption_attributes_chance_shuffled", "caption_metrics",
            "image_geneval_vs_true_caption", "image_geneval_chance_shuffled", "wall_time_s")  # fmt: skip
    print(json.dumps({k: res[k] for k in keys}, indent=2))
    return 0


def add_crosssubject_commands(subparsers: Any) -> None:
    """Add ``crosssubject`` and ``caption`` to ``subparsers``."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = subparsers.add_parser("crosssubject", help="in-context cross-subject K-sweep", formatter_class=fmt)
    p.add_argument("--data", required=True, help="NSD root (simulated with simulate-fmri, several subjects)")
    p.add_argument("--out", required=True, help="results .json (the plot is written next to it as .png)")
    p.add_argument("--train-subjects", type=int, nargs="+", default=[1, 2, 5])
    p.add_argument("--heldout", type=int, default=7)
    p.add_argument("--k", type=int, nargs="+", default=[30, 100, 300, 700], help="context sizes")
    p.add_argument("--embed-dim", type=int, default=16, help="principal axes of the embedding kept (0: all)")
    p.add_argument("--steps-encoder", type=int, default=300, help="stage-1 meta-training steps")
    p.add_argument("--steps-pretrain", type=int, default=300, help="stage-2 synthetic pretraining steps")
    p.add_argument("--steps-meta", type=int, default=300, help="stage-2 meta-training steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument(
        "--diagnose",
        action="store_true",
        help="add diagnostic rows per K: stage 2 fed closed-form per-voxel ridge encoders, closed-form inversion "
        "of both encoders, and the encoders' test correlation against the noise ceiling",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run_crosssubject)

    p = subparsers.add_parser("caption", help="shapes-world brain captioning", formatter_class=fmt)
    p.add_argument("--data", required=True, help="NSD root of a shapes-world simulation")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--subject", type=int, default=1)
    p.add_argument("--pipeline", default="shapes-t2i", help="text-to-image pipeline (name or folder)")
    p.add_argument("--prefix", default="neuro_captioning", help="file names: PREFIX.json, PREFIX_grid.png")
    p.add_argument("--n-grid", type=int, default=8, help="examples in the grid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.set_defaults(func=run_caption)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m decodelab.cli.neuro_cross SUBCOMMAND ...``."""
    parser = argparse.ArgumentParser(prog="python -m decodelab.cli.neuro_cross", description=__doc__.splitlines()[0])
    add_crosssubject_commands(parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
