"""Paired deraining datasets (rainy image, clean ground truth) in their standard on-disk layouts.

Layouts (``layout=`` name, what is read, who uses it):

- ``jorder``: one folder of ``rain-N.png`` + ``norain-N.png`` (clean = ``"no" + name``): Rain200H /
  Rain200L as the JORDER page (PKU ICST) and MCW-Net's ``rain100h`` read them (``rain_data_train_Heavy/``,
  ``rain_heavy_test/``), and PReNet's ``RainTrainH`` / ``RainTrainL``.
- ``rain200l``: ``rain/norain-Nx2.png`` (train) or ``rain/X2/norain-Nx2.png`` (test) <-> ``norain/norain-N.png``
  (MCW-Net's ``rain100l``).
- ``prenet``: ``rainy/<name>`` <-> ``norain/no<name>``, ``norain/<name>``, ``groundtruth/<name>`` or
  ``no<name>`` beside ``rainy/``: PReNet's old 100-image Rain100H/L and Rain12 (``rainy/`` + ``groundtruth/``).
- ``input_target``: ``input/<name>`` <-> ``target/<name>``: Rain13K (Restormer / MPRNet) and the
  "fully paired" Rain200H/L, DID, DDN, SPA packs of DRSformer / NeRD-Rain.
- ``rain1400``: ``rainy_image/{id}_{k}.jpg`` <-> ``ground_truth/{id}.jpg`` (DDN-Data / Rain1400, k = 1..14).
- ``spa``: a ``.txt`` list with one ``rain_path gt_path`` pair per line, paths relative to the list's
  folder (a leading ``/`` is ignored): SPA-Data's ``real_world.txt`` / ``real_test_1000.txt``.

Where data is looked for: an explicit path (folder or ``.txt``) is used as is; a dataset name
(``Rain200H``, ``Rain200L``, ``Rain100H``, ``Rain100L``, ``Rain1400``, ``Rain12``, ``SPA``,
``Rain13K``) is searched in ``data_dir`` (argument), then ``$DECODELAB_DATA/rain/<name>``, then
``~/decodelab_data/rain/<name>``, with the split sub-folders listed in :data:`RAIN_DATASETS`.
Nothing is downloaded: a missing dataset raises ``FileNotFoundError`` naming the folders searched
and where the data comes from.

Example:
    >>> from decodelab.datasets.rain import RainPairs
    >>> test = RainPairs("Rain200H", split="test")  # doctest: +SKIP
    >>> rainy, clean = test[0]  # float [3, H, W] in [0, 1]
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from decodelab.registry import register_dataset

__all__ = [
    "LAYOUTS",
    "RAIN_DATASETS",
    "NamedRainPairs",
    "RainPair",
    "RainPairs",
    "detect_layout",
    "find_rain_pairs",
    "rain_search_dirs",
]

LAYOUTS = ("jorder", "rain200l", "prenet", "input_target", "rain1400", "spa")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

#: Known datasets: where they come from and the split sub-folders (or list files) tried in order.
RAIN_DATASETS: dict[str, dict[str, Any]] = {
    "Rain200H": {
        "source": "JORDER (Yang et al. CVPR'17), https://www.icst.pku.edu.cn/struct/Projects/joint_rain_removal.html; "
        "also as input/target packs from the DRSformer / NeRD-Rain READMEs",
        "splits": {"train": ["rain_data_train_Heavy", "train", "RainTrainH"], "test": ["rain_heavy_test", "test"]},
    },
    "Rain200L": {
        "source": "JORDER (Yang et al. CVPR'17), https://www.icst.pku.edu.cn/struct/Projects/joint_rain_removal.html",
        "splits": {
            "train": ["rain_data_train_Light", "train", "RainTrainL", "."],
            "test": ["rain_data_test_Light", "test"],
        },
    },
    "Rain100H": {
        "source": "PReNet's mirror of the old 100-image test set (github.com/csdwren/PReNet README)",
        "splits": {"test": [".", "test"]},
    },
    "Rain100L": {
        "source": "PReNet's mirror of the old 100-image test set (github.com/csdwren/PReNet README)",
        "splits": {"test": [".", "test"]},
    },
    "Rain1400": {
        "source": "DDN-Data (Fu et al. CVPR'17), Rain12600 train / Rain1400 test; PReNet's mirror",
        "splits": {"train": ["train/Rain12600", "Rain12600", "train"], "test": ["test/Rain1400", "test", "."]},
    },
    "Rain12": {
        "source": "Li et al. CVPR'16 (12 test images); PReNet's mirror (test12/rainy + groundtruth)",
        "splits": {"test": [".", "test12", "test"]},
    },
    "SPA": {
        "source": "SPA-Data (Wang et al. CVPR'19), https://stevewongv.github.io/ (real_world.txt, real_test_1000.txt)",
        "splits": {
            "train": ["real_world.txt", "real_world_spanet.txt", "train"],
            "test": ["real_test_1000.txt", "test/real_test_1000.txt", "test"],
        },
    },
    "Rain13K": {
        "source": "Restormer's Deraining/Datasets README (train/Rain13K, test/{Test100,Rain100H,Rain100L,...})",
        "splits": {"train": ["train/Rain13K", "train"], "test": ["test/Test100", "test"]},
    },
}


@dataclass(frozen=True)
class RainPair:
    """One rainy image and its clean ground truth."""

    rain: Path
    clean: Path

    @property
    def name(self) -> str:
        return self.rain.name


def rain_search_dirs(data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Folders that may hold ``<dataset name>/``: ``data_dir``, ``$DECODELAB_DATA/rain``, ``~/decodelab_data/rain``."""
    dirs = []
    if data_dir is not None:
        dirs += [Path(data_dir).expanduser(), Path(data_dir).expanduser() / "rain"]
    env = os.environ.get("DECODELAB_DATA")
    if env:
        dirs.append(Path(env).expanduser() / "rain")
    dirs.append(Path("~/decodelab_data/rain").expanduser())
    return dirs


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)


