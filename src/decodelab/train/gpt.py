"""Image-token GPT training: class- or caption-conditional next-token prediction on frozen VQ tokens.

The dataset is tokenised once by the frozen tokenizer and cached as ``.npy`` under
``out_dir/cache`` (the file name holds the tokenizer's weight hash and the data description, so a
retrained tokenizer never reuses stale tokens). Captions are embedded once by the frozen text
encoder; only the unique captions are stored (``float16``), with one index per image.

Each step draws a batch in the seed-determined order, replaces each row's condition by the null
class / empty caption with probability ``cond_dropout`` (classifier-free guidance training; the
null caption attends to all of its positions, as at sampling time), and minimises the
cross-entropy of the teacher-forced logits. AdamW, linear warmup then cosine decay, gradient
clipping. At the end the model, the tokenizer (and the text encoder's settings) are written as an
:class:`~decodelab.vision.pipeline.ImageGenerationPipeline` directory, ``out_dir/pipeline``, with a
provenance card, and a grid of samples (``samples.png``) drawn with the ``ar`` decoder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from decodelab.config import to_dict
from decodelab.hub import WEIGHTS_NAME, load_pretrained, resolve_checkpoint_dir
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
    file_sha256,
    json_sha,
    load_checkpoint,
    load_image_data,
    lr_at,
    prepare_out_dir,
    progress,
    reproduce_command,
    restore_rng_state,
    save_checkpoint,
    seed_everything,
    set_lr,
    to_float,
    write_card,
)
from decodelab.train.config import GPTTrainConfig
from decodelab.train.vq import TrainResult

__all__ = ["TokenSet", "evaluate_tokens", "tokenize_images", "train_gpt"]

log = logging.getLogger(__name__)


class TokenSet:
    """Flattened image tokens with their conditions, ready for batching.

    Args:
        tokens: int ``[N, h*w]`` row-major token ids.
        labels: int64 ``[N]`` class ids (class conditioning) or ``None``.
        caption_ids: int64 ``[N]`` rows of ``caption_emb`` (caption conditioning) or ``None``.
        caption_emb: ``[U, T, C]`` embeddings of the unique captions.
        caption_mask: bool ``[U, T]``, False at padding.
    """

    def __init__(
        self,
        tokens: Tensor,
        labels: Tensor | None = None,
        caption_ids: Tensor | None = None,
        caption_emb: Tensor | None = None,
        caption_mask: Tensor | None = None,
    ) -> None:
        self.tokens, self.labels = tokens, labels
        self.caption_ids, self.caption_emb, self.caption_mask = caption_ids, caption_emb, caption_mask

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(tokens [B, N] long, cond, cond_mask or None)`` for item indices ``idx``."""
        tokens = self.tokens[idx].long()
        if self.labels is not None:
            return tokens, self.labels[idx], None
        rows = self.caption_ids[idx]
        return tokens, self.caption_emb[rows].float(), self.caption_mask[rows].clone()


