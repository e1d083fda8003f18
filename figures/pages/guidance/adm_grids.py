"""Classifier-guided digits of the unconditional quick DDPM: one row per gradient scale, two columns per label."""

from pathlib import Path

import torch

from figures.zoo.adm import guided_digits
from refimpl.plots import image_grid, save

PAGE = "guidance/classifier-guidance.md"
OUTPUTS = ("adm_grids.svg",)
PER_LABEL = 2


def make(out: Path, preset: str) -> None:
    samples = guided_digits(preset)
    labels = samples["labels"]
    columns = torch.cat([torch.nonzero(labels == k).flatten()[:PER_LABEL] for k in range(10)])
    grid = samples["x0"][:, columns]
    titles = [str(int(labels[c])) for c in columns]
    rows = [f"s = {s:g}" for s in samples["scales"].tolist()]
    fig = image_grid(grid, column_titles=titles, row_titles=rows, size=0.43)
    save(fig, out / "adm_grids.svg")
