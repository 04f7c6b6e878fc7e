"""Helpers of the one training loop (:mod:`decodelab.train.loop`); nothing model-specific.

Seeding and random-state capture, a deterministic data order that is a pure function of
``(seed, step)``, the learning-rate schedules, atomic checkpoint writes, a JSONL log, a progress
bar, the device choice, the provenance card (``card.json`` + ``card.md``) and the run-directory
checks.

Exact resume is the design goal: a run stopped after step ``k`` and resumed reproduces the losses
and weights of an uninterrupted run bit for bit on the same machine and thread count. That holds
because (1) the batch order is recomputed from the seed, never iterated from a stateful loader (or,
where a task keeps a stateful order, that order is saved with the checkpoint), (2) the torch /
numpy / Python global generators and every private ``torch.Generator`` are saved and restored, and
(3) task state that accumulates between checkpoints (e.g. code-usage counts) is saved with them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import random
import shlex
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from decodelab.config import dumps_json

__all__ = [
    "CHECKPOINT_NAME",
    "LR_SCHEDULES",
    "JsonlLogger",
    "atomic_write_bytes",
    "atomic_write_text",
    "batch_indices",
    "capture_rng_state",
    "file_sha256",
    "load_checkpoint",
    "lr_at",
    "move_to",
    "psnr",
    "read_jsonl",
    "resolve_device",
    "restore_rng_state",
    "save_checkpoint",
    "seed_everything",
    "write_card",
]

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


# ----------------------------------------------------------------------------------------- seeding
def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch's default generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every random state a run depends on, in a ``torch.load(weights_only=True)``-safe form.

    Args:
        generators: private ``torch.Generator`` objects of the trainer, by name.
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Inverse of :func:`capture_rng_state` (also restores the named private generators)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    saved = state.get("generators", {})
    for name, gen in (generators or {}).items():
        if name not in saved:
            raise ValueError(f"checkpoint has no state for the random generator {name!r}")
        gen.set_state(saved[name])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -------------------------------------------------------------------------------------- data order
def batch_indices(num_items: int, batch_size: int, step: int, seed: int) -> Tensor:
    """Item indices of the batch at ``step`` (0-based): a pure function of its arguments.

    The data order is the concatenation of per-epoch permutations, epoch ``e`` drawn from a
    generator seeded with ``(seed, e)``; batch ``s`` holds positions ``[s*B, (s+1)*B)`` of that
    stream, so batches may straddle an epoch boundary and every item is seen once per epoch.
    Resuming at any step therefore needs nothing but the step number.

    Raises:
        ValueError: when there are no items or ``batch_size < 1``.
    """
    if num_items < 1:
        raise ValueError("the training set is empty")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    start, stop = step * batch_size, (step + 1) * batch_size
    out = []
    for epoch in range(start // num_items, (stop - 1) // num_items + 1):
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch)
        perm = torch.randperm(num_items, generator=gen)
        lo = max(start - epoch * num_items, 0)
        hi = min(stop - epoch * num_items, num_items)
        out.append(perm[lo:hi])
    return torch.cat(out)


def epoch_of(step: int, batch_size: int, num_items: int) -> float:
    """Fractional epoch reached after ``step`` batches."""
    return step * batch_size / max(num_items, 1)


# ----------------------------------------------------------------------------------------- schedule
#: Learning-rate schedules :func:`lr_at` knows.
LR_SCHEDULES = ("cosine", "constant", "multistep", "step")


def lr_at(
    step: int,
    base_lr: float,
    total_steps: int,
    warmup: int = 0,
    schedule: str = "cosine",
    min_lr_ratio: float = 0.1,
    *,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    step_size: int | None = None,
) -> float:
    """Learning rate at ``step`` (0-based): linear warmup, then one of :data:`LR_SCHEDULES`.

    - ``cosine``: from ``base_lr`` at the end of warmup to ``min_lr_ratio * base_lr`` at ``total_steps``;
    - ``constant``: ``base_lr``;
    - ``multistep``: ``base_lr * gamma ** k``, ``k`` = number of ``milestones`` reached;
    - ``step``: ``base_lr * gamma ** (step // step_size)`` (``step_size`` unset: constant).

    Raises:
        ValueError: for an unknown schedule name.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; use one of {', '.join(LR_SCHEDULES)}")
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant":
        return base_lr
    if schedule == "multistep":
        return base_lr * gamma ** sum(step >= m for m in milestones)
    if schedule == "step":
        return base_lr * gamma ** (step // step_size) if step_size else base_lr
    span = max(total_steps - warmup, 1)
    t = min(max(step - warmup, 0) / span, 1.0)
    return base_lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def build_adamw(
    model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] | list[float]
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices/convolutions only (not on norms, biases or 1-D tensors)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


# -------------------------------------------------------------------------------------------- device
def resolve_device(name: str = "cpu") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``.

    Raises:
        ValueError: for another name, or ``cuda`` on a machine without CUDA.
    """
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was requested but CUDA is not available; use device: cpu or auto")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def move_to(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor in it (nested tuples, lists, dicts) on ``device``; other values kept."""
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


# ---------------------------------------------------------------------------------------------- IO
def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace`` (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Atomically ``torch.save`` a checkpoint dict (tensors and plain containers only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: no unpickling).

    Raises:
        FileNotFoundError: when there is no checkpoint at ``path``.
        ValueError: when the file is not a readable training checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no training checkpoint at {path}: nothing to resume. Run without --resume to start a new run."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"could not read the training checkpoint {path}: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a decodelab training checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def json_sha(obj: Any, n: int = 12) -> str:
    """Short stable hash of a JSON-serialisable object (cache keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


class JsonlLogger:
    """Append-only JSONL metrics log; on resume, lines past the checkpoint step are dropped.

    Args:
        path: the ``.jsonl`` file.
        resume_step: when resuming, keep only records with ``step <= resume_step``; ``None`` starts
            a fresh log.
    """

    def __init__(self, path: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            atomic_write_text(self.path, "")
        elif self.path.exists():
            kept = [r for r in read_jsonl(self.path) if int(r.get("step", 0)) <= resume_step]
            atomic_write_text(self.path, "".join(dumps_json(r, indent=None) for r in kept))

    def write(self, record: Mapping[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(dumps_json(dict(record), indent=None, default=float))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSONL file (a torn last line from a crash is skipped)."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


# --------------------------------------------------------------------------------------- metrics
@torch.no_grad()
def psnr(recon: Tensor, target: Tensor) -> Tensor:
    """Per-image PSNR in dB of images in ``[-1, 1]`` (both mapped to ``[0, 1]``; ``recon`` clamped).

    The maths is :func:`decodelab.eval.quality.psnr`; this adapts the training scale.

    Returns:
        ``[B]`` float32 values; identical images give ``inf`` capped at 100 dB (a finite training log).
    """
    from decodelab.eval.quality import psnr as psnr01

    a = (recon.float().clamp(-1, 1) + 1) / 2
    b = (target.float().clamp(-1, 1) + 1) / 2
    return psnr01(a, b).clamp(max=100.0).float()


# ----------------------------------------------------------------------------------- progress bar
def progress(start: int, total: int, desc: str, enabled: bool = True) -> Any:
    """A tqdm bar over steps ``start..total`` (plain ``range`` when disabled or tqdm is missing)."""
    if enabled:
        try:
            from tqdm.auto import tqdm

            # A bar on a non-tty (nohup log) updates at most every 30 s so logs stay readable.
            interval = 0.1 if sys.stderr.isatty() else 30.0
            return tqdm(range(start, total), initial=start, total=total, desc=desc, mininterval=interval)
        except ImportError:  # pragma: no cover - tqdm is a core dependency
            pass
    return _Plain(range(start, total))


class _Plain:
    def __init__(self, it: range) -> None:
        self.it = it

    def __iter__(self) -> Iterator[int]:
        return iter(self.it)

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------ cards
def reproduce_command(config_path: str | None, overrides: list[str] | None, out_dir: str | Path) -> str:
    """The shell command that reproduces a run from its config file and overrides."""
    parts = ["decodelab", "train", "--config", str(config_path or "<config.yaml>")]
    parts += ["--out", str(out_dir)]
    parts += list(overrides or [])
    return " ".join(shlex.quote(p) for p in parts)


def environment_info() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(0),
    }


def write_card(
    directory: str | Path,
    card: Mapping[str, Any],
    title: str,
    sections: Mapping[str, Sequence[str]] | None = None,
) -> tuple[Path, Path]:
    """Write ``card.json`` and a human-readable ``card.md`` (provenance of a trained model).

    ``card`` should hold at least ``config``, ``data``, ``steps``, ``seed``, ``wall_time_s``,
    ``metrics`` and ``command``; any other keys are listed too.

    Args:
        directory: where both files go.
        card: the card's content.
        title: the markdown title.
        sections: extra markdown sections (heading -> lines) placed after the metrics.
    """
    directory = Path(directory)
    card = dict(card)
    card.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    jpath = atomic_write_text(directory / "card.json", dumps_json(card, default=str))
    lines = [f"# {title}", ""]
    lines.append(f"Trained by decodelab's own training code ({card.get('task', '?')} trainer).")
    lines.append("")
    lines.append("## Reproduce")
    lines.append("")
    lines.append("```")
    lines.append(str(card.get("command", "")))
    lines.append("```")
    lines.append("")
    lines.append("## Summary")
    lines.append("")
    for key in ("steps", "seed", "epochs", "wall_time_s", "num_parameters", "data"):
        if key in card:
            lines.append(f"- **{key}**: {_fmt(card[key])}")
    lines.append("")
    lines.append("## Metrics")
    lines.append("")
    for k, v in dict(card.get("metrics", {})).items():
        lines.append(f"- {k}: {_fmt(v)}")
    lines.append("")
    for heading, body in (sections or {}).items():
        lines += [f"## {heading}", "", *body, ""]
    rest = {
        k: v
        for k, v in card.items()
        if k not in ("command", "metrics", "config", "steps", "seed", "epochs", "wall_time_s", "num_parameters", "data")
    }
    if rest:
        lines.append("## Other")
        lines.append("")
        for k, v in rest.items():
            lines.append(f"- {k}: {_fmt(v)}")
        lines.append("")
    lines.append("## Config")
    lines.append("")
    lines.append("```json")
    lines.append(json.dumps(card.get("config", {}), indent=2, default=str))
    lines.append("```")
    mpath = atomic_write_text(directory / "card.md", "\n".join(lines) + "\n")
    return jpath, mpath


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
    return str(v)


# ------------------------------------------------------------------------------------- run set-up
#: Config keys that may change between a run and its resumption (they do not change the maths).
RESUMABLE_KEYS = frozenset(
    {"out_dir", "progress", "threads", "time_budget_min", "overwrite", "log_every", "ckpt_every", "eval_every",
     "eval_batch_size", "steps", "name", "device"}
)  # fmt: skip


def prepare_out_dir(out_dir: str | Path, resume: bool, overwrite: bool) -> Path:
    """Create ``out_dir``; refuse to silently overwrite an existing run.

    Raises:
        ValueError: when ``out_dir`` holds a checkpoint and neither ``resume`` nor ``overwrite`` is set.
    """
    out = Path(out_dir)
    if not resume and (out / CHECKPOINT_NAME).exists() and not overwrite:
        raise ValueError(
            f"{out} already holds a training run ({CHECKPOINT_NAME}); pass --resume to continue it, "
            "--out to train elsewhere, or overwrite=true to start over"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def check_resume_config(
    saved: Mapping[str, Any], current: Mapping[str, Any], also_resumable: frozenset[str] = frozenset()
) -> list[str]:
    """Compare a checkpoint's config with the current one.

    Args:
        saved: the config stored in the checkpoint.
        current: the config of this call.
        also_resumable: keys besides :data:`RESUMABLE_KEYS` that may change (e.g. final-evaluation settings).

    Returns:
        The changed keys that are allowed to change (e.g. ``steps``), for a warning.

    Raises:
        ValueError: naming every other changed key (model, data, optimiser, seed, ...).
    """
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    allowed = RESUMABLE_KEYS | also_resumable
    bad = [k for k in changed if k not in allowed]
    if bad:
        details = "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in bad)
        raise ValueError(
            f"cannot resume: the config differs from the checkpoint's in {', '.join(bad)} ({details}). "
            "Resume with the same config, or start a new run in another --out directory."
        )
    return [k for k in changed if k in allowed]


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
