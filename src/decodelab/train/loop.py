"""The one training loop: every model decodelab trains runs through :func:`fit`.

A :class:`TrainTask` says what to build (data, model, optimizer) and what to compute each step
(batch, forward, loss), how to evaluate and how to export the trained model. The loop owns
everything else, the same for every task:

- the output folder (refusing to overwrite a run), ``config.json``, ``log.jsonl``;
- seeding, then exact resume from ``checkpoint.pt``: model, optimizer, step, every random state
  (global and the task's private generators) and the task's own state;
- the learning-rate schedule (:func:`~decodelab.train.common.lr_at` through :meth:`TrainTask.lr`),
  gradient clipping, a finite-loss check;
- the device (``cfg.device`` where a config has one) and bfloat16 autocast of the forward pass
  (``cfg.autocast_bf16``);
- logging and evaluation cadence, periodic checkpoints, ``stop_at`` and the time budget;
- the final metrics, the export and the provenance card (``card.json`` + ``card.md``).

Per step the order is fixed (and therefore the order of random draws): learning rate, batch,
forward under autocast, loss, backward, clipping, optimizer step, the task's after-step work,
log / evaluation, checkpoint, time budget.

A new kind of model needs only a task: subclass :class:`TrainTask`, decorate it with
:func:`~decodelab.train.tasks.register_task`, and its configs train with ``decodelab train``.

Example:
    >>> from decodelab.train import get_task, load_train_config
    >>> cfg = load_train_config("configs/embedded/fmnist-c2i-vq.yaml", ["steps=20"])  # doctest: +SKIP
    >>> result = fit(get_task(cfg.task)(cfg), stop_at=10)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypedDict

import torch
from torch import Tensor

from decodelab.config import to_dict
from decodelab.locks import FolderLock
from decodelab.train.common import (
    CHECKPOINT_NAME,
    JsonlLogger,
    atomic_write_text,
    build_adamw,
    capture_rng_state,
    check_resume_config,
    count_parameters,
    environment_info,
    epoch_of,
    load_checkpoint,
    lr_at,
    move_to,
    prepare_out_dir,
    progress,
    reproduce_command,
    resolve_device,
    restore_rng_state,
    save_checkpoint,
    seed_everything,
    set_lr,
    write_card,
)

__all__ = ["FitOptions", "Run", "TrainResult", "TrainTask", "fit"]

log = logging.getLogger(__name__)


class FitOptions(TypedDict, total=False):
    """The keyword arguments of :func:`fit` that the tasks' entry points (``train_vq``, ...) pass on."""

    resume: bool
    stop_at: int | None
    config_path: str | None
    overrides: list[str] | None
    command: str | None


