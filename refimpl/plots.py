"""Plots shared by the command line and the figure scripts, saved deterministically.

``save(fig, path)`` writes SVG/PNG/PDF without timestamps or version strings and with a
fixed SVG id salt, so two builds of the same figure give the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np

#: rcParams shared by every figure (applied by :func:`subplots` and :func:`use_style`)
STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "legend.frameon": False,
    "image.cmap": "viridis",
    "svg.fonttype": "path",
}
SVG_SALT = "lineage"


def use_style() -> None:
    """Apply :data:`STYLE` to the global rcParams."""
    mpl.rcParams.update(STYLE)


def subplots(*args, **kwargs):
    """``plt.subplots`` with the shared style applied."""
    use_style()
    return plt.subplots(*args, **kwargs)


def image_grid(images, *, column_titles: Sequence[str] | None = None, row_titles: Sequence[str] | None = None,
               vmin: float = -1.0, vmax: float = 1.0, cmap: str = "gray", size: float = 1.0):
    """A figure showing ``images[row, column]`` without axes; returns the Figure.

    ``images`` is an array or tensor of shape (rows, columns, H, W), (rows, columns, 1, H, W)
    or (rows, columns, 3, H, W), with values in [vmin, vmax] (the data range, [-1, 1] by
    default); values outside are clipped. ``size`` is the width of one cell in inches.
    """
    if hasattr(images, "detach"):
        images = images.detach().cpu().float().numpy()
    images = np.asarray(images, dtype=np.float64)
    if images.ndim == 5 and images.shape[2] == 1:
        images = images[:, :, 0]
    elif images.ndim == 5 and images.shape[2] == 3:
        images = np.clip((images.transpose(0, 1, 3, 4, 2) - vmin) / (vmax - vmin), 0.0, 1.0)
    elif images.ndim != 4:
        raise ValueError(f"image_grid: expected (rows, columns, [C,] H, W), got shape {images.shape}")
    rows, cols = images.shape[:2]
    use_style()
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size + (0.3 if row_titles is not None else 0.0),
                                                   rows * size + (0.3 if column_titles is not None else 0.0)),
                             squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.imshow(images[r, c], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if r == 0 and column_titles is not None:
                ax.set_title(column_titles[c])
            if c == 0 and row_titles is not None:
                ax.set_ylabel(row_titles[r])
    fig.tight_layout(pad=0.2)
    return fig


def save(fig, path: str | Path) -> Path:
    """Save ``fig`` to ``path`` (format from the suffix) reproducibly, then close it."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    metadata = {
        "svg": {"Date": None, "Creator": None},
        "png": {"Software": None},
        "pdf": {"CreationDate": None, "ModDate": None, "Creator": None, "Producer": None},
    }.get(fmt)
    if metadata is None:
        raise ValueError(f"save: unsupported format {path.suffix!r} (use .svg, .png or .pdf)")
    try:
        with mpl.rc_context({"svg.hashsalt": SVG_SALT}):
            fig.savefig(path, format=fmt, metadata=metadata)
    finally:
        plt.close(fig)
    return path


def scatter_2d(points, *, ax=None, s: float = 1.0, color: str = "C0", lim: float = 3.5, title: str | None = None):
    """Scatter 2-D points on square axes of half-width ``lim`` (rasterised: SVGs stay small)."""
    if ax is None:
        _, ax = subplots(figsize=(4, 4))
    points = points.detach().cpu().numpy() if hasattr(points, "detach") else np.asarray(points)
    ax.scatter(points[:, 0], points[:, 1], s=s, alpha=0.5, color=color, rasterized=True, linewidths=0)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xticks=[], yticks=[])
    if title is not None:
        ax.set_title(title)
    return ax


def save_samples(samples, path: str | Path) -> Path:
    """Write samples to a picture: a scatter plot for (N, 2) points, a grid for (N, C, H, W) images."""
    if samples.ndim == 2:
        ax = scatter_2d(samples)
        return save(ax.figure, path)
    n = samples.shape[0]
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    padded = np.full((rows * cols, *samples.shape[1:]), -1.0)
    padded[:n] = samples.detach().cpu().numpy() if hasattr(samples, "detach") else samples
    return save(image_grid(padded.reshape(rows, cols, *samples.shape[1:]), size=0.6), path)
