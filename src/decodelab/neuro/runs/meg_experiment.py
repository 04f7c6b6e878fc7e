"""The MEG experiment end to end: simulate, train the brain module, evaluate against the linear baseline, reconstruct.

Each step is one function, used by ``decodelab neuro ...`` and ``benchmarks/bench_meg_sim.py``:

- :func:`simulate_meg`: the Fashion-MNIST world -> simulated THINGS-MEG files
  (:func:`~decodelab.neuro.runs.meg_world.simulate_fmnist_meg`);
- :func:`fit_meg`: the brain module through the one training loop (task ``meg``, resumable);
- :func:`eval_meg`: brain module vs per-subject ridge on the 200 averaged test images (top-5 and
  median relative rank, both directions, small and large sets, chance), the time-resolved curves,
  ``results.json``, ``retrieval.png`` and ``time_resolved.png``;
- :func:`reconstruct_meg`: decoded classes -> ``fmnist-c2i`` images, class accuracy vs chance,
  ``reconstructions.png`` and ``reconstruction.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from decodelab.neuro.runs.meg import (
    fit_linear_baseline,
    load_meg_data,
    retrieval_report,
    simulation_latencies,
    time_resolved,
)

__all__ = ["eval_meg", "fit_meg", "load_brain_module", "reconstruct_meg", "simulate_meg"]

#: Headline keys copied into the summary of ``results.json``.
_HEADLINE = ("mean.small.meg_to_image.top5", "mean.small.meg_to_image.median_relative_rank",
             "mean.small.image_to_meg.top5", "mean.small.chance.top5", "mean.large.meg_to_image.top5",
             "mean.large.chance.top5")  # fmt: skip


def simulate_meg(out_dir: str | Path, *, n_images: int = 1800, n_subjects: int = 2, snr: float = 0.04,
                 n_sessions: int = 12, n_test: int = 200, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Write a simulated THINGS-MEG folder from Fashion-MNIST test images; return its summary."""
    from decodelab.neuro.meg.simulate import MegSimulationConfig
    from decodelab.neuro.runs.meg_world import simulate_fmnist_meg

    cfg = MegSimulationConfig(n_subjects=n_subjects, n_test_images=n_test, n_sessions=n_sessions, snr=snr, seed=seed)
    t0 = time.time()
    world, sim = simulate_fmnist_meg(out_dir, n_images=n_images, config=cfg, world_seed=seed)
    return {"out_dir": str(out_dir), "files": [str(p) for p in sim.files], "n_images": n_images,
            "n_test": n_test, "low_dim": int(world.low.shape[1]), "semantic_dim": int(world.semantic.shape[1]),
            "snr": snr, "wall_time_s": round(time.time() - t0, 1)}  # fmt: skip


def fit_meg(data_dir: str | Path, out_dir: str | Path, *, resume: bool = False,
            overrides: dict[str, Any] | list[str] | None = None, data=None, stop_at: int | None = None):  # fmt: skip
    """Train the brain module on ``data_dir`` into ``out_dir`` (task ``meg`` of the one loop).

    Args:
        overrides: ``MegTrainConfig`` keys, as a dict or dotted ``key=value`` strings (``model.depth=4``).
        data: already loaded :class:`~decodelab.neuro.runs.meg.MegData` (skips reading ``data_dir``).
        resume, stop_at: as :func:`decodelab.train.loop.fit`.

    Raises:
        ValueError: an unknown or invalid key.
    """
    from decodelab.config import apply_overrides, from_dict, to_dict
    from decodelab.neuro.runs.meg_task import MegTask, MegTrainConfig
    from decodelab.train.loop import fit

    base = to_dict(MegTrainConfig(data_dir=str(data_dir), out_dir=str(out_dir)))
    if isinstance(overrides, dict):
        items = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    else:
        items = list(overrides or [])
    cfg = from_dict(MegTrainConfig, apply_overrides(base, items), "fit-meg")
    command = f"decodelab neuro fit-meg --data {data_dir} --out {out_dir} {' '.join(items)}".strip()
    return fit(MegTask(cfg, data=data), resume=resume, stop_at=stop_at, command=command)


def load_brain_module(model_dir: str | Path):
    """The trained :class:`~decodelab.neuro.meg.BrainModule` of a run's ``final`` folder (or the folder itself)."""
    from decodelab.neuro.meg import BrainModule

    d = Path(model_dir)
    if (d / "final" / "config.json").is_file():
        d = d / "final"
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"no trained brain module in {model_dir} (train one with decodelab neuro fit-meg)")
    return BrainModule.from_pretrained(d).eval()


def _headline(rep: dict[str, float]) -> dict[str, float]:
    return {k.removeprefix("mean."): round(rep[k], 4) for k in _HEADLINE if k in rep}


def trained_with_noise_normalization(model_dir: str | Path) -> bool:
    """Whether the brain-module run in ``model_dir`` (run folder or its ``final``) used noise-normalised epochs."""
    d = Path(model_dir)
    for cfg in (d / "config.json", d.parent / "config.json"):
        if cfg.is_file():
            c = json.loads(cfg.read_text())
            if c.get("task") == "meg":
                return bool(c.get("noise_normalization", False))
    return False


