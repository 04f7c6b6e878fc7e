"""VQ image-tokenizer training: pixel reconstruction + codebook losses, dead-code restarts, PSNR.

The loss per step is::

    recon_weight * L1-or-L2(recon, x) + grad_loss_weight * L1(finite differences)
        + codebook_weight * (vq_loss + commit_loss + entropy_loss)

with the codebook terms computed by :class:`~decodelab.vision.tokenizers.vq.VQModel` itself. No
perceptual (LPIPS) or adversarial loss: their pretrained weights are not available offline, and on
small grey-scale images the pixel losses reach a high PSNR alone.

Every ``dead_code_every`` steps, codes that were assigned at most ``dead_code_threshold`` times
since the last restart are re-initialised from the current batch's encoder latents (captured by a
forward hook on the quantizer, so no extra encoder pass is needed).

Example:
    >>> from decodelab.train import load_train_config, train_vq
    >>> cfg = load_train_config("configs/embedded/fmnist-c2i-vq.yaml", ["steps=20"])  # doctest: +SKIP
    >>> result = train_vq(cfg)  # doctest: +SKIP
    >>> result.metrics["psnr"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from decodelab.config import to_dict
from decodelab.registry import MODELS
from decodelab.train.common import (
    CHECKPOINT_NAME,
    ImageData,
    JsonlLogger,
    atomic_write_text,
    batch_indices,
    build_adamw,
    capture_rng_state,
    check_resume_config,
    count_parameters,
    environment_info,
    epoch_of,
    load_checkpoint,
    load_image_data,
    lr_at,
    prepare_out_dir,
    progress,
    psnr,
    reproduce_command,
    restore_rng_state,
    save_checkpoint,
    seed_everything,
    set_lr,
    to_float,
    write_card,
)
from decodelab.train.config import VQTrainConfig

__all__ = ["TrainResult", "evaluate_reconstruction", "train_vq", "vq_loss"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training call produced.

    Attributes:
        out_dir: the run directory.
        step: completed optimisation steps.
        losses: total loss of every step run in *this* call (index 0 = first step of this call).
        metrics: final metrics (empty when the call stopped before the end).
        final_dir: the exported model / pipeline directory, or ``None`` when stopped early.
        finished: whether the run reached its last step (or its time budget) and was exported.
    """

    out_dir: Path
    step: int
    losses: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    final_dir: Path | None = None
    finished: bool = False


def _image_gradient_loss(recon: Tensor, x: Tensor) -> Tensor:
    """L1 distance between horizontal and vertical finite differences of two image batches."""
    dx = (recon[..., :, 1:] - recon[..., :, :-1]) - (x[..., :, 1:] - x[..., :, :-1])
    dy = (recon[..., 1:, :] - recon[..., :-1, :]) - (x[..., 1:, :] - x[..., :-1, :])
    return dx.abs().mean() + dy.abs().mean()


def vq_loss(cfg: VQTrainConfig, recon: Tensor, x: Tensor, losses: dict[str, Tensor]) -> dict[str, Tensor]:
    """The weighted training loss and its parts (``loss`` is the one to back-propagate)."""
    rec = F.l1_loss(recon, x) if cfg.recon_loss == "l1" else F.mse_loss(recon, x)
    parts = {"recon": rec}
    total = cfg.recon_weight * rec
    if cfg.grad_loss_weight > 0:
        parts["grad"] = _image_gradient_loss(recon, x)
        total = total + cfg.grad_loss_weight * parts["grad"]
    codebook = losses["vq_loss"] + losses["commit_loss"] + losses["entropy_loss"]
    total = total + cfg.codebook_weight * codebook
    parts.update(vq=losses["vq_loss"], commit=losses["commit_loss"], entropy=losses["entropy_loss"])
    parts["usage"] = losses["codebook_usage"]
    parts["loss"] = total
    return parts


