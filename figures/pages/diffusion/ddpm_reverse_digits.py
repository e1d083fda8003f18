"""The reverse process of a DDPM trained on 8x8 digits: rows are samples, columns are steps."""

from pathlib import Path

import torch

from figures.zoo.ddpm import SNAPSHOTS, ddpm_samples
from refimpl.plots import image_grid, save

PAGE = "diffusion/ddpm.md"
OUTPUTS = ("ddpm_reverse_digits.svg",)
ROWS = 8


def make(out: Path, preset: str) -> None:
    samples = ddpm_samples("digits", preset, n=256)
    grid = torch.stack([samples[f"x_{t}"][:ROWS] for t in SNAPSHOTS], dim=1)
    fig = image_grid(grid, column_titles=[f"t={t}" for t in SNAPSHOTS])
    save(fig, out / "ddpm_reverse_digits.svg")