# ----------------------------------------------------------------------------------- tokenising
def tokenizer_hash(tokenizer: Any, directory: Path | None) -> str:
    """sha256 prefix of the tokenizer weights (the safetensors file, or the in-memory state dict)."""
    if directory is not None and (directory / WEIGHTS_NAME).is_file():
        return file_sha256(directory / WEIGHTS_NAME)[:16]
    h = hashlib.sha256()
    for k, v in sorted(tokenizer.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def tokenize_images(tokenizer: Any, images: Tensor, batch_size: int = 256, flip: bool = False) -> Tensor:
    """uint8 images ``[N, C, H, W]`` -> int32 token ids ``[N, h*w]`` (row-major), optionally mirrored."""
    out = []
    for s in range(0, len(images), batch_size):
        x = to_float(images[s : s + batch_size])
        if flip:
            x = x.flip(-1)
        out.append(tokenizer.encode(x).flatten(1).to(torch.int32))
    return torch.cat(out) if out else torch.zeros(0, 0, dtype=torch.int32)


def _cached(path: Path, make: Any) -> np.ndarray:
    """Load ``path`` (.npy) or compute it with ``make()`` and save it atomically."""
    if path.is_file():
        try:
            return np.load(path)
        except (OSError, ValueError):
            log.warning("ignoring unreadable cache file %s", path)
    arr = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npy")
    np.save(tmp, arr)
    tmp.replace(path)
    return arr


def _token_set_tokens(cfg: GPTTrainConfig, tokenizer: Any, data: ImageData, key: str, out: Path, flip: bool) -> Tensor:
    desc = {"data": data.info, "n": len(data), "flip": flip, "shape": list(data.images.shape)}
    path = out / "cache" / f"tokens-{key}-{json_sha(desc)}.npy"
    dtype = np.int16 if tokenizer.codebook_size <= 32767 else np.int32

    def make() -> np.ndarray:
        log.info("tokenising %d images with the frozen tokenizer -> %s", len(data), path)
        parts = [tokenize_images(tokenizer, data.images, cfg.eval_batch_size)]
        if flip:
            parts.append(tokenize_images(tokenizer, data.images, cfg.eval_batch_size, flip=True))
        return torch.cat(parts).numpy().astype(dtype)

    return torch.from_numpy(_cached(path, make).astype(np.int64))


def _caption_embeddings(
    cfg: GPTTrainConfig, captions: list[str], encoder: Any, out: Path
) -> tuple[Tensor, Tensor, Tensor]:
    """Unique-caption embeddings ``[U, T, C]`` (float16), masks ``[U, T]`` and per-item ids ``[N]``."""
    unique = sorted(set(captions))
    index = {c: i for i, c in enumerate(unique)}
    ids = torch.tensor([index[c] for c in captions], dtype=torch.long)
    key = json_sha({"encoder": str(getattr(encoder, "path", type(encoder).__name__)), "T": cfg.text_encoder.max_length,
                    "captions": unique})  # fmt: skip
    path = out / "cache" / f"captions-{key}.npz"
    if path.is_file():
        z = np.load(path)
        return torch.from_numpy(z["emb"]), torch.from_numpy(z["mask"]), ids
    embs, masks = [], []
    for s in range(0, len(unique), 128):
        e, m = encoder(unique[s : s + 128])
        embs.append(e.to(torch.float16).cpu())
        masks.append(m.bool().cpu())
    emb, mask = torch.cat(embs), torch.cat(masks)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, emb=emb.numpy(), mask=mask.numpy())
    tmp.replace(path)
    return emb, mask, ids


def _build_token_sets(
    cfg: GPTTrainConfig, tokenizer: Any, key: str, train: ImageData, held: ImageData, encoder: Any, out: Path
) -> tuple[TokenSet, TokenSet]:
    train_tokens = _token_set_tokens(cfg, tokenizer, train, key, out, cfg.flip_augment)
    held = held.subset(cfg.eval_samples)
    held_tokens = _token_set_tokens(cfg, tokenizer, held, key, out, False)
    reps = 2 if cfg.flip_augment else 1
    if cfg.conditioning == "class":
        for name, d in (("training", train), ("held-out", held)):
            if d.labels is None:
                raise ValueError(f"class conditioning needs labels, but the {name} set has none")
        return TokenSet(train_tokens, train.labels.repeat(reps)), TokenSet(held_tokens, held.labels)
    for name, d in (("training", train), ("held-out", held)):
        if d.captions is None:
            raise ValueError(f"caption conditioning needs captions, but the {name} set has none")
    emb, mask, ids = _caption_embeddings(cfg, list(train.captions) + list(held.captions), encoder, out)
    n = len(train)
    tr = TokenSet(train_tokens, None, ids[:n].repeat(reps), emb, mask)
    return tr, TokenSet(held_tokens, None, ids[n:], emb, mask)


# ----------------------------------------------------------------------------------- model set-up
def _model_kwargs(cfg: GPTTrainConfig, tokenizer: Any, grid: tuple[int, int], num_classes: int, caption_dim: int):
    kwargs = {k: v for k, v in cfg.model.items() if k != "name"}
    derived: dict[str, Any] = {
        "vocab_size": tokenizer.codebook_size,
        "block_size": grid[0] * grid[1],
        "class_dropout_prob": cfg.cond_dropout,
        "model_type": "c2i" if cfg.conditioning == "class" else "t2i",
    }
    if cfg.conditioning == "class":
        derived["num_classes"] = num_classes
        derived["cls_token_num"] = 1
    else:
        derived["caption_dim"] = caption_dim
        derived["cls_token_num"] = cfg.text_encoder.max_length
    for k, v in derived.items():
        if k in kwargs and kwargs[k] != v:
            raise ValueError(
                f"model.{k}={kwargs[k]!r} contradicts the data/tokenizer, which need {v!r}; remove it from the config"
            )
        kwargs[k] = v
    if grid[0] != grid[1]:
        raise ValueError(f"the GPT needs a square token grid, the tokenizer gives {grid[0]}x{grid[1]}")
    return kwargs