@torch.no_grad()
def evaluate_reconstruction(
    model: Any, data: ImageData, batch_size: int = 256, n: int | None = None
) -> dict[str, float]:
    """Reconstruction quality of ``encode -> decode`` on held-out images.

    Returns:
        ``psnr`` (mean per-image dB, images in [0, 1]), ``mse``, ``l1`` (in [-1, 1] units),
        ``code_usage`` (fraction of codes used) and ``code_perplexity`` over the set.
    """
    was_training = model.training
    model.eval()
    data = data.subset(n)
    vals, mses, l1s = [], [], []
    counts = torch.zeros(model.codebook_size, dtype=torch.long)
    for s in range(0, len(data), batch_size):
        x = to_float(data.images[s : s + batch_size])
        tokens = model.encode(x)
        recon = model.decode(tokens).clamp(-1, 1)
        counts += model.count_code_usage(tokens).cpu()
        vals.append(psnr(recon, x))
        mses.append((recon - x).pow(2).flatten(1).mean(1))
        l1s.append((recon - x).abs().flatten(1).mean(1))
    model.train(was_training)
    p = counts.float() / counts.sum().clamp_min(1)
    perplexity = torch.exp(-(p[p > 0] * p[p > 0].log()).sum())
    return {
        "psnr": float(torch.cat(vals).mean()),
        "mse": float(torch.cat(mses).mean()),
        "l1": float(torch.cat(l1s).mean()),
        "code_usage": float((counts > 0).float().mean()),
        "code_perplexity": float(perplexity),
        "eval_images": len(data),
    }


class _LatentTap:
    """Forward hook on the quantizer: keeps the last batch's code ids and prepared latents."""

    def __init__(self) -> None:
        self.indices: Tensor | None = None
        self.latents: Tensor | None = None

    def __call__(self, module: Any, inputs: tuple[Tensor, ...], output: tuple[Tensor, ...]) -> None:
        z = inputs[0].detach()  # [B, D, h, w]
        self.latents = module.prepare(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))  # [N, D]
        self.indices = output[1].detach()  # [B, h, w]


