"""fMRI subcommands of ``decodelab neuro``: simulated NSD, ridge fit, reconstruction, evaluation.

:func:`add_fmri_commands` adds them to the ``neuro`` subparsers (``decodelab.cli.neuro`` hooks it in);
``python -m decodelab.cli.neuro_fmri SUBCOMMAND ...`` runs them without it.

- ``simulate-fmri --out ROOT [--world fmnist|shapes --subjects 1 2 --noise 1.0 ...]``: a simulated NSD
  tree (:func:`decodelab.neuro.simulate_fmri.simulate_nsd`);
- ``fit-fmri --data ROOT --out RUN [--subject 1]``: ridge from betas to tokenizer latents and
  conditions, test predictions in ``RUN/predictions.npz``;
- ``reconstruct-fmri --data ROOT --out RUN [--strength 0.75 --candidates 16 --select pixels]``: stage-1
  and stage-2 images in ``RUN/reconstructions.npz`` (with ``--candidates N`` the stage-2 image is the
  best of N samples by its match to the fMRI predictions);
- ``eval-fmri --data ROOT --out RUN``: ``RUN/results.json`` and ``RUN/grid.png``;
- ``run-fmri --data ROOT --out RUN``: the three steps (each skipped when its output exists).

Every command prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

__all__ = ["add_fmri_commands", "main", "run_eval", "run_fit", "run_reconstruct", "run_run", "run_simulate"]


def _print(res: dict[str, Any]) -> None:
    print(json.dumps(res, indent=2, default=str))


def run_simulate(args: argparse.Namespace) -> int:
    from decodelab.neuro.simulate_fmri import simulate_nsd

    _print(
        simulate_nsd(
            args.out,
            args.subjects,
            world=args.world,
            noise=args.noise,
            n_train=args.n_train,
            n_test=args.n_test,
            trials_per_session=args.trials_per_session,
            seed=args.seed,
            overwrite=args.overwrite,
        )
    )
    return 0


def _data(args: argparse.Namespace) -> Any:
    from decodelab.neuro.runs.fmri import load_fmri_data

    return load_fmri_data(args.data, args.subject, world=args.world)


def run_fit(args: argparse.Namespace) -> int:
    import numpy as np

    from decodelab.neuro.runs.fmri import fit_step

    path = fit_step(args.out, _data(args), pipeline=args.pipeline, overwrite=args.overwrite)
    with np.load(path) as z:
        _print(
            {
                "predictions": str(path),
                "alpha_latents": float(z["alpha_latents"]),
                "alpha_semantic": float(z["alpha_semantic"]),
                "n_test": int(len(z["latents"])),
            }
        )
    return 0


def run_reconstruct(args: argparse.Namespace) -> int:
    from decodelab.neuro.runs.fmri import reconstruct_step

    path = reconstruct_step(
        args.out,
        _data(args),
        pipeline=args.pipeline,
        strength=args.strength,
        rescale=not args.no_rescale,
        seed=args.seed,
        candidates=args.candidates,
        select=args.select,
        overwrite=args.overwrite,
    )
    _print({"reconstructions": str(path)})
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from decodelab.neuro.runs.fmri import evaluate_run

    _print(
        evaluate_run(
            args.out,
            _data(args),
            network_weights=args.network_weights,
            seed=args.seed,
            extra={"subject": args.subject},
            overwrite=args.overwrite,
        )
    )
    return 0


def run_run(args: argparse.Namespace) -> int:
    from decodelab.neuro.runs.fmri import run_fmri

    _print(
        run_fmri(
            args.out,
            args.data,
            args.subject,
            strength=args.strength,
            rescale=not args.no_rescale,
            seed=args.seed,
            candidates=args.candidates,
            select=args.select,
            pipeline=args.pipeline,
            network_weights=args.network_weights,
            overwrite=args.overwrite,
        )
    )
    return 0


def _common(p: argparse.ArgumentParser, *, generation: bool = False, network: bool = False) -> None:
    p.add_argument("--data", required=True, help="NSD root (real or simulated)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--subject", type=int, default=1)
    p.add_argument(
        "--world",
        default=None,
        choices=["fmnist", "shapes"],
        help="embedded world (default: from the simulation's simulation.json)",
    )
    p.add_argument("--pipeline", default=None, help="generator (default: fmnist-c2i / shapes-t2i by world)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="redo the step even when its output exists")
    if generation:
        p.add_argument("--strength", type=float, default=0.75, help="fraction of stage-1 tokens resampled")
        p.add_argument("--no-rescale", action="store_true", help="skip Brain-Diffuser's post-hoc rescaling")
        p.add_argument(
            "--candidates",
            type=int,
            default=1,
            help="stage-2 samples per image; the kept one is the best match to the fMRI predictions (--select)",
        )
        p.add_argument(
            "--select",
            default="pixels",
            choices=["pixels", "latents"],
            help="best-of-N criterion: correlation with the ridge-predicted luminance or tokenizer latents",
        )
    if network:
        p.add_argument(
            "--network-weights", default=None, help="efficientnet-lite0 weights (default: the installed package's file)"
        )


def add_fmri_commands(subparsers: Any) -> None:
    """Add ``simulate-fmri``, ``fit-fmri``, ``reconstruct-fmri``, ``eval-fmri`` and ``run-fmri`` to ``subparsers``."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = subparsers.add_parser("simulate-fmri", help="write a simulated NSD tree", formatter_class=fmt)
    p.add_argument("--out", required=True, help="output folder (the NSD root)")
    p.add_argument("--world", default="fmnist", choices=["fmnist", "shapes"])
    p.add_argument("--subjects", type=int, nargs="+", default=[1, 2])
    p.add_argument("--noise", type=float, default=1.0, help="noise sd multiplier; 1 = NSD-calibrated")
    p.add_argument("--n-train", type=int, default=650, help="training images per subject")
    p.add_argument("--n-test", type=int, default=100, help="shared test images")
    p.add_argument("--trials-per-session", type=int, default=750)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run_simulate)

    p = subparsers.add_parser("fit-fmri", help="ridge from betas to latents and conditions", formatter_class=fmt)
    _common(p)
    p.set_defaults(func=run_fit)
    p = subparsers.add_parser("reconstruct-fmri", help="stage-1 and stage-2 images", formatter_class=fmt)
    _common(p, generation=True)
    p.set_defaults(func=run_reconstruct)
    p = subparsers.add_parser("eval-fmri", help="NSD metrics of the reconstructions", formatter_class=fmt)
    _common(p, network=True)
    p.set_defaults(func=run_eval)
    p = subparsers.add_parser("run-fmri", help="fit, reconstruct and evaluate", formatter_class=fmt)
    _common(p, generation=True, network=True)
    p.set_defaults(func=run_run)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m decodelab.cli.neuro_fmri SUBCOMMAND ...``."""
    parser = argparse.ArgumentParser(prog="python -m decodelab.cli.neuro_fmri", description=__doc__.splitlines()[0])
    add_fmri_commands(parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
