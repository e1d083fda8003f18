"""Training data that needs no network: 2-D toy distributions and scikit-learn's 8x8 digits.

Every toy is drawn in torch from a ``torch.Generator``, so a seed fixes the samples on
every platform. Each toy is shifted and divided by one scalar (the constants below,
measured once on 2 million samples), so its mean is about 0 and its per-coordinate
variance averages about 1; one scalar keeps the shape undistorted.
"""

from __future__ import annotations

import math
import operator
from typing import Callable

import torch

from refimpl.core import LineageError

TOY_2D = ("swissroll", "moons", "8gaussians", "checkerboard")
DATASETS = TOY_2D + ("digits",)

# (mean, scale) of the raw toys; x_scaled = (x_raw - mean) / scale.
_SWISSROLL_MEAN, _SWISSROLL_SCALE = (2.0, 0.2), 6.8
_MOONS_MEAN, _MOONS_SCALE = (0.5, 0.25), 0.71


def _swissroll(n: int, g: torch.Generator | None) -> torch.Tensor:
    """The 2-D swiss roll (as in sklearn.make_swiss_roll): t ~ U[1.5 pi, 4.5 pi], (t cos t, t sin t) + N(0, 0.5^2)."""
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) + 0.5 * torch.randn(n, 2, generator=g)
    return (x - torch.tensor(_SWISSROLL_MEAN)) / _SWISSROLL_SCALE


def _moons(n: int, g: torch.Generator | None) -> torch.Tensor:
    """Two interleaved half circles (as in sklearn.make_moons) with N(0, 0.1^2) noise; each point picks a moon."""
    theta = math.pi * torch.rand(n, generator=g)
    upper = torch.rand(n, generator=g) < 0.5
    outer = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    inner = torch.stack([1 - torch.cos(theta), 0.5 - torch.sin(theta)], dim=1)
    x = torch.where(upper[:, None], outer, inner) + 0.1 * torch.randn(n, 2, generator=g)
    return (x - torch.tensor(_MOONS_MEAN)) / _MOONS_SCALE


def _eight_gaussians(n: int, g: torch.Generator | None) -> torch.Tensor:
    """Eight N(mu_k, 0.1^2 I) at angles k pi/4 on a circle of radius sqrt(1.98): exactly mean 0, variance 1."""
    k = torch.randint(0, 8, (n,), generator=g)
    angle = k.float() * (math.pi / 4)
    centres = math.sqrt(1.98) * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return centres + 0.1 * torch.randn(n, 2, generator=g)


def _checkerboard(n: int, g: torch.Generator | None) -> torch.Tensor:
    """Uniform on the 8 dark cells of a 4x4 board on [-sqrt 3, sqrt 3]^2: exactly mean 0, variance 1."""
    cell = torch.randint(0, 8, (n,), generator=g)
    row = cell // 2
    col = 2 * (cell % 2) + row % 2  # dark cells: (row + col) even
    u = torch.rand(n, 2, generator=g)
    x = torch.stack([col + u[:, 0], row + u[:, 1]], dim=1) - 2.0  # uniform on [-2, 2]^2 marginally
    return x * (math.sqrt(3) / 2)


_TOYS: dict[str, Callable[[int, torch.Generator | None], torch.Tensor]] = {
    "swissroll": _swissroll, "moons": _moons, "8gaussians": _eight_gaussians, "checkerboard": _checkerboard,
}


def _check_name(name: str, valid: tuple[str, ...]) -> None:
    if name not in valid:
        raise LineageError(f"unknown dataset {name!r} (choose from {', '.join(valid)})")


def _positive(value, what: str) -> int:
    try:
        n = operator.index(value)
    except TypeError:
        n = 0
    if n <= 0:
        raise LineageError(f"{what} must be a positive integer, got {value!r}")
    return n


def toy_2d(name: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` samples ``(n, 2)`` float32 of the 2-D toy ``name``; deterministic given ``generator``."""
    _check_name(name, TOY_2D)
    return _TOYS[name](_positive(n, "number of samples"), generator).float()


_DIGITS: tuple[torch.Tensor, torch.Tensor] | None = None


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits (bundled, no download): images ``(1797, 1, 8, 8)`` in [-1, 1], labels int64.

    Pixels are integers 0..16 in the source; ``x / 8 - 1`` maps them onto [-1, 1] exactly.
    The arrays are cached; the tensors returned are fresh copies.
    """
    global _DIGITS
    if _DIGITS is None:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = torch.from_numpy(bunch.images).float().reshape(-1, 1, 8, 8) / 8.0 - 1.0
        labels = torch.from_numpy(bunch.target).long()
        _DIGITS = (images, labels)
    return _DIGITS[0].clone(), _DIGITS[1].clone()


HOLDOUT = 297  # the last 297 of the 1797 digits: no model of the project trains on them (nor the digits_eval probe)


def training_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The training digits and labels: all but the last :data:`HOLDOUT`."""
    images, labels = digits()
    return images[:-HOLDOUT], labels[:-HOLDOUT]


def held_out_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The last :data:`HOLDOUT` digits and labels, never trained on."""
    images, labels = digits()
    return images[-HOLDOUT:], labels[-HOLDOUT:]


def sampler(name: str, generator: torch.Generator | None = None, *,
            labels: bool = False) -> Callable[[int], torch.Tensor]:
    """A function ``batch(batch_size, generator=generator)`` drawing training batches (on CPU).

    Toys draw fresh samples; ``digits`` draws indices uniformly with replacement. With
    ``labels=True`` (digits only) ``batch`` returns ``(images, labels)``.
    """
    _check_name(name, DATASETS)
    if labels and name != "digits":
        raise LineageError(f"dataset {name!r} has no labels (only digits does)")

    if name == "digits":
        images, targets = digits()

        def batch(batch_size: int, generator: torch.Generator | None = generator):
            index = torch.randint(0, images.shape[0], (_positive(batch_size, "batch size"),), generator=generator)
            return (images[index], targets[index]) if labels else images[index]
    else:
        def batch(batch_size: int, generator: torch.Generator | None = generator):
            return toy_2d(name, _positive(batch_size, "batch size"), generator)
    return batch