@torch.no_grad()
def evaluate_tokens(model: Any, data: TokenSet, batch_size: int = 256) -> dict[str, float]:
    """Conditional cross-entropy (nats/token), perplexity and top-1 accuracy on held-out tokens."""
    was_training = model.training
    model.eval()
    total, correct, count = 0.0, 0, 0
    for s in range(0, len(data), batch_size):
        idx = torch.arange(s, min(s + batch_size, len(data)))
        tokens, cond, mask = data.batch(idx)
        logits = model(tokens, cond, cond_mask=mask)
        total += float(F.cross_entropy(logits.flatten(0, 1), tokens.flatten(), reduction="sum"))
        correct += int((logits.argmax(-1) == tokens).sum())
        count += tokens.numel()
    model.train(was_training)
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "token_accuracy": correct / max(count, 1)}


def train_gpt(
    cfg: GPTTrainConfig,
    *,
    resume: bool = False,
    stop_at: int | None = None,
    config_path: str | None = None,
    overrides: list[str] | None = None,
    train_data: ImageData | None = None,
    eval_data: ImageData | None = None,
    tokenizer: Any = None,
    text_encoder: Any = None,
) -> TrainResult:
    """Train (or resume) an image-token GPT on a frozen tokenizer, as ``cfg`` describes.

    Args:
        cfg: the run's config.
        resume: continue from ``out_dir/checkpoint.pt`` exactly where it stopped.
        stop_at: stop with a checkpoint (no export) after this many steps.
        config_path, overrides: recorded in the provenance card's reproduce command.
        train_data, eval_data: in-memory data replacing ``cfg.data``.
        tokenizer: a VQ model replacing the one loaded from ``cfg.tokenizer``.
        text_encoder: a caption encoder (``prompts -> (emb, mask)``) replacing the configured one.

    Returns:
        A :class:`~decodelab.train.vq.TrainResult`; when finished, ``final_dir`` is
        ``out_dir/pipeline`` (loadable with :func:`decodelab.load_pipeline`).

    Raises:
        ValueError: for an invalid config, inconsistent model settings or resume.
        FileNotFoundError: for a missing tokenizer, checkpoint or data.
    """
    cfg.check_model()
    if MODELS.get(cfg.model["name"]).kind != "generator":
        raise ValueError(
            f"model {cfg.model['name']!r} is not an image-token GPT; choose one of {MODELS.list(kind='generator')}"
        )
    cfg_dict = to_dict(cfg)
    out = prepare_out_dir(cfg.out_dir, resume, cfg.overwrite)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    seed_everything(cfg.seed)

    tok_dir = None
    if tokenizer is None:
        if not cfg.tokenizer:
            raise ValueError("tokenizer must name the directory of a trained VQ tokenizer (e.g. runs/<vq>/final)")
        tok_dir = resolve_checkpoint_dir(cfg.tokenizer)
        tokenizer = load_pretrained(tok_dir)
    if not hasattr(tokenizer, "encode") or not hasattr(tokenizer, "codebook_size"):
        raise ValueError(f"{cfg.tokenizer or 'tokenizer'} is not a VQ tokenizer")
    tokenizer.eval().requires_grad_(False)
    key = tokenizer_hash(tokenizer, tok_dir)
    train = train_data if train_data is not None else load_image_data(cfg.data, "train")
    held = eval_data if eval_data is not None else load_image_data(cfg.data, "eval")
    if cfg.conditioning == "caption" and text_encoder is None:
        from decodelab.vision.text_encoder import TextEncoder

        text_encoder = TextEncoder(cfg.text_encoder.path, max_length=cfg.text_encoder.max_length)
    train_set, held_set = _build_token_sets(cfg, tokenizer, key, train, held, text_encoder, out)
    side = train.images.shape[-1] // tokenizer.downsample_factor
    class_names = cfg.class_names or train.class_names
    num_classes = len(class_names) if class_names else int(train.labels.max()) + 1 if train.labels is not None else 0
    caption_dim = int(train_set.caption_emb.shape[-1]) if train_set.caption_emb is not None else 0

    seed_everything(cfg.seed)  # the model's initialisation must not depend on what tokenising consumed
    kwargs = _model_kwargs(cfg, tokenizer, (side, side), num_classes, caption_dim)
    model = MODELS.create(cfg.model["name"], **kwargs)
    if model.num_tokens != train_set.tokens.shape[1]:
        raise ValueError(f"model block_size {model.num_tokens} != tokens per image {train_set.tokens.shape[1]}")
    model.train()
    optimizer = build_adamw(model, cfg.lr, cfg.weight_decay, cfg.betas)
    step, wall_before, last_eval = 0, 0.0, {}
    if resume:
        ckpt = load_checkpoint(out / CHECKPOINT_NAME)
        changed = check_resume_config(ckpt["config"], cfg_dict)
        if changed:
            log.warning("resuming with changed settings: %s", ", ".join(changed))
        if ckpt["trainer"].get("tokenizer_hash") != key:
            raise ValueError("cannot resume: the tokenizer weights differ from the ones this run was trained on")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        restore_rng_state(ckpt["rng"])
        step, wall_before = int(ckpt["step"]), float(ckpt["wall_time_s"])
        last_eval = dict(ckpt["trainer"].get("last_eval", {}))
    atomic_write_text(out / "config.json", json.dumps(cfg_dict, indent=2) + "\n")
    logger = JsonlLogger(out / "log.jsonl", resume_step=step if resume else None)
    t0 = time.time()

    def save(at: int) -> None:
        save_checkpoint(
            out / CHECKPOINT_NAME,
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": at,
             "rng": capture_rng_state(), "trainer": {"tokenizer_hash": key, "last_eval": last_eval},
             "config": cfg_dict, "wall_time_s": wall_before + time.time() - t0,
             "data_position": at * cfg.batch_size},
        )  # fmt: skip

    losses: list[float] = []
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    bar = progress(step, end, desc=cfg.name or "gpt", enabled=cfg.progress)
    stopped_by_budget = False
    done = step
    try:
        for step in bar:
            lr = lr_at(step, cfg.lr, cfg.steps, cfg.warmup, cfg.lr_schedule, cfg.min_lr_ratio)
            set_lr(optimizer, lr)
            tokens, cond, mask = train_set.batch(batch_indices(len(train_set), cfg.batch_size, step, cfg.seed))
            drop = torch.rand(tokens.shape[0]) < cfg.cond_dropout  # CFG: null condition for these rows
            if mask is not None:
                mask[drop] = True  # the learned empty caption attends to all of its positions
            with torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=cfg.autocast_bf16):
                logits = model(tokens, cond, drop=drop, cond_mask=mask)  # [B, N, V]
            loss = F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten(), label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            losses.append(float(loss.detach()))
            done = step + 1
            if done % cfg.log_every == 0 or done == end:
                window = losses[-cfg.log_every :]
                rec = {"step": done, "loss": losses[-1], "loss_avg": sum(window) / len(window), "lr": lr,
                       "grad_norm": float(gnorm), "epoch": round(epoch_of(done, cfg.batch_size, len(train_set)), 4),
                       "time_s": round(wall_before + time.time() - t0, 1)}  # fmt: skip
                logger.write(rec)
                bar.set_postfix(loss=f"{rec['loss_avg']:.4f}", lr=f"{lr:.2e}")
            if done % cfg.eval_every == 0 and done < cfg.steps:
                last_eval = evaluate_tokens(model, held_set, cfg.eval_batch_size)
                logger.write({"step": done, **{f"eval_{k}": v for k, v in last_eval.items()}})
                log.info("step %d: held-out loss %.4f", done, last_eval["loss"])
            if done % cfg.ckpt_every == 0 or done == end:
                save(done)
            if cfg.time_budget_min and wall_before + time.time() - t0 > 60 * cfg.time_budget_min and done < end:
                save(done)
                stopped_by_budget = True
                break
    finally:
        bar.close()
    if done < cfg.steps and not stopped_by_budget:
        return TrainResult(out, done, losses)
    run = _Run(cfg, cfg_dict, out, model, tokenizer, text_encoder, held_set, train, held, class_names, logger, key)
    return _finish(run, losses, done, stopped_by_budget, wall_before + time.time() - t0, config_path, overrides)


