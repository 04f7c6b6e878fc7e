"""The coordinate-query interface shared by every continuous image model (GB-LSR, LIIF, LTE, WIRE).

A model turns images into a latent state once and then answers queries at any continuous
coordinates::

    state = model.encode(images)                 # images [B, 3, H, W] in [0, 1]
    rgb = model.query(state, coords, cells)      # coords [B, Q, 2] or [Q, 2] -> rgb [B, Q, 3]
    big = model.render(images, (2 * H, 3 * W))   # a whole grid, in chunks of bounded memory

Coordinate convention (LIIF's ``make_coord``): ``coords[..., 0]`` is **y** (rows) and
``coords[..., 1]`` is **x** (columns), both normalised so that the image spans ``[-1, 1]`` edge to
edge; the centre of pixel ``i`` of an ``n``-pixel axis is ``-1 + (2 i + 1) / n``. ``cells`` holds
the size of the queried output pixel in the same units (``2 / H_out, 2 / W_out``). Values are RGB
on the ``[0, 1]`` scale (not clamped by :meth:`query`; :meth:`render` clamps by default).

The latent state is a grid of cells (one per LR pixel for SR encoders, one per patch for GB-LSR's
patch encoder) laid over a *canvas*: the input image, possibly padded to a multiple of the patch
size. Queries are mapped from image to canvas coordinates first, so every model answers in the
coordinates of the image it was given.

Memory: :meth:`query` evaluates at most ``chunk`` queries per image at a time and every model
gathers the few per-cell tensors it needs per query (no unfolded or upsampled feature maps), so
the working memory of a query pass is ``O(B * chunk)`` beyond the latent state itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decodelab.datasets.coords import make_cell, make_coord
from decodelab.hub import PretrainedMixin

__all__ = [
    "DEFAULT_CHUNK",
    "ContinuousImageModel",
    "Corner",
    "Geometry",
    "LatentState",
    "gather_cells",
    "lookup_cells",
    "make_cell",
    "make_coord",
    "nearest_cell",
    "sample_image",
]

#: Queries per image evaluated in one pass by default (LIIF evaluates 30000 at a time; on CPUs
#: smaller passes avoid page-faulting fresh buffers and measured fastest for every model here).
DEFAULT_CHUNK = 4096


@dataclass
class Geometry:
    """Where a latent grid sits relative to the encoded image.

    Attributes:
        image_size: ``(H, W)`` of the encoded image.
        canvas_size: ``(Hc, Wc)`` of the canvas the grid covers (the image plus padding).
        offset: ``(top, left)`` padding before the image on the canvas.
        grid: ``(h, w)`` latent cells covering the canvas.
    """

    image_size: tuple[int, int]
    canvas_size: tuple[int, int]
    offset: tuple[int, int]
    grid: tuple[int, int]

    @property
    def is_identity(self) -> bool:
        return self.image_size == self.canvas_size and self.offset == (0, 0)

    def to_canvas(self, coords: Tensor) -> Tensor:
        """Image coordinates -> canvas coordinates (both in ``[-1, 1]`` units)."""
        if self.is_identity:
            return coords
        (h, w), (hc, wc), (t, l) = self.image_size, self.canvas_size, self.offset
        scale = coords.new_tensor([h / hc, w / wc])
        shift = coords.new_tensor([(2 * t + h - hc) / hc, (2 * l + w - wc) / wc])
        return coords * scale + shift

    def cells_to_canvas(self, cells: Tensor) -> Tensor:
        if self.is_identity:
            return cells
        (h, w), (hc, wc) = self.image_size, self.canvas_size
        return cells * cells.new_tensor([h / hc, w / wc])


@dataclass
class LatentState:
    """What :meth:`ContinuousImageModel.encode` returns; :meth:`~ContinuousImageModel.query` reads it.

    Attributes:
        tensors: per-cell tensors, channel-last ``[B, h * w, C]`` (plus model-specific extras).
        geometry: the grid and canvas layout.
        batch_size: ``B``.
    """

    tensors: dict[str, Tensor]
    geometry: Geometry
    batch_size: int
    extras: dict[str, Tensor] = field(default_factory=dict)

    def nbytes(self) -> int:
        """Memory held by the state's tensors."""
        ts = list(self.tensors.values()) + list(self.extras.values())
        return sum(t.numel() * t.element_size() for t in ts)


