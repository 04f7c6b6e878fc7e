"""The few torch.distributed helpers sampling and evaluation need (``torchrun``; gloo on CPU, NCCL on GPU).

Sampling (:mod:`decodelab.vision.sampler`) and feature extraction split work by sample index (each
rank its own shards / images); features are gathered in sample order on every rank, so a metric
computed from ``W`` processes equals the one computed from one.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from decodelab.eval.features import FeatureSet

__all__ = [
    "barrier",
    "broadcast_from_main",
    "finalize_distributed",
    "gather_features",
    "init_distributed",
    "is_main",
    "world_info",
]


def world_info() -> tuple[int, int]:
    """``(rank, world_size)`` of an initialised process group, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int]:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE > 1``); return ``(rank, world)``.

    The backend is NCCL when CUDA is available, gloo otherwise (CPU runs and tests).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dist.is_available() and not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return world_info()


def finalize_distributed() -> None:
    """Leave the process group (end of a command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    """Rank 0 (or no process group)."""
    return world_info()[0] == 0


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if world_info()[1] > 1:
        dist.barrier()


def gather_features(part: FeatureSet) -> FeatureSet:
    """All ranks' feature parts, concatenated in sample order (the input itself on one process)."""
    _, world = world_info()
    if world == 1:
        return FeatureSet.concat([part]) if len(part) else part
    parts: list[FeatureSet | None] = [None] * world
    dist.all_gather_object(parts, part)
    return FeatureSet.concat([p for p in parts if p is not None])


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself without a process group)."""
    if world_info()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
