"""The bundled photos: fixed split, shapes, dtype, errors."""

from __future__ import annotations

import pytest

from decodelab.datasets.photos import BundledPhotos, list_photos, load_photo


def test_split_is_fixed_disjoint_and_complete():
    train, test = list_photos("train"), list_photos("test")
    assert test == ["astronaut", "coffee", "flower", "motorcycle_left", "motorcycle_right"]
    assert not set(train) & set(test)
    assert sorted(train + test) == sorted(list_photos("all"))
    assert len(train) >= 12


def test_every_photo_loads_as_rgb_uint8():
    for name in list_photos("all"):
        img = load_photo(name)
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype.name == "uint8", name
        assert min(img.shape[:2]) >= 150, name
        assert img.std() > 10, name  # a real photo, not a flat image


def test_bundled_photos_tensor_and_crop():
    ds = BundledPhotos("test", multiple_of=32)
    x = ds[1]  # coffee, 400x600
    assert tuple(x.shape) == (3, 384, 576) and 0 <= x.min() and x.max() <= 1
    assert len(ds) == 5 and ds.names[0] == "astronaut"


def test_errors():
    with pytest.raises(ValueError, match="unknown split"):
        list_photos("val")
    with pytest.raises(ValueError, match="unknown bundled photo"):
        load_photo("lena")
    with pytest.raises(IndexError):
        BundledPhotos("test")[5]
