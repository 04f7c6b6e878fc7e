"""``decodelab neuro <subcommand>``: brain decoding (MEG here; fMRI in :mod:`decodelab.cli.neuro_fmri`,
cross-subject decoding and brain captioning in :mod:`decodelab.cli.neuro_cross`).

Subcommands:

- ``simulate --modality meg --out DIR [--snr X --n-images N --n-subjects S --seed K]``: simulated
  THINGS-MEG from Fashion-MNIST images (``preprocessed_P{n}-epo.fif`` + ``world.npz``);
- ``fit-meg --data DIR --out RUN [--resume] [key=value ...]``: train the brain module (task ``meg``
  of the one training loop; keys of ``MegTrainConfig``);
- ``eval-meg --data DIR [--model RUN] --out DIR``: brain module vs linear ridge, retrieval on the
  averaged test images, time-resolved curves, ``results.json``, ``retrieval.png``, ``time_resolved.png``;
- ``reconstruct --modality meg --data DIR --out DIR``: decoded classes -> ``fmnist-c2i`` images and
  their class accuracy (``reconstruction_<source>.json``, ``reconstructions_<source>.png``).

Adding a modality: put its functions in :data:`SIMULATORS` / :data:`RECONSTRUCTORS` (``--modality``
choices come from them) and its own fit / eval subcommands in :func:`add_parser`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

__all__ = ["RECONSTRUCTORS", "SIMULATORS", "add_parser", "run"]

HELP = "brain decoding: simulated MEG/fMRI, MEG brain module, fMRI ridge pipelines, cross-subject decoding, captions"


def _simulate_meg(args: argparse.Namespace) -> dict[str, Any]:
    from decodelab.neuro.runs.meg_experiment import simulate_meg

    return simulate_meg(args.out, n_images=args.n_images, n_subjects=args.n_subjects, snr=args.snr,
                        n_sessions=args.n_sessions, n_test=args.n_test, seed=args.seed)  # fmt: skip


def _reconstruct_meg(args: argparse.Namespace) -> dict[str, Any]:
    from decodelab.neuro.runs.meg_experiment import reconstruct_meg

    return reconstruct_meg(args.data, args.out, predictions=args.predictions, source=args.source,
                           n_images=args.n_images, seed=args.seed)  # fmt: skip


#: ``--modality`` -> function(args) -> JSON-able summary.
SIMULATORS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {"meg": _simulate_meg}
RECONSTRUCTORS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {"meg": _reconstruct_meg}


def _print(res: dict[str, Any]) -> None:
    print(json.dumps(res, indent=2, default=str))


def run_simulate(args: argparse.Namespace) -> int:
    _print(SIMULATORS[args.modality](args))
    return 0


def run_fit_meg(args: argparse.Namespace) -> int:
    from decodelab.neuro.runs.meg_experiment import fit_meg

    overrides = list(args.overrides or [])
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"overrides must look like key=value (keys of MegTrainConfig), got {', '.join(bad)}")
    if args.threads is not None:
        overrides.append(f"threads={args.threads}")
    if args.no_progress:
        overrides.append("progress=false")
    result = fit_meg(args.data, args.out, resume=args.resume, overrides=overrides, stop_at=args.stop_at)
    if not result.finished:
        print(f"stopped after {result.step} of {result.total_steps} steps; continue with --resume ({result.out_dir})")
        return 0
    print(f"finished {result.step} steps in {result.card.get('train_time_s')} s; model in {result.final_dir}")
    _print({k: round(v, 4) for k, v in result.metrics.items() if "small" in k})
    return 0


def run_eval_meg(args: argparse.Namespace) -> int:
    from decodelab.neuro.runs.meg_experiment import eval_meg

    res = eval_meg(args.data, args.model, args.out, target=args.target, time_resolved_curves=not args.no_time_resolved,
                   noise_normalization=args.noise_normalization)  # fmt: skip
    summary = {k: v["summary"] for k, v in res.items() if isinstance(v, dict) and "summary" in v}
    summary["ratio_top5_brain_module_over_linear"] = res.get("ratio_top5_brain_module_over_linear")
    if "time_resolved" in res:
        summary["peak_time"] = {k: v["peak_time"] for k, v in res["time_resolved"].items()}
        summary["simulated_latencies"] = res.get("simulated_latencies")
    _print(summary)
    print(f"results in {args.out}/results.json")
    return 0


def run_reconstruct(args: argparse.Namespace) -> int:
    _print(RECONSTRUCTORS[args.modality](args))
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``neuro`` and its subcommands."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = subparsers.add_parser("neuro", help=HELP, description=HELP, formatter_class=fmt)
    sub = parser.add_subparsers(dest="neuro_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("simulate", help="write simulated brain recordings", formatter_class=fmt)
    p.add_argument("--modality", choices=sorted(SIMULATORS), required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--snr", type=float, default=0.04, help="single-trial SNR of the semantic component")
    p.add_argument("--n-images", type=int, default=1800, help="images (train + 200 test)")
    p.add_argument("--n-subjects", type=int, default=2)
    p.add_argument("--n-test", type=int, default=200, help="test images (THINGS-MEG: 200)")
    p.add_argument("--n-sessions", type=int, default=12, help="repeats of each test image")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_simulate)

    p = sub.add_parser("fit-meg", help="train the MEG brain module (resumable)", formatter_class=fmt)
    p.add_argument("--data", required=True, help="folder of preprocessed_P{n}-epo.fif + world.npz")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--stop-at", type=int, default=None, help="stop with a checkpoint after this many steps")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="MegTrainConfig keys (steps=400 preset=small)")
    p.set_defaults(func=run_fit_meg)

    p = sub.add_parser("eval-meg", help="retrieval of brain module vs linear baseline", formatter_class=fmt)
    p.add_argument("--data", required=True, help="folder of preprocessed_P{n}-epo.fif + world.npz")
    p.add_argument("--model", default=None, help="run folder of fit-meg (omit: linear baseline only)")
    p.add_argument("--out", required=True, help="output folder (results.json, figures, predictions.npz)")
    p.add_argument("--target", default="semantic", choices=["semantic", "low"])
    p.add_argument("--no-time-resolved", action="store_true", help="skip the sliding-window curves")
    p.add_argument("--noise-normalization", action=argparse.BooleanOptionalAction, default=None,
                   help="whiten every subject's epochs with the pre-stimulus noise covariance, for every decoder "
                   "(default: as the --model run was trained; off without one)")  # fmt: skip
    p.set_defaults(func=run_eval_meg)

    p = sub.add_parser("reconstruct", help="images from decoded brain activity", formatter_class=fmt)
    p.add_argument("--modality", choices=sorted(RECONSTRUCTORS), required=True)
    p.add_argument("--data", required=True, help="folder of preprocessed_P{n}-epo.fif + world.npz")
    p.add_argument("--out", required=True, help="output folder (eval-meg's, which holds predictions.npz)")
    p.add_argument("--predictions", default=None, help="predictions.npz (default: OUT/predictions.npz)")
    p.add_argument("--source", default="brain_module", choices=["brain_module", "linear"])
    p.add_argument("--n-images", type=int, default=None, help="test images per subject (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_reconstruct)

    # fMRI (simulate-fmri, fit-fmri, reconstruct-fmri, eval-fmri, run-fmri) and beyond one subject
    # (crosssubject, caption) live in their own modules
    from decodelab.cli.neuro_cross import add_crosssubject_commands
    from decodelab.cli.neuro_fmri import add_fmri_commands

    add_fmri_commands(sub)
    add_crosssubject_commands(sub)
    return parser


def run(args: argparse.Namespace) -> int:
    return int(args.func(args) or 0)
