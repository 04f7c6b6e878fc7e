"""Offline rain synthesis: determinism, physics of the blend, fixed photo split, augmentations."""

from __future__ import annotations

import pytest
import torch

from decodelab.derain.synth import (
    RAIN_STYLES,
    SyntheticRainTrain,
    add_rain,
    cutout_,
    rain_layer,
    streak_kernel,
    synthetic_test_pairs,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_streak_kernel_orientation() -> None:
    k = streak_kernel(21, 0.0, 1.0)
    c = k.shape[0] // 2
    assert k[c, c] == k.max() and k[c - 8, c] > 0.5 and k[c, c - 8] == 0  # vertical line
    tilted = streak_kernel(21, 30.0, 1.0)
    ys, xs = torch.nonzero(tilted > 0.5, as_tuple=True)
    slope = torch.corrcoef(torch.stack([ys.float(), xs.float()]))[0, 1]
    assert slope > 0.9  # leaning right as it falls
    assert streak_kernel(21, 0.0, 3.0).sum() > 2 * k.sum()  # wider streaks


def test_rain_layer_density_and_range() -> None:
    sparse = rain_layer(64, 64, _gen(0), length=20, angle=0, streak_width=1, density=0.001, intensity=0.8)
    dense = rain_layer(64, 64, _gen(0), length=20, angle=0, streak_width=1, density=0.01, intensity=0.8)
    assert 0 <= sparse.min() and dense.max() <= 1
    assert (dense > 0.05).float().mean() > 3 * (sparse > 0.05).float().mean()


def test_add_rain_is_deterministic_and_only_brightens() -> None:
    clean = torch.rand(3, 40, 48, generator=_gen(1)) * 0.8
    a = add_rain(clean, _gen(5), RAIN_STYLES["light"])  # light: no veil, so rain only adds light
    assert torch.equal(a, add_rain(clean, _gen(5), "light"))
    assert not torch.equal(a, add_rain(clean, _gen(6), "light"))
    assert (a >= clean - 1 / 255).all() and (a > clean + 0.1).any()
    assert torch.equal(a, (a * 255).round() / 255)  # 8-bit quantised
    assert add_rain(clean[None].repeat(2, 1, 1, 1), _gen(0)).shape == (2, 3, 40, 48)
    with pytest.raises(ValueError, match="unknown rain style"):
        add_rain(clean, _gen(0), "drizzle")


def test_cutout_pastes_clean_squares() -> None:
    rainy, clean = torch.ones(8, 3, 32, 32), torch.zeros(8, 3, 32, 32)
    cutout_(rainy, clean, _gen(0), p=1.0)
    pasted = (rainy[:, 0] == 0).flatten(1).sum(1)
    assert (pasted > 0).sum() >= 6 and (pasted <= 16 * 16).all()  # squares of side < 0.5 * 32
    r2 = torch.ones(4, 3, 32, 32)
    cutout_(r2, clean[:4], _gen(0), p=0.0)
    assert (r2 == 1).all()


def test_training_batches_are_a_pure_function_of_step() -> None:
    ds = SyntheticRainTrain(crop=32, seed=3)
    r1, c1 = ds.batch(7, 2)
    r2, c2 = SyntheticRainTrain(crop=32, seed=3).batch(7, 2)
    assert torch.equal(r1, r2) and torch.equal(c1, c2) and r1.shape == (2, 3, 32, 32)
    r3, _ = ds.batch(8, 2)
    assert not torch.equal(r1, r3)
    assert not torch.equal(SyntheticRainTrain(crop=32, seed=4).batch(7, 2)[0], r1)
    assert set(ds.names).isdisjoint({"astronaut", "coffee", "flower", "motorcycle_left", "motorcycle_right"})
    with pytest.raises(ValueError, match="crop"):
        SyntheticRainTrain(crop=4)


def test_test_pairs_are_fixed_held_out_and_multiple_of_8() -> None:
    pairs = synthetic_test_pairs(crop=24)
    assert [n for n, _, _ in pairs] == ["astronaut", "coffee", "flower", "motorcycle_left", "motorcycle_right"]
    again = synthetic_test_pairs(crop=24)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(pairs, again))
    other = synthetic_test_pairs(seed=1, crop=24)
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(pairs, other))
    name, rainy, clean = synthetic_test_pairs(multiple_of=8)[1]  # coffee: 400 x 600
    assert name == "coffee" and rainy.shape == clean.shape and rainy.shape[1] % 8 == 0 and rainy.shape[2] % 8 == 0