def eval_meg(data_dir: str | Path, model_dir: str | Path | None, out_dir: str | Path, *, target: str = "semantic",
             time_resolved_curves: bool = True, figures: bool = True, data=None,
             noise_normalization: bool | None = None) -> dict[str, Any]:  # fmt: skip
    """Brain module (if ``model_dir``) and linear baseline on the averaged test images; writes ``results.json``.

    ``noise_normalization`` (:func:`~decodelab.neuro.runs.meg.noise_normalize`) applies to every decoder
    alike; ``None`` follows the brain-module run's setting (off without a run).
    """
    from decodelab.neuro.runs.meg import noise_normalize
    from decodelab.neuro.runs.meg_task import predict_brain_module

    trained = trained_with_noise_normalization(model_dir) if model_dir is not None else None
    if noise_normalization is None:
        noise_normalization = bool(trained)
    elif trained is not None and trained != noise_normalization:
        raise ValueError(
            f"the brain module in {model_dir} was trained {'with' if trained else 'without'} noise normalisation; "
            "evaluate it the same way"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = data if data is not None else load_meg_data(data_dir)
    if noise_normalization and not data.whiteners:
        data = noise_normalize(data)
    repeats = int(np.median(data.test_trials)) if len(data.test_trials) else None
    res: dict[str, Any] = {"data_dir": str(data_dir), "target": target, "subjects": data.subjects,
                           "train_trials": int(len(data.train_x)), "test_rows": int(len(data.test_x)),
                           "test_repeats": repeats, "noise_normalization": bool(data.whiteners)}  # fmt: skip
    sim_cfg = Path(data_dir) / "simulation.json"
    if sim_cfg.is_file():
        res["simulation"] = json.loads(sim_cfg.read_text())["config"]
    base = fit_linear_baseline(data, target)
    base_pred = base.predict(data.test_x, data.test_subject)
    rep = retrieval_report(data, base_pred, target)
    res["linear"] = {"summary": _headline(rep), "alphas": [float(m.alpha_[0]) for m in base.models],
                     "fit_time_s": round(base.fit_time_s, 1), "all": rep}  # fmt: skip
    preds = {"linear": base_pred}
    if model_dir is not None:
        model = load_brain_module(model_dir)
        p = predict_brain_module(model, data.test_x, data.test_subject)
        for head in ("clip", "mse"):
            r = retrieval_report(data, p[head], target)
            res[f"brain_module.{head}"] = {"summary": _headline(r), "all": r}
        preds["brain_module"] = p["clip"]
        lin, bm = rep["mean.small.meg_to_image.top5"], res["brain_module.clip"]["all"]["mean.small.meg_to_image.top5"]
        res["ratio_top5_brain_module_over_linear"] = round(bm / lin, 3) if lin > 0 else None
    if time_resolved_curves:
        targets = ("low", "semantic")
        res["time_resolved"] = time_resolved(data, targets)
        if sim_cfg.is_file():
            res["simulated_latencies"] = simulation_latencies(data_dir)
    np.savez(out / "predictions.npz", test_img=data.test_img, test_subject=data.test_subject, **preds)
    if figures:
        from decodelab.neuro.runs.meg_report import plot_retrieval, plot_time_resolved

        best = "brain_module" if "brain_module" in preds else "linear"
        res["figures"] = {"retrieval": str(plot_retrieval(data, preds[best], target, out / "retrieval.png"))}
        if time_resolved_curves:
            path = plot_time_resolved(res["time_resolved"], out / "time_resolved.png", res.get("simulated_latencies"))
            res["figures"]["time_resolved"] = str(path)
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    return res


def reconstruct_meg(data_dir: str | Path, out_dir: str | Path, *, predictions: str | Path | None = None,
                    source: str = "brain_module", target: str = "semantic", pipeline: Any = "fmnist-c2i",
                    n_images: int | None = None, seed: int = 0, data=None) -> dict[str, Any]:  # fmt: skip
    """Reconstruct the test images from predicted embeddings (``predictions.npz`` of :func:`eval_meg`).

    Args:
        predictions: the ``predictions.npz`` (default: ``out_dir/predictions.npz``).
        source: which predictions (``"brain_module"`` or ``"linear"``).
        n_images: reconstruct the first ``n_images`` test rows of each subject (default: all).
    """
    from decodelab.neuro.runs.meg_report import plot_reconstructions, reconstruct_fmnist

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = Path(predictions) if predictions else out / "predictions.npz"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: run decodelab neuro eval-meg first (it writes predictions.npz)"
        )
    with np.load(path) as z:
        if source not in z.files:
            raise ValueError(f"{path} has no {source!r} predictions (has: {', '.join(z.files)})")
        pred = z[source]
    data = data if data is not None else load_meg_data(data_dir)
    if len(pred) != len(data.test_x):
        raise ValueError(f"{path}: {len(pred)} predictions for {len(data.test_x)} test rows of {data_dir}")
    rows = np.concatenate([data.subject_rows("test", s)[:n_images] for s in range(len(data.subjects))])
    images, metrics = reconstruct_fmnist(data, pred, target=target, rows=rows, pipeline=pipeline, seed=seed)
    seen = data.world.images[data.test_img[rows]]
    fig = plot_reconstructions(seen, images, out / f"reconstructions_{source}.png",
                               title=f"fmnist-c2i from decoded MEG ({source})")  # fmt: skip
    res = {"source": source, **metrics, "figure": str(fig)}
    (out / f"reconstruction_{source}.json").write_text(json.dumps(res, indent=2) + "\n")
    return res