@dataclass
class TrainResult:
    """What a training call produced.

    Attributes:
        out_dir: the run directory.
        step: completed optimisation steps.
        losses: training loss of every step run in *this* call (index 0 = first step of this call).
        metrics: final metrics (empty when the call stopped before the end).
        final_dir: the exported model / pipeline directory, or ``None`` when stopped early.
        finished: whether the run reached its last step (or its time budget) and was exported.
        total_steps: the steps the run is planned for.
        card: the provenance card written with the export (empty when stopped early).
    """

    out_dir: Path
    step: int
    losses: list[float] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    final_dir: Path | None = None
    finished: bool = False
    total_steps: int = 0
    card: dict[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    """The loop's state, passed to the task's hooks.

    Attributes:
        cfg: the run's config.
        cfg_dict: ``cfg`` as plain data (saved in checkpoints and cards).
        out: the run directory.
        device: where the model and batches live.
        model, optimizer: set once built.
        step: completed steps (updated after every step).
        total: planned steps.
        losses: losses of the steps run in this call.
        logger: the JSONL log (set before the first step).
        wall_before: seconds spent by earlier calls of a resumed run.
        stopped_by_budget: whether the time budget ended the run.
    """

    cfg: Any
    cfg_dict: dict[str, Any]
    out: Path
    device: torch.device
    model: Any = None
    optimizer: Any = None
    step: int = 0
    total: int = 0
    losses: list[float] = field(default_factory=list)
    logger: JsonlLogger | None = None
    wall_before: float = 0.0
    stopped_by_budget: bool = False
    t0: float = field(default_factory=time.time)

    def wall(self) -> float:
        """Seconds of training so far, over every call of the run."""
        return self.wall_before + time.time() - self.t0

    def recent_loss(self, n: int) -> float:
        """Mean loss of the last ``n`` steps run in this call (``nan`` when none ran)."""
        tail = self.losses[-n:]
        return sum(tail) / len(tail) if tail else float("nan")


class TrainTask:
    """One kind of model the loop trains: what it builds and what it computes.

    Subclasses set :attr:`name` (the config's ``task:`` value) and :attr:`config_class`, implement
    :meth:`build_model`, :meth:`batch`, :meth:`forward` and :meth:`loss`, and override the other
    hooks where the defaults do not fit. The config must have ``out_dir``,
    ``overwrite``, ``threads``, ``seed``, ``steps``, ``batch_size``, ``lr``, ``log_every``,
    ``ckpt_every``, ``time_budget_min`` and ``progress``.

    Args:
        cfg: the run's config (an instance of :attr:`config_class`).
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = object
    #: config keys besides :data:`~decodelab.train.common.RESUMABLE_KEYS` that may change on resume
    also_resumable: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, cfg: Any) -> None:
        if not isinstance(cfg, self.config_class):
            raise ValueError(f"the {self.name} task needs a {self.config_class.__name__}, got {type(cfg).__name__}")
        self.cfg = cfg
        #: items in one pass over the training set (``None``: an endless stream); gives the epoch count
        self.num_items: int | None = None

    # ------------------------------------------------------------------------------------ set-up
    @classmethod
    def check_config_file(cls, cfg: Any, path: str | Path) -> None:
        """Checks of a config read from ``path`` beyond its class's own (raise ``ValueError``)."""

    def check(self) -> None:
        """Config checks that need no data; run before the output folder is touched."""

    def build_data(self, run: Run) -> None:
        """Load the training (and evaluation) data; runs after seeding, before the model is built."""

    def total_steps(self) -> int:
        """Planned optimisation steps (after :meth:`build_data`)."""
        return int(self.cfg.steps)

    def build_model(self, run: Run) -> torch.nn.Module:
        """The model to train (the loop moves it to ``run.device`` and puts it in train mode)."""
        raise NotImplementedError

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        """AdamW with decay on matrices only (``cfg.lr``, ``cfg.weight_decay``, ``cfg.betas``)."""
        return build_adamw(model, self.cfg.lr, self.cfg.weight_decay, self.cfg.betas)

    def generators(self) -> dict[str, torch.Generator]:
        """The task's private random generators, saved and restored with every checkpoint."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Task state that accumulates between checkpoints (tensors and plain data)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` on resume; raise ``ValueError`` when the run cannot continue."""

    # ---------------------------------------------------------------------------------- per step
    def lr(self, step: int, total: int) -> float:
        """Learning rate of ``step``: warmup + ``cfg.lr_schedule`` (cosine / constant)."""
        cfg = self.cfg
        return lr_at(step, cfg.lr, total, cfg.warmup, cfg.lr_schedule, cfg.min_lr_ratio)

    def max_grad_norm(self) -> float | None:
        """Gradient-norm clip: ``None`` skips clipping (and the logged norm), ``inf`` only measures."""
        return None

    def batch(self, step: int) -> Any:
        """The batch of ``step``; the loop moves its tensors to the device."""
        raise NotImplementedError

    def forward(self, model: torch.nn.Module, batch: Any) -> Any:
        """The model's forward pass on ``batch`` (runs under autocast when it is on)."""
        raise NotImplementedError

    def loss(self, output: Any, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """``(loss to back-propagate, named parts for the log)``."""
        raise NotImplementedError

    def after_step(self, run: Run, output: Any) -> dict[str, Any]:
        """Work after the optimizer step; returned fields go into the log (non-empty: log this step)."""
        return {}

    def log_fields(self, run: Run, record: dict[str, Any]) -> dict[str, Any]:
        """Extra fields of a log record (``record`` holds the loop's own: step, loss, lr, ...)."""
        return {}

    def should_evaluate(self, done: int, total: int) -> bool:
        """Whether to evaluate after ``done`` steps: every ``cfg.eval_every`` steps, not at the end."""
        every = int(getattr(self.cfg, "eval_every", 0) or 0)
        return bool(every) and done % every == 0 and done < total

    def evaluate(self, run: Run) -> dict[str, Any]:
        """Periodic held-out metrics, as log fields."""
        return {}

    # ------------------------------------------------------------------------------------ the end
    def final_metrics(self, run: Run) -> dict[str, Any]:
        """The metrics of the finished model (the card's ``metrics``)."""
        return {}

    def card(self, run: Run, metrics: dict[str, Any]) -> dict[str, Any]:
        """Task entries of the provenance card (added to the loop's; may replace them)."""
        return {}

    def export(self, run: Run, card: dict[str, Any]) -> Path:
        """Save the trained model; return its directory. May add entries to ``card`` (e.g. a weights hash).

        The default saves the model in eval mode to ``out_dir/final`` (``save_pretrained``).
        """
        final = run.out / "final"
        run.model.eval().save_pretrained(final)
        return final

    def card_title(self) -> str:
        return f"{self.name}: {self.cfg.name or self.name}"

    def card_sections(self, card: dict[str, Any]) -> dict[str, list[str]]:
        """Extra markdown sections of ``card.md`` (heading -> lines)."""
        return {}

    def reproduce_command(self, config_path: str | None, overrides: list[str] | None) -> str:
        """The shell command recorded in the card."""
        return reproduce_command(config_path, overrides, self.cfg.out_dir)

    def close(self) -> None:
        """Release what :meth:`build_model` attached (hooks); runs however the loop ends."""


def fit(
    task: TrainTask,
    *,
    resume: bool = False,
    stop_at: int | None = None,
    config_path: str | None = None,
    overrides: list[str] | None = None,
    command: str | None = None,
) -> TrainResult:
    """Train (or resume) ``task`` as its config describes, writing everything under ``cfg.out_dir``.

    Args:
        task: what to train.
        resume: continue from ``out_dir/checkpoint.pt`` exactly where it stopped.
        stop_at: stop with a checkpoint (no export) once this many steps are done; a later
            ``resume=True`` call continues the same run.
        config_path, overrides: recorded in the provenance card's reproduce command.
        command: the card's reproduce command as is (default: built from ``config_path``).

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError: for an invalid config, an existing run without ``resume``, an inconsistent
            resume, or a loss that is not finite.
        FileNotFoundError: when resuming without a checkpoint, or data files are missing.
    """
    cfg = task.cfg
    task.check()
    # one run per folder: a second `decodelab train` into it stops here instead of interleaving logs
    lock = FolderLock(cfg.out_dir).acquire()
    threads = torch.get_num_threads()
    try:
        out = prepare_out_dir(cfg.out_dir, resume, cfg.overwrite)
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        run = Run(cfg, to_dict(cfg), out, resolve_device(getattr(cfg, "device", "cpu")))
        try:
            _build(task, run, resume)
            if not _train(task, run, stop_at):
                return TrainResult(out, run.step, run.losses, total_steps=run.total)
            command = command or task.reproduce_command(config_path, overrides)
            return _finish(task, run, command)
        finally:
            task.close()
    finally:
        torch.set_num_threads(threads)
        lock.release()


def _build(task: TrainTask, run: Run, resume: bool) -> None:
    """Data, model, optimizer; the checkpoint's state on resume; ``config.json`` and the log."""
    cfg = run.cfg
    seed_everything(cfg.seed)
    task.build_data(run)
    run.total = task.total_steps()
    seed_everything(cfg.seed)  # the model's initialisation must not depend on what loading the data drew
    run.model = task.build_model(run).to(run.device)
    run.model.train()
    run.optimizer = task.build_optimizer(run.model)
    if resume:
        ckpt = load_checkpoint(run.out / CHECKPOINT_NAME)
        changed = check_resume_config(ckpt["config"], run.cfg_dict, task.also_resumable)
        if changed:
            log.warning("resuming with changed settings: %s", ", ".join(changed))
        task.load_state_dict(dict(ckpt.get("trainer", {})))
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        restore_rng_state(ckpt["rng"], task.generators())
        run.step = int(ckpt["step"])
        run.wall_before = float(ckpt.get("wall_time_s", ckpt.get("elapsed_s", 0.0)))
    atomic_write_text(run.out / "config.json", json.dumps(run.cfg_dict, indent=2) + "\n")
    run.logger = JsonlLogger(run.out / "log.jsonl", resume_step=run.step if resume else None)


def _save(task: TrainTask, run: Run) -> None:
    save_checkpoint(
        run.out / CHECKPOINT_NAME,
        {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(), "step": run.step,
         "rng": capture_rng_state(task.generators()), "trainer": task.state_dict(), "config": run.cfg_dict,
         "wall_time_s": run.wall(), "data_position": run.step * run.cfg.batch_size},
    )  # fmt: skip


def _autocast(run: Run) -> contextlib.AbstractContextManager[Any]:
    if getattr(run.cfg, "autocast_bf16", False):
        return torch.autocast(run.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _train(task: TrainTask, run: Run, stop_at: int | None) -> bool:
    """Run the steps; return whether the run is over (planned steps done or time budget spent)."""
    cfg, model, optimizer = run.cfg, run.model, run.optimizer
    end = run.total if stop_at is None else min(stop_at, run.total)
    clip = task.max_grad_norm()
    params = [p for p in model.parameters() if p.requires_grad]
    bar = progress(run.step, end, desc=cfg.name or task.name, enabled=cfg.progress)
    run.t0 = time.time()
    try:
        for step in bar:
            lr = task.lr(step, run.total)
            set_lr(optimizer, lr)
            batch = move_to(task.batch(step), run.device)
            with _autocast(run):
                output = task.forward(model, batch)
            loss, parts = task.loss(output, batch)
            if not torch.isfinite(loss):
                raise ValueError(f"the loss became {float(loss)} at step {step}: lower lr (or clip gradients)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = None if clip is None else torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            run.losses.append(float(loss.detach()))
            run.step = done = step + 1
            extra = task.after_step(run, output)
            record: dict[str, Any] = {"step": done}
            if done % cfg.log_every == 0 or done == end or extra:
                record.update(loss=run.losses[-1], loss_avg=run.recent_loss(cfg.log_every), lr=lr)
                if gnorm is not None:
                    record["grad_norm"] = float(gnorm)
                if task.num_items:
                    record["epoch"] = round(epoch_of(done, cfg.batch_size, task.num_items), 4)
                record.update({k: float(v.detach()) for k, v in parts.items()}, **extra)
                record.update(task.log_fields(run, record))
                bar.set_postfix(loss=f"{record['loss_avg']:.4f}", lr=f"{lr:.2e}")
            if task.should_evaluate(done, run.total):
                record.update(task.evaluate(run))
            if len(record) > 1:
                record["time_s"] = round(run.wall(), 1)
                run.logger.write(record)
            over_budget = bool(cfg.time_budget_min) and run.wall() > 60 * cfg.time_budget_min and done < end
            if done % cfg.ckpt_every == 0 or done == end or over_budget:
                _save(task, run)
            if over_budget:
                run.stopped_by_budget = True
                break
    finally:
        bar.close()
    return run.step >= run.total or run.stopped_by_budget


def _finish(task: TrainTask, run: Run, command: str) -> TrainResult:
    """Final metrics, the export and the provenance card."""
    cfg, done = run.cfg, run.step
    train_time = run.wall()
    metrics = task.final_metrics(run)
    if metrics:
        run.logger.write({"step": done, **{f"final_{k}": v for k, v in metrics.items()}})
    card: dict[str, Any] = {
        "task": task.name,
        "name": cfg.name or task.name,
        "num_parameters": count_parameters(run.model),
        "steps": done,
        "planned_steps": run.total,
        "stopped_by_time_budget": run.stopped_by_budget,
        "epochs": round(epoch_of(done, cfg.batch_size, task.num_items), 3) if task.num_items else None,
        "seed": cfg.seed,
        "train_time_s": round(train_time, 1),
        "wall_time_s": round(run.wall(), 1),
        "metrics": metrics,
        "command": command,
        "environment": environment_info(),
        "config": run.cfg_dict,
    }
    card.update(task.card(run, metrics))
    final = task.export(run, card)
    write_card(final, card, task.card_title(), task.card_sections(card))
    if final.resolve() != run.out.resolve():
        for name in ("card.json", "card.md"):
            shutil.copy2(final / name, run.out / name)
    return TrainResult(run.out, done, run.losses, metrics, final, True, run.total, card)
