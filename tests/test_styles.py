"""The slanted writer of the fine-tuning pages (refimpl/styles.py): shear and its closed-form skew measure."""

import torch

from refimpl.data import digits
from refimpl.styles import SHEAR, shear, skew


def _bar(size: int = 32, column: int = 15) -> torch.Tensor:
    image = -torch.ones(1, 1, size, size)
    image[..., 4:-4, column] = 1.0  # a vertical stroke, away from the borders
    return image


def test_zero_shear_is_the_identity():
    images, _ = digits()
    assert torch.equal(shear(images[:50], 0.0), images[:50])


def test_skew_of_straight_strokes_is_their_slope():
    # a vertical stroke has no slant; a stroke along the anti-diagonal (up and to the right) has slope 1
    assert skew(_bar()).abs().item() < 1e-6
    diagonal = -torch.ones(1, 1, 16, 16)
    for row in range(16):
        diagonal[0, 0, row, 15 - row] = 1.0
    assert abs(skew(diagonal).item() - 1.0) < 1e-6


def test_shear_moves_every_row_by_its_offset():
    # bilinear resampling moves a row's ink centroid by exactly the fractional shift (linear interpolation
    # preserves the first moment) as long as the ink stays inside the image, and every row of the bar keeps the
    # same ink; so cov(x, y) / var(y) changes by exactly s. float32 rounding: |error| << 1e-4.
    for s in (0.25, -0.3):
        assert abs(skew(shear(_bar(), s)).item() - s) < 1e-4


def test_the_slanted_writer_is_separable_from_the_real_digits():
    # the style the fine-tuning pages teach must be visible to skew(): the mean moves by close to SHEAR (a bit
    # less: 8x8 borders clip), several per-image standard deviations (about 0.12)
    images, _ = digits()
    before, after = skew(images), skew(shear(images))
    assert 0.8 * SHEAR < (after.mean() - before.mean()).item() < 1.05 * SHEAR
    assert (after.mean() - before.mean()) > 3 * before.std()
