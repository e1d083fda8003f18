"""Image grids that several figure scripts draw alike."""

from __future__ import annotations

from pathlib import Path

import torch

from refimpl.plots import image_grid, save


def subject_grid(samples: dict[str, torch.Tensor], rows: tuple[tuple[str, str], ...], path: Path,
                 columns: int = 8, subject_title: str = "主体") -> None:
    """The before/after grid of the personalisation pages: the subject images in the first row (titled
    ``subject_title``), then the first ``columns`` samples of each ``(key, title)`` in ``rows`` (column j of every
    row starts from the same z_T)."""
    subject = samples["subject"]
    blank = -torch.ones(columns - subject.shape[0], *subject.shape[1:])  # background fills the subject row
    grid = [torch.cat([subject, blank])] + [samples[key][:columns] for key, _ in rows]
    fig = image_grid(torch.stack(grid), row_titles=[subject_title] + [title for _, title in rows], size=0.6)
    save(fig, path)
