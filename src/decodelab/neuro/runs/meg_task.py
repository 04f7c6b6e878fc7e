"""Training the MEG brain module through the one loop (``task: meg``).

The task reads a folder of ``preprocessed_P{n}-epo.fif`` epochs with its ``world.npz``
(:func:`decodelab.neuro.runs.meg.load_meg_data`; e.g. written by ``decodelab neuro simulate
--modality meg``), trains :class:`~decodelab.neuro.meg.BrainModule` on the single training trials of
every subject (a subject layer per subject) to predict the standardised ``target`` embedding with
``lam * CLIP + (1 - lam) * MSE`` (:class:`~decodelab.neuro.meg.BrainModuleLoss`), and at the end
scores retrieval on the averaged test images (:func:`decodelab.neuro.runs.meg.retrieval_report`).

Batches are a pure function of the step (a per-epoch permutation seeded by ``seed`` and the epoch),
so a resumed run draws exactly the batches the uninterrupted one would have. The loop handles
resume, checkpoints, progress, the time budget and the card; the export writes the model
(``final/config.json`` + ``model.safetensors``), ``final/predictions.npz`` (both heads on the test
rows) and ``final/metrics.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from decodelab.config import load_config
from decodelab.train.loop import Run, TrainTask

# decodelab.train imports this module to register the task: the brain module, the data and the
# metrics (scipy, scikit-learn, mne) are imported when a run needs them, not with decodelab.train.

__all__ = ["MegTask", "MegTrainConfig", "load_meg_config", "predict_brain_module"]


@dataclass
class MegTrainConfig:
    """Settings of one brain-module training run.

    Attributes:
        task: always ``"meg"``.
        name: run name.
        data_dir: folder of ``preprocessed_P{n}-epo.fif`` + ``world.npz``.
        target: embedding to predict (``"semantic"`` or ``"low"``).
        out_dir: output directory.
        preset: :data:`~decodelab.neuro.meg.BRAIN_MODULE_PRESETS` name; ``model`` overrides its keys.
        lam: weight of the CLIP term (``1 - lam`` for the MSE term).
        max_subjects: use the first subjects only (``None``: all).
        noise_normalization: spatially whiten every subject's epochs with the pre-stimulus noise
            covariance first (:func:`~decodelab.neuro.runs.meg.noise_normalize`); evaluate the run
            with the same setting (``eval-meg`` reads it from the run).
        steps, batch_size, lr, weight_decay, betas, warmup, lr_schedule, min_lr_ratio: optimisation (AdamW).
        seed, threads, device: run settings.
        log_every, ckpt_every, eval_every: cadences in steps (``eval_every=0``: only at the end).
        time_budget_min: stop (and export) after this many minutes (``None``: no limit).
        overwrite, progress: output folder and progress bar.
    """

    task: str = "meg"
    name: str = "meg-brain-module"
    data_dir: str = ""
    target: str = "semantic"
    out_dir: str = "runs/meg-brain-module"
    preset: str = "small"
    model: dict[str, Any] = field(default_factory=dict)
    lam: float = 0.5
    max_subjects: int | None = None
    noise_normalization: bool = False
    steps: int = 800
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup: int = 50
    lr_schedule: str = "cosine"
    min_lr_ratio: float = 0.05
    seed: int = 0
    threads: int = 1
    device: str = "cpu"
    log_every: int = 50
    ckpt_every: int = 200
    eval_every: int = 0
    time_budget_min: float | None = None
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.task != "meg":
            raise ValueError(f"task must be 'meg' for this trainer, got {self.task!r}")
        from decodelab.neuro.meg import BRAIN_MODULE_PRESETS

        if self.preset not in BRAIN_MODULE_PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; known: {', '.join(sorted(BRAIN_MODULE_PRESETS))}")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {self.lam}")
        if min(self.steps, self.batch_size, self.log_every, self.ckpt_every) < 1 or self.lr <= 0:
            raise ValueError("steps, batch_size, log_every and ckpt_every must be >= 1 and lr > 0")


def load_meg_config(path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()) -> MegTrainConfig:
    """Read a ``task: meg`` YAML (dotted overrides; unknown keys are errors)."""
    return load_config(MegTrainConfig, path, list(overrides))


@torch.no_grad()
def predict_brain_module(model, x: np.ndarray, subject: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Both heads of ``model`` (in eval mode) on epochs ``x`` ``[N, C, T]``: ``{"clip", "mse"}`` ``[N, F]``."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, list[Tensor]] = {"clip": [], "mse": []}
    for i in range(0, len(x), batch_size):
        xb = torch.as_tensor(x[i : i + batch_size], device=device)
        sb = torch.as_tensor(subject[i : i + batch_size], dtype=torch.long, device=device)
        o = model(xb, sb)
        out["clip"].append(o.clip.float().cpu())
        out["mse"].append(o.mse.float().cpu())
    model.train(was)
    return {k: torch.cat(v).numpy() for k, v in out.items()}


class MegTask(TrainTask):
    """MEG brain module (Benchetrit et al. 2024) on preprocessed THINGS-MEG epochs."""

    name = "meg"
    config_class = MegTrainConfig
    also_resumable = frozenset({"time_budget_min"})

    def __init__(self, cfg: MegTrainConfig, data: Any = None) -> None:
        super().__init__(cfg)
        self.data = data

    def check(self) -> None:
        if self.data is None and not self.cfg.data_dir:
            raise ValueError(
                "set data_dir: a folder of preprocessed_P{n}-epo.fif + world.npz (decodelab neuro simulate)"
            )

    def build_data(self, run: Run) -> None:
        from decodelab.neuro.meg import BrainModuleLoss
        from decodelab.neuro.runs.meg import load_meg_data

        cfg = self.cfg
        if self.data is None:
            if not Path(cfg.data_dir).is_dir():
                raise FileNotFoundError(f"data_dir {cfg.data_dir} does not exist")
            self.data = load_meg_data(cfg.data_dir, max_subjects=cfg.max_subjects)
        if cfg.noise_normalization and not self.data.whiteners:
            from decodelab.neuro.runs.meg import noise_normalize

            self.data = noise_normalize(self.data)
        elif self.data.whiteners and not cfg.noise_normalization:
            raise ValueError("the data given is noise-normalised but noise_normalization is false")
        self.x = torch.from_numpy(np.ascontiguousarray(self.data.train_x))  # [N, C, T]
        self.subject = torch.from_numpy(self.data.train_subject.astype(np.int64))
        self.y = torch.from_numpy(self.data.targets(cfg.target, "train"))  # [N, F]
        self.num_items = len(self.x)
        self.loss_fn = BrainModuleLoss(cfg.lam)

    def build_model(self, run: Run) -> torch.nn.Module:
        from decodelab.neuro.meg import create_brain_module

        d = self.data
        return create_brain_module(
            self.cfg.preset, d.positions, self.y.shape[1], n_subjects=len(d.subjects), n_times=len(d.times),
            **self.cfg.model,
        )  # fmt: skip

    def _indices(self, step: int) -> Tensor:
        n, b = self.num_items, self.cfg.batch_size
        per_epoch = max(1, n // b)  # drop the last partial batch of each epoch
        epoch, i = divmod(step, per_epoch)
        g = torch.Generator().manual_seed(int(self.cfg.seed) * 1_000_003 + epoch)
        return torch.randperm(n, generator=g)[i * b : (i + 1) * b]

    def batch(self, step: int) -> dict[str, Tensor]:
        idx = self._indices(step)
        return {"x": self.x[idx], "subject": self.subject[idx], "y": self.y[idx]}

    def forward(self, model: torch.nn.Module, batch: dict[str, Tensor]):
        return model(batch["x"], batch["subject"])

    def loss(self, output, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        loss, parts = self.loss_fn(output, batch["y"])
        return loss, {k: torch.tensor(v) for k, v in parts.items()}

    def _test_predictions(self, run: Run) -> dict[str, np.ndarray]:
        return predict_brain_module(run.model, self.data.test_x, self.data.test_subject)

    def evaluate(self, run: Run) -> dict[str, Any]:
        from decodelab.neuro.runs.meg import retrieval_report

        pred = self._test_predictions(run)["clip"]
        rep = retrieval_report(self.data, pred, self.cfg.target)
        return {"test_top5": rep["mean.small.meg_to_image.top5"]}

    def final_metrics(self, run: Run) -> dict[str, Any]:
        from decodelab.neuro.runs.meg import retrieval_report

        self._pred = self._test_predictions(run)
        out: dict[str, Any] = {}
        for head, pred in self._pred.items():
            rep = retrieval_report(self.data, pred, self.cfg.target)
            out.update({f"{head}.{k}": v for k, v in rep.items() if k.startswith("mean.")})
        return out

    def card(self, run: Run, metrics: dict[str, Any]) -> dict[str, Any]:
        d = self.data
        return {"data": {"data_dir": self.cfg.data_dir, "subjects": d.subjects, "train_trials": int(len(d.train_x)),
                         "test_rows": int(len(d.test_x)), "target": self.cfg.target,
                         "noise_normalization": bool(d.whiteners)}}  # fmt: skip

    def export(self, run: Run, card: dict[str, Any]) -> Path:
        final = run.out / "final"
        run.model.eval().save_pretrained(final)
        np.savez(final / "predictions.npz", test_img=self.data.test_img, test_subject=self.data.test_subject,
                 **self._pred)  # fmt: skip
        if self.data.whiteners:  # what a user needs to apply the module to new recordings
            np.savez(final / "noise_normalization.npz", **{f"subject{i}": w for i, w in enumerate(self.data.whiteners)})
        (final / "metrics.json").write_text(json.dumps(card["metrics"], indent=2) + "\n")
        return final
