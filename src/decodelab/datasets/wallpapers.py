"""Real photographs from Debian's desktop-background packages, read offline from ``/usr/share``.

Two Debian packages carry high-resolution **photographs** under licences that allow this use:
``mate-backgrounds`` (the ``nature`` set, GPL-2+) and ``plasma-workspace-wallpapers`` (GPL-2+
per ``debian/copyright``; LGPL-3 per each wallpaper's ``metadata.json``). decodelab uses them as
training photos for its super-resolution, reconstruction and deraining defaults. The images are
not copied into decodelab: this module lists them (:data:`WALLPAPERS`) and reads them where the
packages install them, checking each file's sha256.

The list was curated by hand from the packages' copyright files and contact sheets of every
image: drawings, renders, abstract art and blurred gradients are left out, as are
``gnome-backgrounds`` 43 and ``ukui-wallpapers`` 20.04 (no photographs in those versions).
Plasma ships each wallpaper at several sizes; the largest (2560x1600) is used.

The split is fixed by content hash, never by a random draw: a photo is in ``val`` when the first
eight hex digits of its sha256, read as an integer, are divisible by 5; the other photos are
``train``. With the current files that is 19 ``train`` and 4 ``val`` photos.

Install the packages with::

    apt-get install -y mate-backgrounds plasma-workspace-wallpapers

Example:
    >>> from decodelab.datasets.wallpapers import list_wallpapers, load_wallpaper
    >>> list_wallpapers("val")
    ['mate-greenmeadow', 'plasma-coldripple', 'plasma-darkesthour', 'plasma-eveningglow']
    >>> load_wallpaper("mate-greenmeadow").shape  # long side reduced to 1280 px
    (1024, 1280, 3)
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_MAX_SIDE",
    "SPLITS",
    "WALLPAPERS",
    "WALLPAPER_PACKAGES",
    "Wallpaper",
    "find_wallpaper_root",
    "install_command",
    "list_wallpapers",
    "load_wallpaper",
    "missing_packages",
    "wallpaper_split",
]

#: the long side photos are reduced to by default (area-style Lanczos down-sampling): keeps memory
#: small, and down-sampled photos are cleaner (less JPEG and sensor noise) high-resolution targets.
DEFAULT_MAX_SIDE = 1280

_MATE_LICENSE = "GPL-2+ (mate-backgrounds debian/copyright)"
_PLASMA_LICENSE = "GPL-2+ (debian/copyright); LGPL-3 (metadata.json)"


@dataclass(frozen=True)
class Wallpaper:
    """One curated photograph.

    Attributes:
        name: decodelab's name for it (``<package short name>-<title>``).
        package: the Debian package that installs it.
        path: its path relative to the data root (``/usr/share``).
        license: its licence as the package's copyright files state it.
        author: its author as the copyright file / metadata names them.
        sha256: the first 16 hex digits of the file's sha256 (checked on load).
    """

    name: str
    package: str
    path: str
    license: str
    author: str
    sha256: str


def _mate(title: str, author: str, sha: str) -> Wallpaper:
    return Wallpaper(f"mate-{title.lower()}", "mate-backgrounds", f"backgrounds/mate/nature/{title}.jpg",
                     _MATE_LICENSE, author, sha)  # fmt: skip


def _plasma(title: str, author: str, sha: str) -> Wallpaper:
    return Wallpaper(f"plasma-{title.lower()}", "plasma-workspace-wallpapers",
                     f"wallpapers/{title}/contents/images/2560x1600.jpg", _PLASMA_LICENSE, author, sha)  # fmt: skip


#: The curated photographs (mate-backgrounds 1.26.0-1, plasma-workspace-wallpapers 4:5.27.5-2).
WALLPAPERS: tuple[Wallpaper, ...] = (
    _mate("Aqua", "Charles Barbin", "5c30118205982da4"),
    _mate("Blinds", "Lennart Poettering, Andrea Cimitan", "f7aac0dcc2e06d04"),
    _mate("Dune", "Marco Cogoni, Hylke Bons", "8a67c2cb0be8c46b"),
    _mate("FreshFlower", "Jens Ansorg", "972b0a0c4e5e3fa9"),
    _mate("Garden", "Charles Barbin", "d3095ee09d425ef2"),
    _mate("GreenMeadow", "Timothy Schellhase, Lapo Calamandrei", "8fa0de0aa4089f73"),
    _mate("LadyBird", "Charles Barbin", "e35a9a4126ef969c"),
    _mate("RainDrops", "blackcombwhistler07", "3e4ea9671c28c90a"),
    _mate("Storm", "Sergey Nazarov", "77ca53077831d323"),
    _mate("TwoWings", "Charles Barbin, Hylke Bons", "665e5abf8a539907"),
    _mate("Wood", "Jean-François Fortin Tam", "19c78500ac00a622"),
    _mate("YellowFlower", "Charles Barbin", "254da96256acb7ad"),
    _plasma("BytheWater", "Maciej Wiklo", "c272434ef39f2abf"),
    _plasma("ColdRipple", "Risto Saukonpää", "05bef6722fc0ed81"),
    _plasma("ColorfulCups", "Dmitri Popov", "6e0f3a72feb5a4a9"),
    _plasma("DarkestHour", "Risto Saukonpää", "8e3703fae3a3c217"),
    _plasma("EveningGlow", "Ian Hex", "586682dcb362b9f6"),
    _plasma("FallenLeaf", "Martin Klapetek", "95603a6560c7e8d5"),
    _plasma("Grey", "Sigi Sagi", "88c31d8944b7e693"),
    _plasma("Kite", "Risto Saukonpää", "bdca288ce296a981"),
    _plasma("OneStandsOut", "Risto Saukonpää", "cb507baf1dafdcae"),
    _plasma("Path", "Risto Saukonpää", "7477457d7f17b736"),
    _plasma("summer_1am", "Risto Saukonpää", "c868b50789591dd4"),
)
_BY_NAME = {w.name: w for w in WALLPAPERS}
WALLPAPER_PACKAGES: tuple[str, ...] = tuple(dict.fromkeys(w.package for w in WALLPAPERS))


def wallpaper_split(w: Wallpaper) -> str:
    """``val`` when ``int(sha256[:8], 16) % 5 == 0``, else ``train`` (the fixed, documented rule)."""
    return "val" if int(w.sha256[:8], 16) % 5 == 0 else "train"


SPLITS: dict[str, tuple[str, ...]] = {
    "train": tuple(w.name for w in WALLPAPERS if wallpaper_split(w) == "train"),
    "val": tuple(w.name for w in WALLPAPERS if wallpaper_split(w) == "val"),
    "all": tuple(w.name for w in WALLPAPERS),
}


def install_command(packages: tuple[str, ...] | list[str] = WALLPAPER_PACKAGES) -> str:
    """The shell command that installs ``packages``."""
    return "apt-get install -y " + " ".join(packages)


def find_wallpaper_root(root: str | Path | None = None) -> Path:
    """The data root: ``root``, else ``$DECODELAB_WALLPAPER_ROOT``, else ``/usr/share``."""
    return Path(root or os.environ.get("DECODELAB_WALLPAPER_ROOT") or "/usr/share").expanduser()


def missing_packages(root: str | Path | None = None) -> list[str]:
    """The packages with at least one curated photo missing under the data root."""
    base = find_wallpaper_root(root)
    return list(dict.fromkeys(w.package for w in WALLPAPERS if not (base / w.path).is_file()))


def list_wallpapers(split: str = "all") -> list[str]:
    """Names of the curated photos in ``split`` (``train``, ``val`` or ``all``), in a fixed order."""
    if split not in SPLITS:
        raise ValueError(f"unknown wallpaper split {split!r}; use one of {', '.join(SPLITS)}")
    return list(SPLITS[split])


def _read(w: Wallpaper, base: Path, max_side: int | None, verify: bool) -> np.ndarray:
    from PIL import Image

    path = base / w.path
    if not path.is_file():
        raise FileNotFoundError(
            f"the photo {w.name!r} ({path}) is missing: it ships in the Debian package {w.package}; "
            f"install it with `{install_command((w.package,))}`"
        )
    data = path.read_bytes()
    if verify and hashlib.sha256(data).hexdigest()[: len(w.sha256)] != w.sha256:
        raise ValueError(
            f"{path} does not match the curated photo {w.name!r} (sha256 {w.sha256}...): another version of "
            f"{w.package} is installed; decodelab's list was made from mate-backgrounds 1.26.0-1 and "
            f"plasma-workspace-wallpapers 4:5.27.5-2"
        )
    from io import BytesIO

    with Image.open(BytesIO(data)) as im:
        img = im.convert("RGB")
    if max_side is not None and max(img.size) > max_side:
        f = max_side / max(img.size)
        size = (max(1, round(img.width * f)), max(1, round(img.height * f)))
        img = img.resize(size, Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


@lru_cache(maxsize=32)
def _load_cached(name: str, base: Path, max_side: int | None, verify: bool) -> np.ndarray:
    img = _read(_BY_NAME[name], base, max_side, verify)
    img.setflags(write=False)
    return img


def load_wallpaper(
    name: str, root: str | Path | None = None, max_side: int | None = DEFAULT_MAX_SIDE, verify: bool = True
) -> np.ndarray:
    """One curated photo as a read-only ``uint8`` array ``[H, W, 3]``.

    Args:
        name: a name from :func:`list_wallpapers`.
        root: data root (default :func:`find_wallpaper_root`).
        max_side: reduce the photo (Lanczos) so its long side is at most this; ``None`` keeps it whole.
        verify: check the file's sha256 against the curated list.

    Raises:
        ValueError: for an unknown name, or a file that is not the curated photo.
        FileNotFoundError: when the package that ships it is not installed (the message names the
            ``apt-get install`` command).
    """
    if name not in _BY_NAME:
        raise ValueError(f"unknown wallpaper photo {name!r}; available: {', '.join(_BY_NAME)}")
    if max_side is not None and max_side < 16:
        raise ValueError(f"max_side must be >= 16 or None, got {max_side}")
    return _load_cached(name, find_wallpaper_root(root), max_side, bool(verify))
