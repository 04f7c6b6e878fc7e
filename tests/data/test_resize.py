"""MATLAB-imresize semantics: documented MATLAB outputs, hand-computed taps, PIL agreement, properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from decodelab.datasets.resize import contributions, cubic, imresize, resize_matrix


def test_reproduces_matlab_outputs_quoted_in_public_answers() -> None:
    # MATLAB: imresize([1,2;3,4],[4,4],'bilinear') and imresize(ans,[2,2],'bilinear') (antialiased)
    up = imresize(torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64), size=(4, 4), kernel="triangle")
    expected_up = [[1, 1.25, 1.75, 2], [1.5, 1.75, 2.25, 2.5], [2.5, 2.75, 3.25, 3.5], [3, 3.25, 3.75, 4]]
    torch.testing.assert_close(up, torch.tensor(expected_up, dtype=torch.float64))
    down = imresize(up, size=(2, 2), kernel="triangle")
    torch.testing.assert_close(down, torch.tensor([[1.5625, 2.1875], [2.8125, 3.4375]], dtype=torch.float64))
    # without antialiasing the same reduction is plain bilinear sampling (what cv2 gives: 1.375 ...)
    plain = imresize(up, size=(2, 2), kernel="triangle", antialias=False)
    torch.testing.assert_close(plain, torch.tensor([[1.375, 2.125], [2.875, 3.625]], dtype=torch.float64))


def test_cubic_kernel_values() -> None:
    x = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, -0.5])
    np.testing.assert_allclose(cubic(x), [1.0, 0.5625, 0.0, -0.0625, 0.0, 0.0, 0.5625])


def test_hand_computed_half_scale_taps() -> None:
    """x1/2 of 8 pixels, output 1: u = 1.5, kernel 0.5 cubic(0.5 x), 8-wide, mirrored at the border."""
    row = resize_matrix(8, 4, 0.5)[0]
    # taps at 1-based -2..5: -0.01171875 -0.03515625 0.11328125 0.43359375 0.43359375 0.11328125 -0.03515625
    # -0.01171875; taps 0, -1, -2 mirror onto pixels 1, 2, 3
    expected = [0.43359375 + 0.11328125, 0.43359375 - 0.03515625, 0.11328125 - 0.01171875, -0.03515625, -0.01171875]
    np.testing.assert_allclose(row, expected + [0, 0, 0], atol=1e-15)
    w, idx = contributions(8, 4, 0.5)
    np.testing.assert_allclose(w.sum(1), 1.0)
    assert idx.min() >= 0 and idx.max() <= 7


@pytest.mark.parametrize("size", [(16, 16), (150, 150), (21, 37)])
def test_matches_pil_antialiased_bicubic_away_from_the_border(size) -> None:
    a = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    pil = np.asarray(Image.fromarray(a, mode="F").resize(size[::-1], Image.BICUBIC))
    ours = imresize(torch.from_numpy(a), size=size).numpy()
    b = 3 if size[0] < 64 else 5  # PIL renormalises truncated kernels at the border; MATLAB mirrors
    np.testing.assert_allclose(ours[b:-b, b:-b], pil[b:-b, b:-b], atol=2e-6)
    assert np.abs(ours - pil).max() > 1e-4  # ... and the borders really do differ


def test_properties() -> None:
    const = torch.full((2, 3, 20, 30), 0.3, dtype=torch.float64)
    torch.testing.assert_close(imresize(const, scale=1 / 3), torch.full((2, 3, 7, 10), 0.3, dtype=torch.float64))
    assert imresize(torch.zeros(10, 10), scale=1 / 3).shape == (4, 4)  # ceil(10 / 3)
    ramp = torch.arange(16, dtype=torch.float64).expand(16, 16)
    up = imresize(ramp, scale=2)  # cubic convolution reproduces linear functions away from the border
    expected = (torch.arange(32, dtype=torch.float64) + 0.5) / 2 - 0.5
    torch.testing.assert_close(up[:, 4:-4], expected[4:-4].expand(32, -1))
    u8 = imresize(torch.full((1, 8, 8), 200, dtype=torch.uint8), scale=0.5)
    assert u8.dtype == torch.uint8 and int(u8.min()) == int(u8.max()) == 200
    same = torch.rand(5, 7, dtype=torch.float64)
    torch.testing.assert_close(imresize(same, scale=1.0), same)


def test_bad_arguments() -> None:
    x = torch.zeros(8, 8)
    with pytest.raises(ValueError, match="exactly one"):
        imresize(x, scale=0.5, size=(4, 4))
    with pytest.raises(ValueError, match="positive"):
        imresize(x, scale=-1)
    with pytest.raises(ValueError, match="kernel"):
        imresize(x, scale=0.5, kernel="lanczos7")