@dataclass
class Corner:
    """One latent cell chosen for each query.

    Attributes:
        index: ``[B, Q]`` flat cell index into the ``h * w`` grid.
        rel: ``[B, Q, 2]`` query minus cell centre, times ``(h, w)`` (so ``[-1, 1]`` inside the cell).
        weight: ``[B, Q]`` local-ensemble weight, or ``None`` when a single cell answers.
    """

    index: Tensor
    rel: Tensor
    weight: Tensor | None


def nearest_cell(c: Tensor, n: int) -> Tensor:
    """Index of the cell of an ``n``-cell axis nearest to ``c`` (in ``[-1, 1]`` units), as upstream picks it.

    LIIF, LTE and GB-LSR look cells up with ``grid_sample(mode="nearest", align_corners=False)``:
    the continuous index ``(c + 1) * n / 2 - 0.5`` (cell centres at integers) rounded **half to
    even**, so a query exactly on a cell boundary (which happens at non-integer scales, e.g. every
    fifth row at x2.5) goes to the even-indexed neighbour, not always to the upper one as ``floor``
    would. The arithmetic is PyTorch's CPU kernel's, so the choice is bit-for-bit the same.

    Args:
        c: coordinates ``[...]``.
        n: cells along the axis.

    Returns:
        ``[...]`` long indices in ``[0, n - 1]``.
    """
    return torch.round((c + 1) * (n / 2) - 0.5).long().clamp_(0, n - 1)


def lookup_cells(coords: Tensor, grid: tuple[int, int], local_ensemble: bool) -> list[Corner]:
    """The cell(s) answering each query: the nearest one, or LIIF's 4-corner local ensemble.

    With the ensemble, each query is shifted by half a cell towards each of its four diagonal
    neighbourhoods (plus ``1e-6`` to break ties), the nearest cell of each shifted point is taken,
    and each prediction is weighted by the area of the rectangle between the query and the
    *diagonally opposite* cell's centre, normalised to sum to one (LIIF, Sec. 3.2). The nearest
    cell is chosen as upstream's ``grid_sample(mode="nearest")`` chooses it (:func:`nearest_cell`).

    Args:
        coords: ``[B, Q, 2]`` canvas coordinates ``(y, x)``.
        grid: ``(h, w)`` cells covering the canvas.
        local_ensemble: four corners when true, one (nearest) cell otherwise.

    Returns:
        One :class:`Corner` (weight ``None``) or four (weights summing to one).
    """
    h, w = grid
    size = coords.new_tensor([h, w])
    if local_ensemble:
        shifts, eps = [(-1, -1), (-1, 1), (1, -1), (1, 1)], 1e-6
    else:
        shifts, eps = [(0, 0)], 0.0
    corners, areas = [], []
    for vy, vx in shifts:
        shifted = coords + coords.new_tensor([vy / h, vx / w]) + eps  # half a cell = 1/h in [-1, 1] units
        shifted = shifted.clamp(-1 + 1e-6, 1 - 1e-6)
        iy = nearest_cell(shifted[..., 0], h)  # [B, Q]
        ix = nearest_cell(shifted[..., 1], w)
        centre = torch.stack([-1 + (2 * iy + 1) / h, -1 + (2 * ix + 1) / w], dim=-1).to(coords.dtype)
        rel = (coords - centre) * size  # [B, Q, 2]
        corners.append(Corner(iy * w + ix, rel, None))
        areas.append((rel[..., 0] * rel[..., 1]).abs() + 1e-9)
    if not local_ensemble:
        return corners
    total = areas[0] + areas[1] + areas[2] + areas[3]
    for corner, area in zip(corners, [areas[3], areas[2], areas[1], areas[0]]):  # diagonal swap
        corner.weight = area / total
    return corners