def detect_layout(path: Path) -> str:
    """The layout of a folder (or ``spa`` for a ``.txt`` list).

    Raises:
        ValueError: when no known layout matches (the message lists them).
    """
    if path.is_file() and path.suffix == ".txt":
        return "spa"
    if (path / "input").is_dir() and (path / "target").is_dir():
        return "input_target"
    if (path / "rainy_image").is_dir() and (path / "ground_truth").is_dir():
        return "rain1400"
    if (path / "rainy").is_dir():
        return "prenet"
    if (path / "rain").is_dir() and (path / "norain").is_dir():
        return "rain200l"
    if path.is_dir() and any(p.name.startswith("rain") for p in _images(path)):
        return "jorder"
    raise ValueError(
        f"{path} matches no known deraining layout ({', '.join(LAYOUTS)}): expected rain-*.png + norain-*.png, "
        "rain/ + norain/, rainy/ (+ norain/ or groundtruth/), input/ + target/, rainy_image/ + ground_truth/, "
        "or a .txt list of 'rain gt' pairs"
    )


def _pairs_jorder(folder: Path) -> list[RainPair]:
    out = []
    for p in _images(folder):
        if p.name.startswith("rain"):
            out.append(RainPair(p, folder / ("no" + p.name)))
    return out


def _pairs_rain200l(folder: Path, split: str) -> list[RainPair]:
    rain_dir = folder / "rain" / "X2" if split == "test" and (folder / "rain" / "X2").is_dir() else folder / "rain"
    out = []
    for p in _images(rain_dir):
        stem = re.sub(r"x\d$", "", p.stem)  # norain-12x2 -> norain-12
        if stem.startswith("rain-"):
            stem = "no" + stem
        out.append(RainPair(p, folder / "norain" / (stem + p.suffix)))
    return out


def _pairs_prenet(folder: Path) -> list[RainPair]:
    out = []
    for p in _images(folder / "rainy"):
        candidates = [folder / "norain" / ("no" + p.name), folder / "norain" / p.name,
                      folder / "groundtruth" / p.name, folder / ("no" + p.name)]  # fmt: skip
        out.append(RainPair(p, next((c for c in candidates if c.is_file()), candidates[0])))
    return out


def _pairs_input_target(folder: Path) -> list[RainPair]:
    return [RainPair(p, folder / "target" / p.name) for p in _images(folder / "input")]


def _pairs_rain1400(folder: Path) -> list[RainPair]:
    out = []
    for p in _images(folder / "rainy_image"):
        gid = p.stem.rsplit("_", 1)[0]
        out.append(RainPair(p, folder / "ground_truth" / (gid + p.suffix)))
    return out


def _pairs_spa(list_file: Path) -> list[RainPair]:
    base = list_file.parent
    out = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ValueError(f"{list_file}:{lineno}: expected 'rain_path gt_path', got {line!r}")
        paths = []
        for s in parts:
            p = Path(s)
            paths.append(p if p.is_absolute() and p.is_file() else base / s.lstrip("/"))
        out.append(RainPair(paths[0], paths[1]))
    return out


def _resolve(name_or_path: str | os.PathLike[str], split: str, data_dir: Any) -> Path:
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    name = str(name_or_path)
    known = {k.lower(): k for k in RAIN_DATASETS}
    key = known.get(name.lower())
    if key is None:
        raise FileNotFoundError(
            f"no deraining data at {path}: not an existing folder/.txt list and not a known dataset name "
            f"({', '.join(RAIN_DATASETS)})"
        )
    info = RAIN_DATASETS[key]
    if split not in info["splits"]:
        raise ValueError(f"{key} has no {split!r} split; available: {', '.join(info['splits'])}")
    tried = []
    for root in rain_search_dirs(data_dir):
        for folder in (root / key, root / key.lower()):
            for sub in info["splits"][split]:
                cand = folder / sub
                tried.append(cand)
                if cand.exists():
                    try:
                        detect_layout(cand)
                        return cand
                    except ValueError:
                        continue
    shown = "\n  ".join(str(t) for t in tried[:12])
    raise FileNotFoundError(
        f"the {split} split of {key} was not found. Looked in:\n  {shown}\nGet it from {info['source']}, "
        f"unpack it to $DECODELAB_DATA/rain/{key}/ (or ~/decodelab_data/rain/{key}/), or pass the folder / "
        "list file itself. decodelab never downloads data."
    )


