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

The task runs through the one loop (:mod:`decodelab.train.loop`); :func:`train_gpt` is its
Python entry point.
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from decodelab.hub import WEIGHTS_NAME, load_pretrained, resolve_checkpoint_dir
from decodelab.registry import MODELS
from decodelab.train.common import batch_indices, file_sha256, json_sha
from decodelab.train.config import GPTTrainConfig
from decodelab.train.data import ImageData, load_image_data, to_float
from decodelab.train.loop import FitOptions, Run, TrainResult, TrainTask, fit
from decodelab.train.tasks import register_task

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["GPTTask", "TokenSet", "evaluate_tokens", "tokenize_images", "train_gpt"]

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


@register_task
class GPTTask(TrainTask):
    """Image-token GPT: class- or caption-conditional next-token prediction on frozen VQ tokens.

    Args:
        cfg: the run's config.
        train_data, eval_data: in-memory data replacing ``cfg.data``.
        tokenizer: a VQ model replacing the one loaded from ``cfg.tokenizer``.
        text_encoder: a caption encoder (``prompts -> (emb, mask)``) replacing the configured one.
    """

    name = "gpt"
    config_class = GPTTrainConfig

    def __init__(
        self,
        cfg: GPTTrainConfig,
        train_data: ImageData | None = None,
        eval_data: ImageData | None = None,
        tokenizer: Any = None,
        text_encoder: Any = None,
    ) -> None:
        super().__init__(cfg)
        self.train, self.held, self.tokenizer, self.text_encoder = train_data, eval_data, tokenizer, text_encoder
        self.key = ""
        self.last_eval: dict[str, Any] = {}

    def check(self) -> None:
        self.cfg.check_model("generator", "an image-token GPT")

    def build_data(self, run: Run) -> None:
        """Load the tokenizer and the images; tokenise them (cached) and embed the captions."""
        cfg = self.cfg
        tok_dir = None
        if self.tokenizer is None:
            if not cfg.tokenizer:
                raise ValueError("tokenizer must name the directory of a trained VQ tokenizer (e.g. runs/<vq>/final)")
            tok_dir = resolve_checkpoint_dir(cfg.tokenizer)
            self.tokenizer = load_pretrained(tok_dir)
        if not hasattr(self.tokenizer, "encode") or not hasattr(self.tokenizer, "codebook_size"):
            raise ValueError(f"{cfg.tokenizer or 'tokenizer'} is not a VQ tokenizer")
        self.tokenizer.eval().requires_grad_(False)
        self.key = tokenizer_hash(self.tokenizer, tok_dir)
        self.train = self.train if self.train is not None else load_image_data(cfg.data, "train")
        self.held = self.held if self.held is not None else load_image_data(cfg.data, "eval")
        if cfg.conditioning == "caption" and self.text_encoder is None:
            from decodelab.vision.text_encoder import TextEncoder

            self.text_encoder = TextEncoder(cfg.text_encoder.path, max_length=cfg.text_encoder.max_length)
        self.train_set, self.held_set = _build_token_sets(
            cfg, self.tokenizer, self.key, self.train, self.held, self.text_encoder, run.out
        )
        self.num_items = len(self.train_set)
        self.class_names = cfg.class_names or self.train.class_names

    def build_model(self, run: Run) -> torch.nn.Module:
        cfg, train = self.cfg, self.train
        side = train.images.shape[-1] // self.tokenizer.downsample_factor
        if self.class_names:
            num_classes = len(self.class_names)
        else:
            num_classes = int(train.labels.max()) + 1 if train.labels is not None else 0
        emb = self.train_set.caption_emb
        caption_dim = int(emb.shape[-1]) if emb is not None else 0
        kwargs = _model_kwargs(cfg, self.tokenizer, (side, side), num_classes, caption_dim)
        model = MODELS.create(cfg.model["name"], **kwargs)
        per_image = self.train_set.tokens.shape[1]
        if model.num_tokens != per_image:
            raise ValueError(f"model block_size {model.num_tokens} != tokens per image {per_image}")
        return model

    def state_dict(self) -> dict[str, Any]:
        return {"tokenizer_hash": self.key, "last_eval": self.last_eval}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("tokenizer_hash") != self.key:
            raise ValueError("cannot resume: the tokenizer weights differ from the ones this run was trained on")
        self.last_eval = dict(state.get("last_eval", {}))

    def max_grad_norm(self) -> float:
        return self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")

    def batch(self, step: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        """``(tokens, cond, cond_mask, drop)``; ``drop`` marks rows whose condition becomes the null one (CFG)."""
        cfg = self.cfg
        tokens, cond, mask = self.train_set.batch(batch_indices(len(self.train_set), cfg.batch_size, step, cfg.seed))
        drop = torch.rand(tokens.shape[0]) < cfg.cond_dropout
        if mask is not None:
            mask[drop] = True  # the learned empty caption attends to all of its positions
        return tokens, cond, mask, drop

    def forward(self, model: torch.nn.Module, batch: Any) -> Tensor:
        tokens, cond, mask, drop = batch
        return model(tokens, cond, drop=drop, cond_mask=mask)  # [B, N, V]

    def loss(self, output: Tensor, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        tokens = batch[0]
        loss = F.cross_entropy(output.float().flatten(0, 1), tokens.flatten(), label_smoothing=self.cfg.label_smoothing)
        return loss, {}

    def evaluate(self, run: Run) -> dict[str, Any]:
        self.last_eval = evaluate_tokens(run.model, self.held_set, self.cfg.eval_batch_size)
        log.info("step %d: held-out loss %.4f", run.step, self.last_eval["loss"])
        return {f"eval_{k}": v for k, v in self.last_eval.items()}

    def final_metrics(self, run: Run) -> dict[str, Any]:
        held = evaluate_tokens(run.model, self.held_set, self.cfg.eval_batch_size)
        metrics = {f"eval_{k}": v for k, v in held.items()}
        metrics["final_train_loss"] = run.recent_loss(50)
        return metrics

    def card(self, run: Run, metrics: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "model": cfg.model["name"],
            "model_type": run.model.model_type,
            "data": {"train": self.train.info, "eval": self.held.subset(cfg.eval_samples).info},
            "tokenizer": {"path": str(cfg.tokenizer), "sha256_16": self.key,
                          "codebook_size": self.tokenizer.codebook_size},
        }  # fmt: skip

    def export(self, run: Run, card: dict[str, Any]) -> Path:
        """The pipeline directory ``out_dir/pipeline`` (card in its info) and ``samples.png``."""
        from decodelab.vision.pipeline import ImageGenerationPipeline

        cfg = self.cfg
        # the world tells decodelab.eval.domain which domain metrics apply to this pipeline's images
        world = cfg.data.name  # the registered dataset name: decodelab.eval.domain keys its metrics on it
        info = {"name": card["name"], "world": world, "trained": True, "class_names": list(self.class_names or []),
                "card": card}  # fmt: skip
        if cfg.conditioning == "caption":
            info.pop("class_names")
        pipe = ImageGenerationPipeline(
            run.model.eval(), self.tokenizer.eval(), self.text_encoder, dict(cfg.pipeline_defaults), info
        )
        final = run.out / "pipeline"
        pipe.save_pretrained(final)
        _sample_grid(cfg, pipe, self.held, run.out / "samples.png")
        return final

    def card_title(self) -> str:
        return f"Image-token GPT: {self.cfg.name or 'gpt'}"


def train_gpt(
    cfg: GPTTrainConfig,
    *,
    train_data: ImageData | None = None,
    eval_data: ImageData | None = None,
    tokenizer: Any = None,
    text_encoder: Any = None,
    **options: Unpack[FitOptions],
) -> TrainResult:
    """Train (or resume) an image-token GPT on a frozen tokenizer, as ``cfg`` describes.

    Args:
        cfg: the run's config.
        train_data, eval_data: in-memory data replacing ``cfg.data``.
        tokenizer: a VQ model replacing the one loaded from ``cfg.tokenizer``.
        text_encoder: a caption encoder (``prompts -> (emb, mask)``) replacing the configured one.
        **options: :func:`~decodelab.train.loop.fit`'s ``resume``, ``stop_at``, ``config_path``, ``overrides``.

    Returns:
        A :class:`~decodelab.train.loop.TrainResult`; when finished, ``final_dir`` is
        ``out_dir/pipeline`` (loadable with :func:`decodelab.load_pipeline`).

    Raises:
        ValueError: for an invalid config, inconsistent model settings or resume.
        FileNotFoundError: for a missing tokenizer, checkpoint or data.
    """
    return fit(GPTTask(cfg, train_data, eval_data, tokenizer, text_encoder), **options)


def _sample_grid(cfg: GPTTrainConfig, pipe: Any, held: ImageData, path: Path, per_row: int = 8) -> None:
    """A grid of CFG samples with the model's reference decoder (``ar``; ``nar`` for a NAR), one row per
    class or per held-out caption."""
    from PIL import Image

    try:
        if cfg.conditioning == "class":
            n = len(pipe.info.get("class_names") or []) or pipe.model.num_classes
            result = pipe(classes=list(range(n)), num_images=per_row, seed=0)
        else:
            prompts = list(dict.fromkeys(held.captions or []))[:6]
            result = pipe(prompts=prompts, num_images=per_row, seed=0)
    except Exception as e:  # a sample grid is a convenience; never lose a finished run over it
        log.warning("could not draw the sample grid: %s", e)
        return
    w, h = result.images[0].size
    rows = math.ceil(len(result.images) / per_row)
    grid = Image.new(result.images[0].mode, (w * per_row, h * rows))
    for i, im in enumerate(result.images):
        grid.paste(im, ((i % per_row) * w, (i // per_row) * h))
    grid.save(path)