def sample_image(image: Tensor, coords: Tensor, mode: str) -> Tensor:
    """``image`` ``[B, C, H, W]`` interpolated (``grid_sample``, edge taps replicated) at ``coords``
    ``[B, Q, 2]`` ``(y, x)`` in ``[-1, 1]`` (pixel centres at ``-1 + (2 i + 1) / n``) -> ``[B, Q, C]``.

    The skip connections of LTE (bilinear) and of GB-LSR's ``residual="bicubic"`` option.
    """
    grid = coords.flip(-1).unsqueeze(1).to(image.dtype)  # [B, 1, Q, (x, y)]
    up = F.grid_sample(image, grid, mode=mode, padding_mode="border", align_corners=False)
    return up[:, :, 0, :].transpose(1, 2)


def gather_cells(t: Tensor, index: Tensor) -> Tensor:
    """``t[b, index[b, q]]``: ``[B, N, C]`` per-cell values -> ``[B, Q, C]`` per-query values."""
    rows = torch.arange(t.shape[0], device=t.device)[:, None]  # [B, 1]
    return t[rows, index]


def check_images(images: Tensor, min_size: int = 1) -> Tensor:
    """Validate a float image batch ``[B, 3, H, W]`` (or ``[3, H, W]``, batched on return).

    Raises:
        ValueError: naming what is wrong with the input.
    """
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a torch tensor, got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W] RGB, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype} (divide uint8 by 255)")
    if min(images.shape[-2:]) < min_size:
        raise ValueError(f"images must be at least {min_size}x{min_size}, got {tuple(images.shape[-2:])}")
    return images


