"""MCW-Net training (``decodelab train --config configs/mcwnet/<x>.yaml``, ``task: derain``).

The recipe is the authors' (github.com/yechanp/MCW-Net ``train.py`` and ``config_{small,large}.py``):
loss ``10 x L1(output, clean)``; Adam (lr 5e-4 small, 1e-4 large; betas 0.9/0.999, no weight decay,
no gradient clipping); the learning rate halved every ``lr_step`` epochs; batch 4 of random 256x256
crops with horizontal flips (p 0.5) and the cut-out augmentation (p 0.5: a clean square of side
``U(0, 0.5) x 256`` pasted into the rainy input); validation PSNR (RGB) every epoch; seed 486.

Data: a paired dataset read through :mod:`decodelab.datasets.rain` (``data.name`` = dataset name,
folder or list file) or ``data.name: synthetic``, fresh synthetic rain over the bundled photos
(:mod:`decodelab.derain.synth`). Lengths are given in ``epochs`` (real data) or ``steps``.

Exact resume: batch ``s`` (its images, crops, flips, cut-outs and synthetic rain) is a pure
function of ``(seed, s)``, and checkpoints hold the model, the optimizer and every random state, so
a run stopped at step ``k`` (``--stop-at``) and resumed (``--resume``) reproduces the uninterrupted
run's losses and weights exactly on the same machine and thread count.

Outputs in ``out_dir``: ``checkpoint.pt``, ``log.jsonl``, ``config.yaml``; at the end ``final/``
(``config.json`` + ``model.safetensors`` loadable with :func:`decodelab.derain.load_derainer`,
``eval.json`` and the provenance card ``card.json`` / ``card.md``).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

from decodelab.config import load_config, to_dict
from decodelab.train.common import (
    CHECKPOINT_NAME,
    JsonlLogger,
    atomic_write_text,
    batch_indices,
    capture_rng_state,
    count_parameters,
    environment_info,
    file_sha256,
    load_checkpoint,
    prepare_out_dir,
    progress,
    reproduce_command,
    restore_rng_state,
    save_checkpoint,
    seed_everything,
    write_card,
)

__all__ = ["DerainDataConfig", "DerainTrainConfig", "TrainResult", "load_derain_config", "run_from_cli", "train"]

#: Keys that may differ between a run and its resumption (they do not change the maths).
RESUMABLE = frozenset({"out_dir", "progress", "threads", "time_budget_min", "overwrite", "log_every", "ckpt_every",
                       "final_eval", "name"})  # fmt: skip


@dataclass
class DerainDataConfig:
    """Training / validation / test data.

    Attributes:
        name: ``synthetic`` or a paired dataset (name, folder or ``.txt`` list; see
            :func:`decodelab.datasets.rain.find_rain_pairs`).
        layout: dataset layout (``auto`` detects it).
        data_dir: extra folder searched first for named datasets.
        train_split, test_split: splits of a named dataset.
        crop: square training crop.
        flip: random horizontal flips.
        cutout: probability of the cut-out augmentation (0 disables it).
        style: synthetic: rain style (``light``, ``heavy``, ``mixed``).
        scale: synthetic: range of the random photo down-scaling before cropping.
        test_seed: synthetic: rain seed of the held-out test photos.
        val_seed: synthetic: rain seed of the validation pairs (same photos, different rain).
        val_crop: centred crop of each validation pair (``None``: full images).
        val_max_images: validate on at most this many pairs (``None``: all).
    """

    name: str = "synthetic"
    layout: str = "auto"
    data_dir: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    crop: int = 256
    flip: bool = True
    cutout: float = 0.5
    style: str = "mixed"
    scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    test_seed: int = 2024
    val_seed: int = 7
    val_crop: int | None = None
    val_max_images: int | None = None


@dataclass
class DerainTrainConfig:
    """One MCW-Net training run (the keys of ``configs/mcwnet/*.yaml``).

    Attributes:
        task: always ``derain``.
        name: run name (card title).
        model: ``{name: <registered derainer>, **constructor kwargs}``.
        data: :class:`DerainDataConfig`.
        epochs / steps: training length (exactly one; epochs need a finite dataset).
        lr_step_epochs / lr_step: halve (``lr_gamma``) the learning rate every this many epochs / steps.
        val_every_epochs / val_every: validation period (epochs or steps; ``None`` both: only at the end).
        batch_size, lr, lr_gamma, betas, loss_weight, seed: the optimisation recipe.
        threads: torch CPU threads (``None``: leave torch's default).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        ckpt_every, log_every: checkpoint and log periods in steps.
        final_eval: evaluate the final model on the test split (self-ensemble, tiles).
        final_tile: tile size of the final evaluation.
        out_dir, time_budget_min, overwrite, progress: run management.
    """

    task: str = "derain"
    name: str = "mcwnet"
    model: dict[str, Any] = field(default_factory=dict)
    data: DerainDataConfig = field(default_factory=DerainDataConfig)
    epochs: int | None = None
    steps: int | None = None
    lr_step_epochs: int | None = None
    lr_step: int | None = None
    val_every_epochs: int | None = None
    val_every: int | None = None
    batch_size: int = 4
    lr: float = 5e-4
    lr_gamma: float = 0.5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    loss_weight: float = 10.0
    seed: int = 486
    threads: int | None = None
    device: str = "auto"
    ckpt_every: int = 500
    log_every: int = 50
    final_eval: bool = True
    final_tile: int = 512
    out_dir: str = "runs/mcwnet"
    time_budget_min: float | None = None
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.task != "derain":
            raise ValueError(f"this trainer needs task: derain, got {self.task!r}")
        if self.epochs is not None and self.steps is not None:
            raise ValueError("set only one of epochs and steps (the other to null)")
        if (self.lr_step_epochs is not None) and (self.lr_step is not None):
            raise ValueError("set at most one of lr_step_epochs and lr_step")
        for key in ("batch_size", "ckpt_every", "log_every"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.lr <= 0 or not 0 < self.lr_gamma <= 1:
            raise ValueError("lr must be > 0 and lr_gamma in (0, 1]")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.data.name == "synthetic" and (self.epochs is not None or self.lr_step_epochs or self.val_every_epochs):
            raise ValueError("synthetic rain is an endless stream: use steps / lr_step / val_every, not epochs")


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    out_dir: Path
    step: int
    total_steps: int
    finished: bool
    final_dir: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)


def load_derain_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> DerainTrainConfig:
    """Read a ``task: derain`` YAML (dotted ``key=value`` overrides; unknown keys are errors)."""
    return load_config(DerainTrainConfig, path, list(overrides))


# ------------------------------------------------------------------------------------------- data
class _PairedTrain:
    """Random crops of a paired dataset; batch ``s`` is a pure function of ``(seed, s)``."""

    def __init__(self, dataset: Any, crop: int, flip: bool, cutout: float, seed: int) -> None:
        self.ds, self.crop, self.flip, self.cutout, self.seed = dataset, crop, flip, cutout, seed

    def __len__(self) -> int:
        return len(self.ds)

    def batch(self, step: int, batch_size: int) -> tuple[Tensor, Tensor]:
        from decodelab.derain.synth import cutout_

        gen = torch.Generator().manual_seed(self.seed * 7_919_993 + int(step))
        rains, cleans = [], []
        for i in batch_indices(len(self.ds), batch_size, step, self.seed).tolist():
            rain, clean = self.ds[i]
            _, h, w = rain.shape
            if h < self.crop or w < self.crop:
                raise ValueError(f"training image {self.ds.names[i]} ({h}x{w}) is smaller than the crop {self.crop}")
            y = int(torch.randint(0, h - self.crop + 1, (), generator=gen))
            x = int(torch.randint(0, w - self.crop + 1, (), generator=gen))
            rain, clean = rain[:, y : y + self.crop, x : x + self.crop], clean[:, y : y + self.crop, x : x + self.crop]
            if self.flip and float(torch.rand((), generator=gen)) < 0.5:
                rain, clean = rain.flip(-1), clean.flip(-1)
            rains.append(rain)
            cleans.append(clean)
        rain_t, clean_t = torch.stack(rains), torch.stack(cleans)
        if self.cutout > 0:
            cutout_(rain_t, clean_t, gen, p=self.cutout)
        return rain_t, clean_t


def _train_data(cfg: DerainTrainConfig) -> tuple[Any, dict[str, Any]]:
    d = cfg.data
    if d.name == "synthetic":
        from decodelab.derain.synth import SyntheticRainTrain

        data = SyntheticRainTrain(d.crop, cfg.seed, d.style, tuple(d.scale), d.flip, d.cutout)
        return data, data.info()
    from decodelab.datasets.rain import RainPairs

    ds = RainPairs(d.name, d.train_split, d.layout, d.data_dir)
    info = {"dataset": d.name, "split": d.train_split, "num_pairs": len(ds), "crop": d.crop, "flip": d.flip,
            "cutout": d.cutout, "first": ds.names[0]}  # fmt: skip
    return _PairedTrain(ds, d.crop, d.flip, d.cutout, cfg.seed), info


def heldout_pairs(cfg: DerainTrainConfig, validation: bool = False) -> Any:
    """The validation (``validation=True``) or test ``(name, rainy, clean)`` triples of a config (a sequence)."""
    d = cfg.data
    limit = d.val_max_images if validation else None
    crop = d.val_crop if validation else None
    if d.name == "synthetic":
        from decodelab.derain.synth import synthetic_test_pairs

        pairs = synthetic_test_pairs("test", d.val_seed if validation else d.test_seed, d.style, 8, crop)
        return pairs[:limit] if limit else pairs
    from decodelab.datasets.rain import NamedRainPairs, RainPairs

    return NamedRainPairs(RainPairs(d.name, d.test_split, d.layout, d.data_dir), limit, crop)


@torch.no_grad()
def _validate(model: torch.nn.Module | None, pairs: Any, device: torch.device) -> float:
    """Mean RGB PSNR of the plain (no ensemble, untiled) output, as the authors validate.

    ``model=None`` scores the rainy inputs themselves (the baseline).
    """
    from decodelab.eval.quality import psnr

    vals = []
    for _, rain, clean in pairs:
        if model is None:
            vals.append(float(psnr(rain, clean)))
            continue
        model.eval()
        vals.append(float(psnr(model(rain[None].to(device)).clamp(0, 1).cpu(), clean[None])))
        model.train()
    return sum(vals) / max(len(vals), 1)


# ---------------------------------------------------------------------------------------- training
def _schedule(cfg: DerainTrainConfig, n_items: int | None) -> dict[str, int | None]:
    """Steps, lr step and validation period in optimizer steps (epochs = ``n // batch`` steps, drop_last)."""
    per_epoch = None if n_items is None else max(n_items // cfg.batch_size, 1)

    def steps(epochs: int | None, steps_: int | None) -> int | None:
        return steps_ if epochs is None else int(epochs) * int(per_epoch or 0)

    total = steps(cfg.epochs, cfg.steps)
    if not total or total < 1:
        raise ValueError(f"set a positive number of epochs or steps (got epochs={cfg.epochs}, steps={cfg.steps})")
    return {"total": total, "lr_step": steps(cfg.lr_step_epochs, cfg.lr_step),
            "val_every": steps(cfg.val_every_epochs, cfg.val_every), "steps_per_epoch": per_epoch}  # fmt: skip


def _lr(cfg: DerainTrainConfig, step: int, lr_step: int | None) -> float:
    return cfg.lr * cfg.lr_gamma ** (step // lr_step) if lr_step else cfg.lr


def _device(cfg: DerainTrainConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was requested but CUDA is not available; use device: cpu or auto")
    return torch.device("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")


def train(
    cfg: DerainTrainConfig,
    *,
    resume: bool = False,
    stop_at: int | None = None,
    config_path: str | None = None,
    overrides: list[str] | None = None,
) -> TrainResult:
    """Run (or resume) the training described by ``cfg``; see the module docstring for outputs."""
    from decodelab.registry import MODELS

    if not cfg.model.get("name"):
        raise ValueError("model.name must name a registered derainer, e.g. model: {name: mcwnet_small}")
    if cfg.threads is not None:
        torch.set_num_threads(int(cfg.threads))
    out = prepare_out_dir(cfg.out_dir, resume, cfg.overwrite)
    device = _device(cfg)
    data, data_info = _train_data(cfg)
    sched = _schedule(cfg, len(data) if hasattr(data, "__len__") else None)
    total = int(sched["total"])  # type: ignore[arg-type]

    seed_everything(cfg.seed)
    model = MODELS.create(cfg.model["name"], **{k: v for k, v in cfg.model.items() if k != "name"}).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    cfg_dict = to_dict(cfg)
    start, elapsed = 0, 0.0
    if resume:
        ckpt = load_checkpoint(out / CHECKPOINT_NAME)
        saved = ckpt["config"]
        bad = sorted(k for k in set(saved) | set(cfg_dict) if saved.get(k) != cfg_dict.get(k) and k not in RESUMABLE)
        if bad:
            raise ValueError(f"cannot resume: the config differs from the checkpoint's in {', '.join(bad)}; "
                             "resume with the same config or start a new run in another --out directory")  # fmt: skip
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start, elapsed = int(ckpt["step"]), float(ckpt.get("elapsed_s", 0.0))
        restore_rng_state(ckpt["rng"])
    atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg_dict, sort_keys=False))
    log = JsonlLogger(out / "log.jsonl", resume_step=start if resume else None)
    val_pairs = heldout_pairs(cfg, validation=True) if sched["val_every"] else []
    val_rainy = _validate(None, val_pairs, device) if sched["val_every"] else None  # baseline: the rainy input

    def checkpoint(step: int) -> None:
        save_checkpoint(out / CHECKPOINT_NAME, {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "config": cfg_dict,
            "rng": capture_rng_state(), "elapsed_s": elapsed + time.perf_counter() - t0,
        })  # fmt: skip

    t0 = time.perf_counter()
    budget = None if cfg.time_budget_min is None else cfg.time_budget_min * 60.0
    losses: list[float] = []
    bar = progress(start, total, cfg.name, enabled=cfg.progress)
    model.train()
    done, reason = start, "done"
    for step in bar:
        lr = _lr(cfg, step, sched["lr_step"])  # type: ignore[arg-type]
        for group in opt.param_groups:
            group["lr"] = lr
        rainy, clean = data.batch(step, cfg.batch_size)  # [B, 3, S, S] each
        loss = cfg.loss_weight * F.l1_loss(model(rainy.to(device)), clean.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        done = step + 1
        record: dict[str, Any] = {}
        if done % cfg.log_every == 0 or done == total:
            record.update(loss=sum(losses[-cfg.log_every :]) / len(losses[-cfg.log_every :]), lr=lr)
        if sched["val_every"] and (done % int(sched["val_every"]) == 0 or done == total):
            record.update(val_psnr_rgb=_validate(model, val_pairs, device), val_psnr_rgb_rainy=val_rainy)
        if record:
            record.update(step=done, time_s=round(elapsed + time.perf_counter() - t0, 2))
            log.write(record)
            bar.set_postfix({k: round(v, 4) for k, v in record.items() if k in ("loss", "val_psnr_rgb")})
        if stop_at is not None and done >= stop_at and done < total:
            reason = "stop_at"
        elif budget is not None and elapsed + time.perf_counter() - t0 > budget and done < total:
            reason = "time_budget"
        if done % cfg.ckpt_every == 0 or done == total or reason != "done":
            checkpoint(done)
        if reason != "done":
            break
    bar.close()
    if reason == "stop_at":
        return TrainResult(out, done, total, False, losses=losses)
    final = _finish(model, cfg, out, done, total, sched, data_info, elapsed + time.perf_counter() - t0, device,
                    config_path, overrides)  # fmt: skip
    return TrainResult(out, done, total, True, out / "final", final, losses)


def _finish(
    model: torch.nn.Module, cfg: DerainTrainConfig, out: Path, done: int, total: int, sched: dict[str, Any],
    data_info: dict[str, Any], wall: float, device: torch.device, config_path: str | None, overrides: list[str] | None,
) -> dict[str, Any]:  # fmt: skip
    """Save ``final/`` (weights, eval, card) and return the final metrics."""
    from decodelab.derain.evaluate import evaluate_derain

    final = out / "final"
    model.eval()
    metrics: dict[str, Any] = {}
    if cfg.final_eval:
        ev = evaluate_derain(model, heldout_pairs(cfg), tile=cfg.final_tile, self_ensemble=True, progress=cfg.progress)
        atomic_write_text(final / "eval.json", _json(ev))
        metrics = {k: round(v, 4) for k, v in ev["metrics"].items()}
    model.cpu().save_pretrained(final)
    model.to(device)
    card = {
        "task": "derain",
        "name": cfg.name,
        "architecture": type(model).__name__,
        "model_config": getattr(model, "config", {}),
        "num_parameters": count_parameters(model),
        "weights_sha256": file_sha256(final / "model.safetensors"),
        "data": data_info,
        "test_data": (
            "held-out synthetic rain over the bundled test photos (never trained on)"
            if cfg.data.name == "synthetic"
            else f"{cfg.data.name} / {cfg.data.test_split}"
        ),
        "steps": done,
        "steps_planned": total,
        "stopped_early": done < total,
        "epochs": round(done / sched["steps_per_epoch"], 3) if sched["steps_per_epoch"] else None,
        "seed": cfg.seed,
        "wall_time_s": round(wall, 1),
        "metrics": metrics,
        "evaluation": "derain() with horizontal-flip self-ensemble and 512-px tiles; PSNR/SSIM under the rgb "
        "(authors') and y (later papers) protocols; *_rainy = the rainy input itself (baseline)",
        "recipe": "MCW-Net (Park et al. 2022; github.com/yechanp/MCW-Net): 10 x L1, Adam, lr halved on a step "
        "schedule, random crops, h-flip, cut-out",
        "config": to_dict(cfg),
        "command": reproduce_command(config_path, overrides, cfg.out_dir),
        "environment": environment_info(),
    }
    write_card(final, card, title=f"{cfg.name}: MCW-Net derainer")
    return metrics


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2, default=float) + "\n"


def run_from_cli(args: argparse.Namespace, overrides: list[str]) -> int:
    """``decodelab train --config configs/mcwnet/<x>.yaml [--resume] [--stop-at N] [key=value ...]``."""
    cfg = load_derain_config(args.config, overrides)
    recorded = [o for o in overrides if not o.startswith(("out_dir=", "threads=", "progress=", "overwrite="))]
    result = train(cfg, resume=bool(args.resume), stop_at=args.stop_at, config_path=args.config, overrides=recorded)
    if result.finished:
        print(f"finished {result.step} steps; model in {result.final_dir}")
        for k, v in result.metrics.items():
            print(f"  {k}: {v}")
    else:
        print(f"stopped after {result.step}/{result.total_steps} steps; continue with --resume ({result.out_dir})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit("use `decodelab train --config configs/mcwnet/<x>.yaml`")
