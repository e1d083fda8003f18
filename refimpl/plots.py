"""Plots shared by the command line and the figure scripts, saved deterministically.

``save(fig, path)`` writes SVG/PNG/PDF without timestamps or version strings and with a
fixed SVG id salt, so two builds of the same figure give the same bytes, and refuses a figure whose
texts overlap (:func:`text_overlaps`).

Text in an SVG stays text (``svg.fonttype: none``): the reader's browser draws it with the reader's own
fonts, so labels can be Chinese without a font in the build's requirements, and they are selectable and
searchable. Matplotlib still measures every label to lay the figure out: Latin with its own DejaVu Sans,
Chinese with Noto Sans CJK SC where it is installed (CI installs it); without it the layout of Chinese
labels is measured on a placeholder glyph (so the overlap check leaves Chinese labels out there, and text in a
PNG must be ASCII: ``save`` checks).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import warnings
from pathlib import Path
from typing import Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.font_manager import FontProperties
from matplotlib.textpath import text_to_path

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
    "svg.fonttype": "none",
    # the SVG names these for the browser; a reader without either gets the browser's own sans-serif
    "font.family": ["DejaVu Sans", "Noto Sans CJK SC", "sans-serif"],
}
SVG_SALT = "lineage"
_CJK = re.compile("[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")  # CJK punctuation, ideographs, full-width forms


def use_style() -> None:
    """Apply :data:`STYLE` to the global rcParams."""
    mpl.rcParams.update(STYLE)
    # Without Noto Sans CJK matplotlib says so once per label and glyph; the browser draws those labels anyway.
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font")


def subplots(*args, **kwargs):
    """``plt.subplots`` with the shared style applied."""
    use_style()
    return plt.subplots(*args, **kwargs)


def text_width(text: str, size: float) -> float:
    """The drawn width in points of one line of plain ``text`` at font ``size`` (pt), as matplotlib lays it out."""
    return text_to_path.get_text_width_height_descent(text, FontProperties(size=size), ismath=False)[0]


def image_grid(images, *, column_titles: Sequence[str] | None = None, row_titles: Sequence[str] | None = None,
               vmin: float = -1.0, vmax: float = 1.0, cmap: str = "gray", size: float = 1.0):
    """A figure showing ``images[row, column]`` without axes; returns the Figure.

    ``images`` is an array or tensor of shape (rows, columns, H, W), (rows, columns, 1, H, W)
    or (rows, columns, 3, H, W), with values in [vmin, vmax] (the data range, [-1, 1] by
    default); values outside are clipped. ``size`` is the width of one cell in inches; row titles
    read horizontally, left of the rows, and widen the figure by what they need. Each cell keeps
    its own pixels (an SVG embeds them as they are and asks the browser to draw them sharp).
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
    titles_width = 0.0
    if row_titles is not None:  # inches: the widest line of any row title, and the gap to the cells
        titles_width = max(text_width(line, mpl.rcParams["axes.labelsize"])
                           for title in row_titles for line in str(title).splitlines() or [""]) / 72 + 0.15
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size + titles_width,
                                                   rows * size + (0.3 if column_titles is not None else 0.0)),
                             squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.imshow(images[r, c], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="none", clip_on=False)
            ax.patch.set_visible(False)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if r == 0 and column_titles is not None:
                ax.set_title(column_titles[c])
            if c == 0 and row_titles is not None:
                ax.set_ylabel(row_titles[r], rotation=0, ha="right", va="center")
    fig.tight_layout(pad=0.2)
    return fig


@contextlib.contextmanager
def _recording_texts():
    """Within the block, list every text matplotlib draws, with its box in pixels, for the last renderer."""
    drawn: list[tuple[object, object, mpl.transforms.Bbox]] = []
    draw = mpl.text.Text.draw

    def recorded(text, renderer):
        draw(text, renderer)
        if text.get_visible() and text.get_text().strip() and (not hasattr(text, "_check_xy")
                                                               or text._check_xy(renderer)):
            drawn.append((renderer, text, text.get_window_extent(renderer)))

    mpl.text.Text.draw = recorded
    try:
        yield drawn
    finally:
        mpl.text.Text.draw = draw


def _last_draw(drawn) -> list[tuple[object, mpl.transforms.Bbox]]:
    # savefig(bbox_inches="tight") draws twice; the second draw is the picture
    return [(text, box) for renderer, text, box in drawn if renderer is drawn[-1][0]] if drawn else []


@functools.cache
def _measures_chinese() -> bool:
    """Whether matplotlib has a Chinese font of STYLE's font.family to measure Chinese labels with."""
    from matplotlib import font_manager

    names = {font.name for font in font_manager.fontManager.ttflist}
    return any(family in names for family in STYLE["font.family"][1:-1])


def text_overlaps(boxes: Sequence[tuple[object, mpl.transforms.Bbox]]) -> list[tuple[str, str]]:
    """The (text, text) pairs among ``(Text, box)`` whose boxes share area (``Bbox.overlaps``: touching is not
    overlapping). Rotation is by multiples of 90 degrees in this project, so each box is the text's own outline."""
    return [(a.get_text(), b.get_text()) for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1:]
            if box_a.overlaps(box_b)]


def save(fig, path: str | Path) -> Path:
    """Save ``fig`` to ``path`` (format from the suffix) reproducibly, then close it.

    Raises ``ValueError`` when two of its drawn texts overlap, when a text mixes mathtext with Chinese (mathtext
    draws Chinese as empty boxes), or when a PNG would carry non-ASCII text (see the module's docstring).
    """
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
        with mpl.rc_context({"svg.hashsalt": SVG_SALT}), _recording_texts() as drawn:
            fig.savefig(path, format=fmt, metadata=metadata)
    finally:
        plt.close(fig)
    texts = _last_draw(drawn)
    if not _measures_chinese():  # a placeholder glyph is ~15% wider than a Chinese one: boxes would be wrong
        texts = [(text, box) for text, box in texts if not _CJK.search(text.get_text())]
    clashes = text_overlaps(texts)
    if clashes:
        path.unlink()
        raise ValueError(f"save: {path.name}: overlapping texts {clashes[:5]}")
    mixed = [text.get_text() for text, _ in texts if _CJK.search(text.get_text()) and text._preprocess_math(
        text.get_text())[1] is True]
    if mixed:
        path.unlink()
        raise ValueError(f"save: {path.name}: mathtext draws Chinese as empty boxes: {mixed[:3]}; "
                         "write the math part in Unicode (x\u209c, \u221a\u1fb1) or in a text of its own")
    if fmt == "png" and any(not text.get_text().isascii() for text, _ in texts):
        path.unlink()
        raise ValueError(f"save: {path.name}: non-ASCII text in a PNG is drawn with the build machine's fonts; "
                         "save an .svg")
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