class ContinuousImageModel(nn.Module, PretrainedMixin):
    """Base class: ``encode`` once, ``query`` anywhere, ``render`` a grid.

    Subclasses implement :meth:`_encode` (normalised images -> :class:`LatentState`) and
    :meth:`_query` (canvas coordinates -> normalised RGB). ``data_norm = (sub, div)`` maps images
    in ``[0, 1]`` to the network's input range ``(x - sub) / div`` and its outputs back with
    ``y * div + sub`` (LIIF/LTE train with ``(0.5, 0.5)``; GB-LSR with ``(0, 1)``).
    """

    #: whether the decoder reads the cell size (LIIF's cell decoding, LTE's phase).
    uses_cells: bool = False
    #: smallest input side the encoder accepts.
    min_input_size: int = 1

    def __init__(self, data_norm: tuple[float, float] | list[float] = (0.0, 1.0)) -> None:
        super().__init__()
        if len(data_norm) != 2 or float(data_norm[1]) == 0:
            raise ValueError(f"data_norm must be (sub, div) with div != 0, got {data_norm}")
        self.norm_sub, self.norm_div = float(data_norm[0]), float(data_norm[1])

    # ---------------------------------------------------------------- to implement in subclasses
    def _encode(self, x: Tensor) -> LatentState:  # pragma: no cover - abstract
        raise NotImplementedError

    def _query(self, state: LatentState, coords: Tensor, cells: Tensor | None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    # ------------------------------------------------------------------------------- public API
    def encode(self, images: Tensor) -> LatentState:
        """Encode ``[B, 3, H, W]`` images in ``[0, 1]`` into a latent state (run once per image)."""
        images = check_images(images, self.min_input_size)
        return self._encode((images - self.norm_sub) / self.norm_div)

    def query(
        self, state: LatentState, coords: Tensor, cells: Tensor | None = None, chunk: int | None = DEFAULT_CHUNK
    ) -> Tensor:
        """RGB at continuous coordinates.

        Args:
            state: from :meth:`encode`.
            coords: ``[B, Q, 2]`` or ``[Q, 2]`` (shared by the batch) ``(y, x)`` in ``[-1, 1]``.
            cells: output pixel sizes, same shape as ``coords``; ``None`` means the encoded image's
                own pixel size (scale 1).
            chunk: at most this many queries per image per pass (``None``: all at once).

        Returns:
            ``[B, Q, 3]`` RGB on the ``[0, 1]`` scale (unclamped).
        """
        B = state.batch_size
        if coords.dim() == 2:
            coords = coords.unsqueeze(0).expand(B, -1, -1)
        if coords.dim() != 3 or coords.shape[-1] != 2 or coords.shape[0] != B:
            raise ValueError(f"coords must be [B, Q, 2] or [Q, 2] with B={B}, got {tuple(coords.shape)}")
        if cells is None:
            h, w = state.geometry.image_size
            cells = coords.new_tensor([2.0 / h, 2.0 / w]).expand_as(coords)
        elif cells.dim() == 2:
            cells = cells.unsqueeze(0).expand(B, -1, -1)
        if cells.shape != coords.shape:
            raise ValueError(f"cells must have the shape of coords {tuple(coords.shape)}, got {tuple(cells.shape)}")
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be >= 1 or None, got {chunk}")
        geo = state.geometry
        Q = coords.shape[1]
        step = Q if chunk is None else int(chunk)
        outs = []
        for s in range(0, max(Q, 1), step):
            c = geo.to_canvas(coords[:, s : s + step])
            cell = geo.cells_to_canvas(cells[:, s : s + step]) if self.uses_cells else None
            outs.append(self._query(state, c, cell) * self.norm_div + self.norm_sub)
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

    @torch.no_grad()
    def render(
        self,
        images: Tensor | LatentState,
        out_size: tuple[int, int],
        chunk: int | None = DEFAULT_CHUNK,
        clamp: bool = True,
    ) -> Tensor:
        """Evaluate a whole ``out_size = (H', W')`` grid of pixel centres.

        Args:
            images: ``[B, 3, H, W]`` in ``[0, 1]``, or a state from :meth:`encode`.
            out_size: output ``(height, width)``; any positive size (up- or down-sampling).
            chunk: queries per image per pass (bounds memory).
            clamp: clamp to ``[0, 1]``.

        Returns:
            ``[B, 3, H', W']``.
        """
        h, w = int(out_size[0]), int(out_size[1])
        if h < 1 or w < 1:
            raise ValueError(f"out_size must be positive, got {out_size}")
        state = images if isinstance(images, LatentState) else self.encode(images)
        B = state.batch_size
        dev = next(iter(state.tensors.values())).device
        out = torch.empty(B, h * w, 3, device=dev)
        step = h * w if chunk is None else max(int(chunk), 1)
        cell = torch.tensor([2.0 / h, 2.0 / w], device=dev)
        ys = -1 + (2 * torch.arange(h, device=dev, dtype=torch.float64) + 1) / h
        xs = -1 + (2 * torch.arange(w, device=dev, dtype=torch.float64) + 1) / w
        for s in range(0, h * w, step):
            flat = torch.arange(s, min(s + step, h * w), device=dev)  # row-major pixel ids
            coords = torch.stack([ys[flat // w], xs[flat % w]], dim=-1).float()  # [q, 2]
            out[:, s : s + step] = self.query(state, coords, cell.expand_as(coords), chunk=None)
        img = out.view(B, h, w, 3).permute(0, 3, 1, 2)
        return img.clamp(0, 1) if clamp else img

    def forward(self, images: Tensor, coords: Tensor, cells: Tensor | None = None) -> Tensor:
        """Training interface: ``query(encode(images), coords, cells)`` without chunking."""
        return self.query(self.encode(images), coords, cells, chunk=None)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