def find_rain_pairs(
    name_or_path: str | os.PathLike[str],
    split: str = "test",
    layout: str = "auto",
    data_dir: str | os.PathLike[str] | None = None,
) -> list[RainPair]:
    """Pairs of one split of a deraining dataset, in a fixed (sorted) order.

    Args:
        name_or_path: a known dataset name (see :data:`RAIN_DATASETS`), a folder, or a ``.txt`` list.
        split: ``train`` or ``test`` (picks the sub-folder of a named dataset and, for ``rain200l``,
            ``rain/`` vs ``rain/X2``).
        layout: one of :data:`LAYOUTS` or ``auto`` (detected from the folder's contents).
        data_dir: an extra folder holding ``<name>/`` (searched first).

    Raises:
        FileNotFoundError: when the data or a ground-truth file is missing.
        ValueError: for an unknown layout or an empty folder.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    path = _resolve(name_or_path, split, data_dir)
    layout = detect_layout(path) if layout == "auto" else layout
    readers = {
        "jorder": lambda: _pairs_jorder(path),
        "rain200l": lambda: _pairs_rain200l(path, split),
        "prenet": lambda: _pairs_prenet(path),
        "input_target": lambda: _pairs_input_target(path),
        "rain1400": lambda: _pairs_rain1400(path),
        "spa": lambda: _pairs_spa(path),
    }
    if layout not in readers:
        raise ValueError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)} or 'auto'")
    pairs = readers[layout]()
    if not pairs:
        raise ValueError(f"no rainy images found in {path} (layout {layout})")
    missing = [p.clean for p in pairs if not p.clean.is_file()] + [p.rain for p in pairs if not p.rain.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} file(s) of the {layout} layout in {path} are missing, e.g. {missing[0]}; "
            "check that the dataset was unpacked completely"
        )
    return pairs


def read_rgb(path: Path) -> Tensor:
    """An image file as float ``[3, H, W]`` in ``[0, 1]``: the shared reader
    (:func:`decodelab.datasets.sr.read_image`: 16-bit scaling, EXIF orientation, header size check)."""
    from decodelab.datasets.sr import read_image

    return read_image(path)


@register_dataset("rain_pairs", kind="paired-image")
class RainPairs(torch.utils.data.Dataset):
    """A paired deraining dataset: items are ``(rainy, clean)`` float ``[3, H, W]`` in ``[0, 1]``.

    Args:
        name_or_path: dataset name, folder or ``.txt`` list (see :func:`find_rain_pairs`).
        split: ``train`` or ``test``.
        layout: layout name or ``auto``.
        data_dir: extra folder searched first for named datasets.
        multiple_of: crop both images (top-left anchored) to multiples of this (1 keeps them).
    """

    def __init__(
        self,
        name_or_path: str | os.PathLike[str],
        split: str = "test",
        layout: str = "auto",
        data_dir: str | os.PathLike[str] | None = None,
        multiple_of: int = 1,
    ) -> None:
        if multiple_of < 1:
            raise ValueError(f"multiple_of must be >= 1, got {multiple_of}")
        self.pairs = find_rain_pairs(name_or_path, split, layout, data_dir)
        self.split = split
        self.multiple_of = multiple_of
        self.source = str(name_or_path)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        pair = self.pairs[index]
        rain, clean = read_rgb(pair.rain), read_rgb(pair.clean)
        if rain.shape != clean.shape:
            raise ValueError(
                f"rainy and clean images differ in size: {pair.rain} {tuple(rain.shape[1:])} vs "
                f"{pair.clean} {tuple(clean.shape[1:])}"
            )
        m = self.multiple_of
        h, w = (rain.shape[1] // m) * m, (rain.shape[2] // m) * m
        return rain[:, :h, :w], clean[:, :h, :w]


class NamedRainPairs:
    """``(name, rainy, clean)`` triples read lazily from a :class:`RainPairs` (bounded memory on big test sets).

    Args:
        ds: the dataset.
        limit: at most this many pairs (``None``: all).
        crop: a centred ``crop x crop`` window of each pair (``None``: full images).
    """

    def __init__(self, ds: RainPairs, limit: int | None = None, crop: int | None = None) -> None:
        self.ds, self.crop = ds, crop
        self.n = len(ds) if limit is None else min(limit, len(ds))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[str, Tensor, Tensor]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        rain, clean = self.ds[i]
        if self.crop is not None:
            c = min(self.crop, *rain.shape[1:])
            y, x = (rain.shape[1] - c) // 2, (rain.shape[2] - c) // 2
            rain, clean = rain[:, y : y + c, x : x + c], clean[:, y : y + c, x : x + c]
        return self.ds.names[i], rain, clean