@dataclass
class _Run:
    """What the final export needs to know about a finished GPT run."""

    cfg: GPTTrainConfig
    cfg_dict: dict[str, Any]
    out: Path
    model: Any
    tokenizer: Any
    text_encoder: Any
    held_set: TokenSet
    train: ImageData
    held: ImageData
    class_names: list[str] | None
    logger: JsonlLogger
    tokenizer_key: str


def _finish(
    run: _Run,
    losses: list[float],
    done: int,
    stopped_by_budget: bool,
    wall: float,
    config_path: str | None,
    overrides: list[str] | None,
) -> TrainResult:
    """Final held-out metrics, the pipeline directory, the card and a sample grid."""
    from decodelab.vision.pipeline import ImageGenerationPipeline

    cfg, out, model, tokenizer, held, train = run.cfg, run.out, run.model, run.tokenizer, run.held, run.train

    metrics = {f"eval_{k}": v for k, v in evaluate_tokens(model, run.held_set, cfg.eval_batch_size).items()}
    tail = losses[-50:]
    metrics["final_train_loss"] = sum(tail) / len(tail) if tail else float("nan")
    run.logger.write({"step": done, **{f"final_{k}": v for k, v in metrics.items()}})
    name = cfg.name or "gpt"
    card = {
        "task": "gpt",
        "name": name,
        "model": cfg.model["name"],
        "model_type": model.model_type,
        "num_parameters": count_parameters(model),
        "steps": done,
        "planned_steps": cfg.steps,
        "stopped_by_time_budget": stopped_by_budget,
        "epochs": round(epoch_of(done, cfg.batch_size, len(train) * (2 if cfg.flip_augment else 1)), 3),
        "seed": cfg.seed,
        "wall_time_s": round(wall, 1),
        "data": {"train": train.info, "eval": held.subset(cfg.eval_samples).info},
        "tokenizer": {
            "path": str(cfg.tokenizer),
            "sha256_16": run.tokenizer_key,
            "codebook_size": tokenizer.codebook_size,
        },
        "metrics": metrics,
        "command": reproduce_command(config_path, overrides, cfg.out_dir),
        "environment": environment_info(),
        "config": run.cfg_dict,
    }
    # the world tells decodelab.eval.domain which domain metrics apply to this pipeline's images
    world = {"fashion_mnist": "fmnist", "shapes_world": "shapes"}.get(cfg.data.name, cfg.data.name)
    info = {"name": name, "world": world, "trained": True, "class_names": list(run.class_names or []), "card": card}
    if cfg.conditioning == "caption":
        info.pop("class_names")
    pipe = ImageGenerationPipeline(model.eval(), tokenizer.eval(), run.text_encoder, dict(cfg.pipeline_defaults), info)
    final = out / "pipeline"
    pipe.save_pretrained(final)
    write_card(out, card, f"Image-token GPT: {name}")
    for fname in ("card.json", "card.md"):
        shutil.copy2(out / fname, final / fname)
    _sample_grid(cfg, pipe, held, out / "samples.png")
    return TrainResult(out, done, losses, metrics, final, True)


def _sample_grid(cfg: GPTTrainConfig, pipe: Any, held: ImageData, path: Path, per_row: int = 8) -> None:
    """A grid of ``ar`` + CFG samples (one row per class, or one per held-out caption)."""
    from PIL import Image

    try:
        if cfg.conditioning == "class":
            n = len(pipe.info.get("class_names") or []) or pipe.model.num_classes
            result = pipe(classes=list(range(n)), num_images=per_row, seed=0, decoder="ar")
        else:
            prompts = list(dict.fromkeys(held.captions or []))[:6]
            result = pipe(prompts=prompts, num_images=per_row, seed=0, decoder="ar")
    except Exception as e:  # a sample grid is a convenience; never lose a finished run over it
        log.warning("could not draw the sample grid: %s", e)
        return
    w, h = result.images[0].size
    rows = math.ceil(len(result.images) / per_row)
    grid = Image.new(result.images[0].mode, (w * per_row, h * rows))
    for i, im in enumerate(result.images):
        grid.paste(im, ((i % per_row) * w, (i // per_row) * h))
    grid.save(path)
