"""A "writer's style" for the fine-tuning pages: slanted handwriting, made from the 8x8 digits and measured in
closed form.

The fine-tuning methods (DreamBooth, Textual Inversion, LoRA) teach a trained text-to-image model something it
has not seen: here, one writer whose digits lean to the right. :func:`shear` makes such a writer from the real
digits (a horizontal shear about the image centre), and :func:`skew` measures slant without any learned
classifier: the intensity-weighted covariance of column and row over the variance of the row, the quantity
that classic MNIST deskewing divides out. For an image sheared by ``s`` (column += s * (row - centre)), the skew
grows by exactly ``s`` in the continuous limit (cov(x + s y, y) / var(y) = cov(x, y) / var(y) + s); on 8x8
pixels, bilinear resampling and clipping at the border make the change somewhat smaller (tests/test_styles.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SHEAR = 0.5  # the slanted writer's shear: columns move by 0.5 pixel per row, 1.75 pixels at the top/bottom rows


def shear(images: torch.Tensor, s: float = SHEAR) -> torch.Tensor:
    """Images (B, 1, H, W) in [-1, 1] sheared horizontally about the centre: output pixel (row y, column x) takes
    the input at column x - s * (y - centre) (bilinear; outside the image is background, -1). Positive ``s``
    leans the top to the right."""
    b, _, h, w = images.shape
    # affine_grid maps each output location to the input location it reads, in normalised coordinates
    # (x_n = 2x / w, y_n = 2y / h up to offsets, y pointing down): x_in = x_out + s * y_out in pixels is
    # x_n_in = x_n_out + s * (h / w) * y_n_out. Rows above the centre (y < 0) then read from the left: their ink
    # moves right.
    theta = torch.tensor([[1.0, s * h / w, 0.0], [0.0, 1.0, 0.0]], dtype=images.dtype).expand(b, 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    moved = F.grid_sample(images + 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return moved - 1.0


def skew(images: torch.Tensor) -> torch.Tensor:
    """Slant of each image (B,): with ink m = (x + 1) / 2 >= 0 as weights over pixel (row y, column x),
    cov_m(x, y) / var_m(y), with rows counted upwards so that a top leaning right is positive."""
    ink = ((images.float() + 1.0) / 2.0).clamp_min(0.0).flatten(1)  # (B, H*W)
    h, w = images.shape[-2:]
    rows = torch.arange(h, dtype=torch.float32).repeat_interleave(w)
    cols = torch.arange(w, dtype=torch.float32).repeat(h)
    up = -rows  # rows counted upwards
    total = ink.sum(1).clamp_min(1e-8)
    mean_x = (ink * cols).sum(1) / total
    mean_y = (ink * up).sum(1) / total
    cov = (ink * (cols - mean_x[:, None]) * (up - mean_y[:, None])).sum(1) / total
    var = (ink * (up - mean_y[:, None]) ** 2).sum(1) / total
    return cov / var.clamp_min(1e-8)
