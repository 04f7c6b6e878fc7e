"""The one table of training tasks: a config's ``task:`` value -> the task that trains it.

Each task module registers its :class:`~decodelab.train.loop.TrainTask` subclass with
:func:`register_task`; ``decodelab train`` (:mod:`decodelab.cli.train`), :func:`load_train_config`
and :func:`run_training` look tasks up here and nowhere else.

Example:
    >>> from decodelab.train import TASKS
    >>> TASKS.list()  # doctest: +SKIP
    ['classifier', 'derain', 'gpt', 'lsr', 'vq']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from decodelab.config import apply_overrides, load_config, load_yaml
from decodelab.registry import Registry
from decodelab.train.loop import FitOptions, TrainResult, TrainTask, fit

__all__ = ["TASKS", "get_task", "load_train_config", "register_task", "run_training"]

#: task name -> :class:`~decodelab.train.loop.TrainTask` subclass
TASKS = Registry("training task")

#: keyword arguments of :func:`run_training` that go to the loop (the rest go to the task)
_FIT_KEYS = tuple(FitOptions.__annotations__)


def register_task(cls: type[TrainTask]) -> type[TrainTask]:
    """Class decorator: register ``cls`` under ``cls.name`` (the configs' ``task:`` value)."""
    TASKS.register(cls.name, description=(cls.__doc__ or "").strip().split("\n")[0])(cls)
    return cls


#: tasks whose modules sit outside decodelab.train (they import the loop, so they are imported on first use)
LAZY_TASKS = ("meg",)


def _register_lazy(name: str) -> None:
    if name == "meg" and name not in TASKS:
        from decodelab.neuro.runs.meg_task import MegTask

        register_task(MegTask)


def get_task(name: Any) -> type[TrainTask]:
    """The task class registered as ``name``.

    Raises:
        ValueError: for an unknown name (listing the registered ones).
    """
    if isinstance(name, str) and name in LAZY_TASKS:
        _register_lazy(name)
    if not isinstance(name, str) or name not in TASKS:
        known = sorted({*TASKS.list(), *LAZY_TASKS})
        raise ValueError(
            f"the top-level 'task' must be one of {', '.join(known)} (got {name!r}); it selects the trainer"
        )
    return TASKS.get(name).fn


def load_train_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """Load a training YAML into the config class of the task its ``task:`` names, after dotted overrides.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: for a missing/unknown task, an unknown key, or an invalid value.
    """
    task = load_yaml(path).get("task")
    task_overrides = [o for o in overrides if o.partition("=")[0].strip().lstrip("-") == "task"]
    if task_overrides:
        task = apply_overrides({"task": task}, task_overrides[-1:])["task"]
    try:
        cls = get_task(task)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    cfg = load_config(cls.config_class, path, list(overrides))
    cls.check_config_file(cfg, path)
    return cfg


def run_training(cfg: Any, **kwargs: Any) -> TrainResult:
    """Train the task ``cfg.task`` names through the one loop.

    Args:
        cfg: a task's config.
        **kwargs: ``resume``, ``stop_at``, ``config_path``, ``overrides``, ``command`` go to
            :func:`~decodelab.train.loop.fit`; the others to the task (in-memory data, a tokenizer, ...).
    """
    cls = get_task(getattr(cfg, "task", None))
    fit_kwargs = {k: kwargs.pop(k) for k in _FIT_KEYS if k in kwargs}
    return fit(cls(cfg, **kwargs), **fit_kwargs)
