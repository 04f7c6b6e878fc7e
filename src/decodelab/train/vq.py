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

The task runs through the one loop (:mod:`decodelab.train.loop`); :func:`train_vq` is its
Python entry point.

Example:
    >>> from decodelab.train import load_train_config, train_vq
    >>> cfg = load_train_config("configs/embedded/fmnist-c2i-vq.yaml", ["steps=20"])  # doctest: +SKIP
    >>> result = train_vq(cfg)  # doctest: +SKIP
    >>> result.metrics["psnr"]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from decodelab.registry import MODELS
from decodelab.train.common import batch_indices, psnr
from decodelab.train.config import VQTrainConfig
from decodelab.train.data import ImageData, load_image_data, to_float
from decodelab.train.loop import FitOptions, Run, TrainResult, TrainTask, fit
from decodelab.train.tasks import register_task

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["VQTask", "evaluate_reconstruction", "train_vq", "vq_loss"]

log = logging.getLogger(__name__)


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


@register_task
class VQTask(TrainTask):
    """VQ image tokenizer: pixel + codebook losses, dead-code restarts, reconstruction PSNR.

    Args:
        cfg: the run's config.
        train_data, eval_data: in-memory data replacing ``cfg.data`` (tests, notebooks).
    """

    name = "vq"
    config_class = VQTrainConfig

    def __init__(self, cfg: VQTrainConfig, train_data: ImageData | None = None, eval_data: ImageData | None = None):
        super().__init__(cfg)
        self.train, self.held = train_data, eval_data
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)  # draws the latents of restarted codes
        self.tap = _LatentTap()
        self.hook: Any = None
        self.usage = torch.zeros(0, dtype=torch.long)
        self.last_eval: dict[str, Any] = {}

    def check(self) -> None:
        self.cfg.check_model("tokenizer", "a VQ tokenizer")

    def build_data(self, run: Run) -> None:
        if self.train is None:
            self.train = load_image_data(self.cfg.data, "train")
        if self.held is None:
            self.held = load_image_data(self.cfg.data, "eval")
        self.num_items = len(self.train)

    def build_model(self, run: Run) -> torch.nn.Module:
        kwargs = {k: v for k, v in self.cfg.model.items() if k != "name"}
        kwargs.setdefault("in_channels", self.cfg.data.channels)
        model = MODELS.create(self.cfg.model["name"], **kwargs)
        self.usage = torch.zeros(model.codebook_size, dtype=torch.long)
        self.hook = model.quantize.register_forward_hook(self.tap)
        return model

    def generators(self) -> dict[str, torch.Generator]:
        return {"restart": self.gen}

    def state_dict(self) -> dict[str, Any]:
        return {"usage": self.usage, "last_eval": self.last_eval}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.usage = state["usage"].clone()
        self.last_eval = dict(state.get("last_eval", {}))

    def max_grad_norm(self) -> float:
        return self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")

    def batch(self, step: int) -> Tensor:
        return to_float(self.train.images[batch_indices(len(self.train), self.cfg.batch_size, step, self.cfg.seed)])

    def forward(self, model: torch.nn.Module, batch: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return model(batch)

    def loss(self, output: Any, batch: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        parts = vq_loss(self.cfg, output[0], batch, output[1])
        return parts.pop("loss"), parts

    def after_step(self, run: Run, output: Any) -> dict[str, Any]:
        cfg, done = self.cfg, run.step
        self.usage += run.model.count_code_usage(self.tap.indices).cpu()
        due = cfg.dead_code_every and done % cfg.dead_code_every == 0
        if not due or (cfg.dead_code_until is not None and done > cfg.dead_code_until):
            return {}
        restarted = run.model.restart_dead_codes(self.tap.latents, self.usage, cfg.dead_code_threshold, self.gen)
        self.usage.zero_()
        return {"restarted": restarted} if restarted else {}

    def evaluate(self, run: Run) -> dict[str, Any]:
        self.last_eval = evaluate_reconstruction(run.model, self.held, self.cfg.eval_batch_size, self.cfg.data.num_eval)
        log.info("step %d: eval psnr %.2f dB", run.step, self.last_eval["psnr"])
        return {f"eval_{k}": v for k, v in self.last_eval.items()}

    def final_metrics(self, run: Run) -> dict[str, Any]:
        cfg = self.cfg
        metrics = evaluate_reconstruction(run.model, self.held, cfg.eval_batch_size, cfg.data.final_eval_samples)
        metrics["final_train_loss"] = run.recent_loss(10)
        return metrics

    def card(self, run: Run, metrics: dict[str, Any]) -> dict[str, Any]:
        model = run.model
        return {
            "model": self.cfg.model["name"],
            "data": {"train": self.train.info, "eval": self.held.subset(self.cfg.data.final_eval_samples).info},
            "tokens": {"codebook_size": model.codebook_size, "downsample_factor": model.downsample_factor},
        }

    def card_title(self) -> str:
        return f"VQ tokenizer: {self.cfg.name or 'vq'}"

    def close(self) -> None:
        if self.hook is not None:
            self.hook.remove()
            self.hook = None


def train_vq(
    cfg: VQTrainConfig,
    *,
    train_data: ImageData | None = None,
    eval_data: ImageData | None = None,
    **options: Unpack[FitOptions],
) -> TrainResult:
    """Train (or resume) a VQ tokenizer as ``cfg`` describes, writing everything under ``cfg.out_dir``.

    Args:
        cfg: the run's config.
        train_data, eval_data: in-memory data replacing ``cfg.data`` (tests, notebooks).
        **options: :func:`~decodelab.train.loop.fit`'s ``resume``, ``stop_at``, ``config_path``, ``overrides``.
            ``stop_at=k`` stops with a checkpoint (no export) after ``k`` steps; ``resume=True``
            continues from ``out_dir/checkpoint.pt`` exactly where it stopped.

    Returns:
        A :class:`~decodelab.train.loop.TrainResult`; ``final_dir`` (``out_dir/final``) holds
        ``config.json``, ``model.safetensors`` and the card when the run finished.

    Raises:
        ValueError: for an invalid config, a non-tokenizer model, or an inconsistent resume.
        FileNotFoundError: when resuming without a checkpoint, or data files are missing.
    """
    return fit(VQTask(cfg, train_data, eval_data), **options)
