"""Training of continuous image models (``task: lsr`` configs): native reconstruction or arbitrary-scale SR.

One loop serves every model, because every model answers the same call
``model(inp, coord, cell) -> rgb``:

- ``mode: native`` (GB-LSR's recipe): a random ``inp_size``-pixel crop is both the input and the
  target; the loss is taken at ``sample_q`` random pixel centres (``null``: all pixels). GB-LSR:
  256 crops, MSE, AdamW 2e-4, betas (0.9, 0.95), grad-clip 1.0, batch 8.
- ``mode: sr`` (LIIF's recipe): ``scale ~ U(scale_min, scale_max)``, an ``inp_size`` LR input
  bicubic-downsampled from a random HR crop, ``sample_q`` HR query pixels with their cell size;
  L1, Adam 1e-4, lr halved at given steps, batch 16.

Exact resume (:mod:`decodelab.train.common`): the batch order is a pure function of
``(seed, step)``, each step's crops/scales/queries come from a generator seeded with
``(seed, step)``, and the checkpoint holds model, optimizer and every RNG state; a resumed run
reproduces an uninterrupted one bit for bit on the same machine and thread count.

Outputs in ``out_dir``: ``checkpoint.pt``, ``log.jsonl``, ``config.json`` and, at the end,
``final/`` (``config.json`` + ``model.safetensors``, loadable with ``load_lsr_model``) with the
provenance card (``card.json`` / ``card.md``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from decodelab.config import load_config, to_dict
from decodelab.train.common import (
    CHECKPOINT_NAME,
    JsonlLogger,
    atomic_write_text,
    batch_indices,
    capture_rng_state,
    check_resume_config,
    environment_info,
    load_checkpoint,
    lr_at,
    prepare_out_dir,
    progress,
    reproduce_command,
    restore_rng_state,
    save_checkpoint,
    seed_everything,
    set_lr,
    write_card,
)
from decodelab.train.vq import TrainResult

__all__ = ["LSRDataConfig", "LSRTrainConfig", "LSRTrainResult", "load_lsr_config", "run_from_cli", "train_lsr"]

log = logging.getLogger(__name__)
MODES = ("native", "sr")
LOSSES = ("l1", "mse", "charbonnier")


@dataclass
class LSRDataConfig:
    """Where training and evaluation images come from.

    Attributes:
        name: ``bundled`` (offline photos), ``div2k``, a benchmark name, or a folder path.
        root: data directory (``None``: ``$DECODELAB_DATA/sr/...``).
        train_split: split of ``name`` to train on (bundled: ``train``; DIV2K: ``train``).
        eval_name: evaluation set (``None``: same as ``name``).
        eval_split: its split (bundled: ``test``; DIV2K: ``valid``).
        max_train_images: use only the first N training images.
        eval_images: evaluate on the first N evaluation images (``None``: all).
        eval_crop: centre crop of the evaluation images (``None``: whole images).
    """

    name: str = "bundled"
    root: str | None = None
    train_split: str = "train"
    eval_name: str | None = None
    eval_split: str = "test"
    max_train_images: int | None = None
    eval_images: int | None = None
    eval_crop: int | None = 256


@dataclass
class LSRTrainConfig:
    """A continuous-model training run (see the module docstring)."""

    task: str = "lsr"
    name: str = ""
    mode: str = "sr"
    data: LSRDataConfig = field(default_factory=LSRDataConfig)
    model: dict[str, Any] = field(default_factory=dict)
    inp_size: int = 48
    scale_min: float = 1.0
    scale_max: float = 4.0
    sample_q: int | None = 2304
    augment: bool = True
    steps: int = 1000
    batch_size: int = 16
    optimizer: str = "adam"
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    lr_schedule: str = "multistep"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.5
    warmup: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float | None = None
    loss: str = "l1"
    seed: int = 0
    threads: int | None = None
    log_every: int = 10
    ckpt_every: int = 200
    eval_every: int = 0
    eval_scales: list[float] = field(default_factory=lambda: [2.0, 3.0, 4.0])
    time_budget_min: float | None = None
    out_dir: str = "runs/lsr"
    progress: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.task != "lsr":
            raise ValueError(f"an lsr training config needs task: lsr, got {self.task!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.lr_schedule not in ("multistep", "cosine", "constant"):
            raise ValueError(f"lr_schedule must be multistep, cosine or constant, got {self.lr_schedule!r}")
        if self.model and "name" not in self.model:
            raise ValueError("model must name a registered continuous model: model: {name: gblsr_native, ...}")


def load_lsr_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LSRTrainConfig:
    """Read a ``task: lsr`` YAML with dotted overrides (unknown keys are errors)."""
    cfg = load_config(LSRTrainConfig, path, overrides)
    if not cfg.model:
        raise ValueError(f"{path}: the config has no model (model: {{name: ..., ...}})")
    return cfg


#: what :func:`train_lsr` returns: the trainers' shared result record (``final_dir`` is ``None`` when stopped early)
LSRTrainResult = TrainResult


def lr_for_step(cfg: LSRTrainConfig, step: int) -> float:
    """The learning rate of ``step`` (0-based): warmup, then multistep (``lr * gamma^k``), cosine or constant."""
    if cfg.lr_schedule == "multistep":
        if cfg.warmup > 0 and step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        return cfg.lr * cfg.gamma ** sum(step >= m for m in cfg.milestones)
    return lr_at(step, cfg.lr, cfg.steps, cfg.warmup, cfg.lr_schedule, cfg.min_lr_ratio)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one step's crops, scales, flips and query pixels: a pure function of its arguments."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + 17) * 1_000_033 + int(step))


def pixel_loss(kind: str, pred: Tensor, target: Tensor) -> Tensor:
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "mse":
        return F.mse_loss(pred, target)
    return torch.sqrt((pred - target).pow(2) + 1e-6).mean()  # Charbonnier, eps 1e-3


def _train_images(cfg: LSRTrainConfig) -> tuple[list[Tensor], dict[str, Any]]:
    """Training images as uint8 ``[3, H, W]`` (kept in memory, as LIIF's ``cache: in_memory``)."""
    from decodelab.datasets.sr import load_sr_dataset

    ds = load_sr_dataset(cfg.data.name, None, cfg.data.root, cfg.data.train_split)
    n = len(ds) if cfg.data.max_train_images is None else min(len(ds), cfg.data.max_train_images)
    images = [(ds.hr(i) * 255).round().to(torch.uint8) for i in range(n)]
    return images, {**ds.info, "num_images": n, "names": ds.names[:n]}


def _eval_sets(cfg: LSRTrainConfig) -> dict[str, Any]:
    from decodelab.datasets.sr import load_sr_dataset

    name = cfg.data.eval_name or cfg.data.name
    n = cfg.data.eval_images
    if cfg.mode == "native":
        ds = load_sr_dataset(name, None, cfg.data.root, cfg.data.eval_split)
        k = len(ds) if n is None else min(n, len(ds))
        return {"native": ([ds.hr(i) for i in range(k)], ds.names[:k])}
    out = {}
    for s in cfg.eval_scales:
        ds = load_sr_dataset(name, float(s), cfg.data.root, cfg.data.eval_split)
        k = len(ds) if n is None else min(n, len(ds))
        out[f"x{float(s):g}"] = [ds[i] for i in range(k)]
    return out


def run_evaluation(model: Any, cfg: LSRTrainConfig, sets: dict[str, Any]) -> dict[str, float]:
    """Flat metrics of the periodic / final evaluation."""
    from decodelab.vision.lsr.evaluate import evaluate_native, evaluate_sr

    metrics: dict[str, float] = {}
    for key, data in sets.items():
        if key == "native":
            res = evaluate_native(model, data[0], data[1], crop=cfg.data.eval_crop)
            metrics.update({"native_psnr": res["psnr"], "native_ssim": res["ssim"]})
        else:
            res = evaluate_sr(model, data, crop=cfg.data.eval_crop)
            metrics.update({f"{key}_psnr_y": res["psnr_y"], f"{key}_ssim_y": res["ssim_y"],
                            f"{key}_psnr_rgb": res["psnr_rgb"]})  # fmt: skip
    return metrics


def _bandwidth(model: Any) -> float | None:
    fn = getattr(model, "bandwidth", None)
    if fn is None:
        return None
    try:
        s = fn()
    except ValueError:  # per-patch bandwidth: no single value
        return None
    return float(s.detach()) if s.numel() == 1 else None


def train_lsr(
    cfg: LSRTrainConfig,
    *,
    resume: bool = False,
    stop_at: int | None = None,
    config_path: str | None = None,
    overrides: list[str] | None = None,
    train_images: list[Tensor] | None = None,
    eval_sets: dict[str, Any] | None = None,
) -> LSRTrainResult:
    """Train (or resume) as ``cfg`` describes; see the module docstring for the outputs.

    Args:
        cfg: the run's config.
        resume: continue from ``out_dir/checkpoint.pt`` exactly where it stopped.
        stop_at: stop with a checkpoint (no export) once this many steps are done.
        config_path, overrides: recorded in the provenance card.
        train_images: in-memory training images ``[3, H, W]`` replacing ``cfg.data`` (tests).
        eval_sets: evaluation data replacing ``cfg.data`` (``{}`` skips evaluation).

    Raises:
        ValueError: for an invalid config or an inconsistent resume.
        FileNotFoundError: for missing data or, on resume, a missing checkpoint.
    """
    from decodelab.datasets.sr import NativeCropSampler, SRImplicitSampler
    from decodelab.vision.lsr import create_lsr_model

    cfg_dict = to_dict(cfg)
    out = prepare_out_dir(cfg.out_dir, resume, cfg.overwrite)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    seed_everything(cfg.seed)
    model = create_lsr_model(cfg.model["name"], **{k: v for k, v in cfg.model.items() if k != "name"})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt_cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    optimizer = opt_cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    step, wall_before = 0, 0.0
    if resume:
        ckpt = load_checkpoint(out / CHECKPOINT_NAME)
        changed = check_resume_config(ckpt["config"], cfg_dict)
        if changed:
            log.warning("resuming with changed settings: %s", ", ".join(changed))
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        restore_rng_state(ckpt["rng"])
        step, wall_before = int(ckpt["step"]), float(ckpt["wall_time_s"])
    if train_images is None:
        train_images, data_info = _train_images(cfg)
    else:
        data_info = {"dataset": "in-memory", "num_images": len(train_images)}
    if cfg.mode == "native":
        sampler = NativeCropSampler(train_images, cfg.inp_size, cfg.sample_q, cfg.augment)
    else:
        sampler = SRImplicitSampler(train_images, cfg.inp_size, cfg.scale_min, cfg.scale_max, cfg.sample_q,
                                    cfg.augment)  # fmt: skip
    sets = eval_sets if eval_sets is not None else _eval_sets(cfg)
    atomic_write_text(out / "config.json", json.dumps(cfg_dict, indent=2) + "\n")
    logger = JsonlLogger(out / "log.jsonl", resume_step=step if resume else None)
    t0 = time.time()

    def save(at: int) -> None:
        save_checkpoint(out / CHECKPOINT_NAME, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "step": at, "rng": capture_rng_state(), "config": cfg_dict,
                        "wall_time_s": wall_before + time.time() - t0})  # fmt: skip

    losses: list[float] = []
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    bar = progress(step, end, desc=cfg.name or cfg.model["name"], enabled=cfg.progress)
    done, budget_hit, t_last = step, False, time.time()
    for step in bar:
        set_lr(optimizer, lr_for_step(cfg, step))
        batch = sampler.batch(batch_indices(len(sampler), cfg.batch_size, step, cfg.seed).tolist(),
                              step_generator(cfg.seed, step))  # fmt: skip
        pred = model(batch["inp"], batch["coord"], batch["cell"])  # [B, Q, 3]
        loss = pixel_loss(cfg.loss, pred, batch["gt"])
        if not torch.isfinite(loss):
            raise ValueError(f"the loss became {float(loss)} at step {step}: lower lr or enable grad_clip")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        losses.append(loss.item())
        done = step + 1
        if done % cfg.log_every == 0 or done == end:
            now = time.time()
            rec = {"step": done, "loss": losses[-1], "lr": optimizer.param_groups[0]["lr"],
                   "s_per_step": (now - t_last) / max(1, min(cfg.log_every, len(losses)))}  # fmt: skip
            t_last = now
            bw = _bandwidth(model)
            if bw is not None:
                rec["bandwidth"] = bw
            logger.write(rec)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps and sets:
            logger.write({"step": done, **run_evaluation(model, cfg, sets)})
        if done % cfg.ckpt_every == 0:
            save(done)
        if cfg.time_budget_min and wall_before + time.time() - t0 > 60 * cfg.time_budget_min:
            budget_hit = True
            break
    bar.close()
    save(done)
    if done < cfg.steps and not budget_hit:
        return LSRTrainResult(out, done, losses)
    metrics = run_evaluation(model, cfg, sets) if sets else {}
    model.eval()
    final = out / "final"
    model.save_pretrained(final)
    wall = wall_before + time.time() - t0
    card = {
        "task": "lsr", "mode": cfg.mode, "model": cfg.model["name"], "config": cfg_dict, "data": data_info,
        "steps": done, "planned_steps": cfg.steps, "stopped_by_time_budget": budget_hit, "seed": cfg.seed,
        "wall_time_s": round(wall, 1), "s_per_step": round(wall / max(done, 1), 4),
        "num_parameters": model.num_parameters(), "metrics": metrics, "final_loss": losses[-1] if losses else None,
        "bandwidth": _bandwidth(model), "environment": environment_info(),
        "command": reproduce_command(config_path, overrides, out),
    }  # fmt: skip
    write_card(final, card, title=f"{cfg.name or cfg.model['name']} ({cfg.mode})")
    logger.write({"step": done, "final": True, **metrics})
    return LSRTrainResult(out, done, losses, metrics, final, True)


def run_from_cli(args: Any, overrides: list[str]) -> int:
    """``decodelab train --config <task: lsr yaml>``: ``args`` has ``config``, ``resume``, ``stop_at``."""
    cfg = load_lsr_config(args.config, overrides)
    recorded = [o for o in overrides if not o.startswith(("out_dir=", "threads=", "progress=", "overwrite="))]
    res = train_lsr(cfg, resume=bool(args.resume), stop_at=args.stop_at, config_path=args.config, overrides=recorded)
    if res.finished:
        print(f"finished {res.step} steps; model in {res.final_dir}")
        for k, v in res.metrics.items():
            print(f"  {k}: {v:.4f}" if isinstance(v, float) and math.isfinite(v) else f"  {k}: {v}")
    else:
        print(f"stopped after {res.step} steps; continue with --resume (checkpoint in {res.out_dir})")
    return 0