def train_vq(
    cfg: VQTrainConfig,
    *,
    resume: bool = False,
    stop_at: int | None = None,
    config_path: str | None = None,
    overrides: list[str] | None = None,
    train_data: ImageData | None = None,
    eval_data: ImageData | None = None,
) -> TrainResult:
    """Train (or resume) a VQ tokenizer as ``cfg`` describes, writing everything under ``cfg.out_dir``.

    Args:
        cfg: the run's config.
        resume: continue from ``out_dir/checkpoint.pt`` exactly where it stopped.
        stop_at: stop (with a checkpoint, without the final export) once this many steps are done;
            a later ``resume=True`` call continues the same run.
        config_path, overrides: recorded in the provenance card's reproduce command.
        train_data, eval_data: in-memory data replacing ``cfg.data`` (tests, notebooks).

    Returns:
        A :class:`TrainResult`; ``final_dir`` (``out_dir/final``) holds ``config.json``,
        ``model.safetensors`` and the card when the run finished.

    Raises:
        ValueError: for an invalid config, a non-tokenizer model, or an inconsistent resume.
        FileNotFoundError: when resuming without a checkpoint, or data files are missing.
    """
    cfg.check_model()
    cfg_dict = to_dict(cfg)
    out = prepare_out_dir(cfg.out_dir, resume, cfg.overwrite)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    seed_everything(cfg.seed)
    if MODELS.get(cfg.model["name"]).kind != "tokenizer":
        raise ValueError(
            f"model {cfg.model['name']!r} is not a VQ tokenizer; choose one of {MODELS.list(kind='tokenizer')}"
        )
    kwargs = {k: v for k, v in cfg.model.items() if k != "name"}
    kwargs.setdefault("in_channels", cfg.data.channels)
    model = MODELS.create(cfg.model["name"], **kwargs)
    model.train()
    optimizer = build_adamw(model, cfg.lr, cfg.weight_decay, cfg.betas)
    gens = {"restart": torch.Generator().manual_seed(cfg.seed + 1)}
    usage = torch.zeros(model.codebook_size, dtype=torch.long)
    step, wall_before, last_eval = 0, 0.0, {}
    if resume:
        ckpt = load_checkpoint(out / CHECKPOINT_NAME)
        changed = check_resume_config(ckpt["config"], cfg_dict)
        if changed:
            log.warning("resuming with changed settings: %s", ", ".join(changed))
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        restore_rng_state(ckpt["rng"], gens)
        usage = ckpt["trainer"]["usage"].clone()
        step, wall_before = int(ckpt["step"]), float(ckpt["wall_time_s"])
        last_eval = dict(ckpt["trainer"].get("last_eval", {}))
    train = train_data if train_data is not None else load_image_data(cfg.data, "train")
    held = eval_data if eval_data is not None else load_image_data(cfg.data, "eval")
    atomic_write_text(out / "config.json", json.dumps(cfg_dict, indent=2) + "\n")
    logger = JsonlLogger(out / "log.jsonl", resume_step=step if resume else None)
    tap = _LatentTap()
    hook = model.quantize.register_forward_hook(tap)
    t0 = time.time()

    def save(at: int) -> None:
        trainer = {"usage": usage, "last_eval": last_eval}
        save_checkpoint(
            out / CHECKPOINT_NAME,
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": at,
             "rng": capture_rng_state(gens), "trainer": trainer, "config": cfg_dict,
             "wall_time_s": wall_before + time.time() - t0, "data_position": at * cfg.batch_size},
        )  # fmt: skip

    losses: list[float] = []
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    bar = progress(step, end, desc=cfg.name or "vq", enabled=cfg.progress)
    stopped_by_budget = False
    done = step
    try:
        for step in bar:
            lr = lr_at(step, cfg.lr, cfg.steps, cfg.warmup, cfg.lr_schedule, cfg.min_lr_ratio)
            set_lr(optimizer, lr)
            x = to_float(train.images[batch_indices(len(train), cfg.batch_size, step, cfg.seed)])
            recon, model_losses = model(x)
            parts = vq_loss(cfg, recon, x, model_losses)
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            gnorm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
            )
            optimizer.step()
            losses.append(float(parts["loss"].detach()))
            usage += model.count_code_usage(tap.indices).cpu()
            done = step + 1
            restarted = 0
            if (
                cfg.dead_code_every
                and done % cfg.dead_code_every == 0
                and (cfg.dead_code_until is None or done <= cfg.dead_code_until)
            ):
                restarted = model.restart_dead_codes(tap.latents, usage, cfg.dead_code_threshold, gens["restart"])
                usage.zero_()
            if done % cfg.log_every == 0 or done == end or restarted:
                rec = {k: float(v.detach()) for k, v in parts.items()}
                rec.update(step=done, lr=lr, grad_norm=float(gnorm), restarted=restarted,
                           epoch=round(epoch_of(done, cfg.batch_size, len(train)), 4),
                           time_s=round(wall_before + time.time() - t0, 1))  # fmt: skip
                logger.write(rec)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", rec=f"{rec['recon']:.4f}", use=f"{rec['usage']:.2f}")
            if done % cfg.eval_every == 0 and done < cfg.steps:
                last_eval = evaluate_reconstruction(model, held, cfg.eval_batch_size, cfg.data.num_eval)
                logger.write({"step": done, **{f"eval_{k}": v for k, v in last_eval.items()}})
                log.info("step %d: eval psnr %.2f dB", done, last_eval["psnr"])
            if done % cfg.ckpt_every == 0 or done == end:
                save(done)
            if cfg.time_budget_min and wall_before + time.time() - t0 > 60 * cfg.time_budget_min and done < end:
                save(done)
                stopped_by_budget = True
                break
    finally:
        bar.close()
        hook.remove()
    if done < cfg.steps and not stopped_by_budget:
        return TrainResult(out, done, losses)

    metrics = evaluate_reconstruction(model, held, cfg.eval_batch_size, cfg.data.final_eval_samples)
    metrics["final_train_loss"] = sum(losses[-10:]) / max(len(losses[-10:]), 1) if losses else float("nan")
    logger.write({"step": done, **{f"final_{k}": v for k, v in metrics.items()}})
    final = out / "final"
    model.eval()
    model.save_pretrained(final)
    wall = wall_before + time.time() - t0
    card = {
        "task": "vq",
        "name": cfg.name or "vq",
        "model": cfg.model["name"],
        "num_parameters": count_parameters(model),
        "steps": done,
        "planned_steps": cfg.steps,
        "stopped_by_time_budget": stopped_by_budget,
        "epochs": round(epoch_of(done, cfg.batch_size, len(train)), 3),
        "seed": cfg.seed,
        "wall_time_s": round(wall, 1),
        "data": {"train": train.info, "eval": held.subset(cfg.data.final_eval_samples).info},
        "metrics": metrics,
        "tokens": {"codebook_size": model.codebook_size, "downsample_factor": model.downsample_factor},
        "command": reproduce_command(config_path, overrides, cfg.out_dir),
        "environment": environment_info(),
        "config": cfg_dict,
    }
    write_card(out, card, f"VQ tokenizer: {cfg.name or 'vq'}")
    for name in ("card.json", "card.md"):
        shutil.copy2(out / name, final / name)
    return TrainResult(out, done, losses, metrics, final, True)
