"""Evaluation of continuous image models: quality, query throughput, peak memory, parameters.

- **Native reconstruction** (GB-LSR's protocol): encode an image, query every pixel centre of its
  own grid, PSNR / SSIM on RGB in ``[0, 1]`` (no shave).
- **Super-resolution** (LIIF's benchmark protocol): encode the LR image, query the HR grid, PSNR and
  SSIM on the MATLAB ``rgb2ycbcr`` luma with a ``ceil(scale)``-pixel border shave (PSNR on RGB too).
- **Query throughput**: queries per second of :meth:`query` on a fixed encoded state (the encoder
  is timed separately), median over repeats after a warm-up pass, on whatever thread count the
  process runs with. Compare models only from one run on one machine.
- **Peak memory**: the growth of the resident set (Linux ``VmHWM`` after resetting it) while one
  image is encoded and rendered, measured in a forked child so models do not share allocator
  state; on CUDA, ``torch.cuda.max_memory_allocated``.

All metric maths comes from :mod:`decodelab.eval.quality`.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from decodelab.eval.quality import psnr, ssim
from decodelab.vision.lsr.base import DEFAULT_CHUNK, ContinuousImageModel

__all__ = [
    "center_crop",
    "evaluate_native",
    "evaluate_sr",
    "measure_peak_memory_mb",
    "measure_query_throughput",
]


def center_crop(img: Tensor, size: int | None) -> Tensor:
    """The central ``size x size`` crop of ``[..., H, W]`` (the whole image when smaller or ``None``)."""
    if size is None:
        return img
    H, W = img.shape[-2:]
    h, w = min(size, H), min(size, W)
    top, left = (H - h) // 2, (W - w) // 2
    return img[..., top : top + h, left : left + w]


def _summary(rows: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, float]:
    return {k: float(statistics.fmean(r[k] for r in rows)) for k in keys} if rows else {}


@torch.no_grad()
def evaluate_native(
    model: ContinuousImageModel,
    images: Sequence[Tensor],
    names: Sequence[str] | None = None,
    crop: int | None = None,
    chunk: int | None = DEFAULT_CHUNK,
) -> dict[str, Any]:
    """Native reconstruction quality: mean PSNR / SSIM (RGB) over ``images`` (``[3, H, W]`` in ``[0, 1]``).

    Returns:
        ``{"psnr", "ssim", "num_images", "per_image": [...]}``.
    """
    was = model.training
    model.eval()
    rows = []
    for i, img in enumerate(images):
        x = center_crop(img, crop).unsqueeze(0)
        rec = model.render(x, tuple(x.shape[-2:]), chunk=chunk)
        ok = min(x.shape[-2:]) >= 11  # the SSIM window
        row = {"name": names[i] if names else str(i), "size": list(x.shape[-2:]),
               "psnr": float(psnr(rec, x)[0]), "ssim": float(ssim(rec, x)[0]) if ok else None}  # fmt: skip
        rows.append(row)
    model.train(was)
    out = _summary(rows, ["psnr"])
    ok = [r for r in rows if r["ssim"] is not None]
    out["ssim"] = float(statistics.fmean(r["ssim"] for r in ok)) if ok else float("nan")
    return {**out, "num_images": len(rows), "per_image": rows}


@torch.no_grad()
def evaluate_sr(
    model: ContinuousImageModel,
    samples: Sequence[Any],
    crop: int | None = None,
    chunk: int | None = DEFAULT_CHUNK,
) -> dict[str, Any]:
    """SR quality over :class:`~decodelab.datasets.sr.SRSample`-like items (``hr``, ``lr``, ``scale``, ``name``).

    With ``crop``, the HR image is centre-cropped to ``crop`` (rounded to the scale grid) and its LR
    counterpart is cropped to match.

    Returns:
        ``{"psnr_y", "ssim_y", "psnr_rgb", "num_images", "per_image"}`` (shave ``ceil(scale)``).
    """
    was = model.training
    model.eval()
    rows = []
    for item in samples:
        hr, lr, scale = item.hr, item.lr, float(item.scale)
        if crop is not None and lr is not None:
            h_lr = max(1, min(lr.shape[-2], int(crop / scale)))
            w_lr = max(1, min(lr.shape[-1], int(crop / scale)))
            t, l = (lr.shape[-2] - h_lr) // 2, (lr.shape[-1] - w_lr) // 2
            lr = lr[..., t : t + h_lr, l : l + w_lr]
            ht, lt = round(t * scale), round(l * scale)
            hr = hr[..., ht : ht + round(h_lr * scale), lt : lt + round(w_lr * scale)]
        pred = model.render(lr.unsqueeze(0), tuple(hr.shape[-2:]), chunk=chunk)
        target = hr.unsqueeze(0)
        shave = math.ceil(scale)
        row = {"name": item.name, "scale": scale, "size": list(hr.shape[-2:]),
               "psnr_y": float(psnr(pred, target, y_channel=True, shave=shave)[0]),
               "psnr_rgb": float(psnr(pred, target, shave=shave)[0])}  # fmt: skip
        ok = min(hr.shape[-2:]) - 2 * shave >= 11  # the SSIM window
        row["ssim_y"] = float(ssim(pred, target, y_channel=True, shave=shave)[0]) if ok else None
        rows.append(row)
    model.train(was)
    out = _summary(rows, ["psnr_y", "psnr_rgb"])
    ok = [r for r in rows if r["ssim_y"] is not None]
    out["ssim_y"] = float(statistics.fmean(r["ssim_y"] for r in ok)) if ok else float("nan")
    return {**out, "num_images": len(rows), "per_image": rows}


@torch.no_grad()
def measure_query_throughput(
    model: ContinuousImageModel,
    image: Tensor,
    num_queries: int = 65536,
    chunk: int | None = DEFAULT_CHUNK,
    repeats: int = 5,
    scale: float = 1.0,
    seed: int = 0,
) -> dict[str, float]:
    """Queries per second of ``model.query`` on ``image`` (``[3, H, W]``), encoder timed apart.

    Args:
        num_queries: random continuous coordinates per timed pass.
        chunk: the query chunk size used.
        repeats: timed passes (after one warm-up); the median is reported.
        scale: the cell size of the queries is ``2 / (scale * H)`` (matters only to cell-aware models).

    Returns:
        ``queries_per_s``, ``query_s`` (median seconds per pass), ``encode_s`` (median), ``num_queries``.
    """
    was = model.training
    model.eval()
    x = image.unsqueeze(0) if image.dim() == 3 else image
    gen = torch.Generator().manual_seed(seed)
    coords = torch.rand(1, num_queries, 2, generator=gen) * 2 - 1
    H, W = x.shape[-2:]
    cells = coords.new_tensor([2.0 / (scale * H), 2.0 / (scale * W)]).expand_as(coords)
    enc_times, q_times = [], []
    state = model.encode(x)
    model.query(state, coords, cells, chunk=chunk)  # warm-up
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        state = model.encode(x)
        t1 = time.perf_counter()
        model.query(state, coords, cells, chunk=chunk)
        t2 = time.perf_counter()
        enc_times.append(t1 - t0)
        q_times.append(t2 - t1)
    model.train(was)
    q = statistics.median(q_times)
    return {"queries_per_s": num_queries / q, "query_s": q, "encode_s": statistics.median(enc_times),
            "num_queries": num_queries}  # fmt: skip


def _read_status(field: str) -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])  # kB
    except OSError:
        return None
    return None


def _release_free_heap() -> None:
    """Return glibc's free heap pages to the OS (``malloc_trim``), so new allocations show in the RSS."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure_peak_memory_mb(fn: Callable[[], Any], device: str = "cpu") -> float | None:
    """Peak memory growth (MiB) while ``fn()`` runs.

    On CUDA: ``max_memory_allocated`` above the allocation at the start. On Linux CPUs: ``fn`` runs in
    a forked child that first returns its free heap pages to the OS (``malloc_trim``) and resets its
    resident-set high-water mark (``VmHWM``, via ``clear_refs``); the growth of the high-water mark
    over the starting resident set is returned. Elsewhere ``None``.
    """
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    if not hasattr(os, "fork") or _read_status("VmHWM") is None:
        return None
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        value = -1.0
        try:
            _release_free_heap()  # inherited free heap pages would hide the child's allocations
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            base = _read_status("VmRSS")
            fn()
            peak = _read_status("VmHWM")
            if base is not None and peak is not None:
                value = (peak - base) / 1024
        except Exception:
            value = -1.0
        os.write(w, repr(value).encode())
        os.close(w)
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 64):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    value = float(data.decode() or -1)
    return None if value < 0 else value


class BicubicBaseline(torch.nn.Module):
    """MATLAB-style bicubic interpolation (:func:`~decodelab.datasets.resize.imresize`) behind the
    ``render`` call of the continuous models, so ``decodelab eval lsr --model bicubic`` prints the
    reference row every SR table starts from. No parameters; output clipped to ``[0, 1]``."""

    def render(self, x: Tensor, size: tuple[int, int], chunk: int | None = None) -> Tensor:
        from decodelab.datasets.resize import imresize

        return imresize(x, size=tuple(size)).clamp(0, 1)

    def num_parameters(self) -> int:
        return 0
