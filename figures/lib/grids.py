"""Image grids that several figure scripts draw alike."""

from __future__ import annotations

from pathlib import Path

import torch

from refimpl.plots import image_grid, save


def subject_grid(samples: dict[str, torch.Tensor], rows: tuple[tuple[str, str], ...], path: Path,
                 columns: int = 8) -> None:
    """The before/after grid of the personalisation pages: the subject images in the first row, then the first
    ``columns`` samples of each ``(key, title)`` in ``rows`` (column j of every row starts from the same z_T)."""
    subject = samples["subject"]
    blank = -torch.ones(columns - subject.shape[0], *subject.shape[1:])  # background fills the subject row
    grid = [torch.cat([subject, blank])] + [samples[key][:columns] for key, _ in rows]
    fig = image_grid(torch.stack(grid), row_titles=["subject"] + [title for _, title in rows], size=0.6)
    for ax in fig.axes:  # horizontal row titles: the prompts are longer than a cell is tall
        ax.yaxis.label.set(rotation=0, ha="right", va="center")
    fig.set_size_inches(fig.get_figwidth() + 1.3, fig.get_figheight())
    fig.tight_layout(pad=0.2)
    save(fig, path)
