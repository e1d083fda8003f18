"""Guided digits at every guidance scale from the same x_T: rows are the requested digits."""

from pathlib import Path

import torch

from figures.zoo.cfg import PER_CLASS, SCALES, tradeoff_samples
from refimpl.cfg import CLASSES  # imported by statement: the figure's cache key follows refimpl/cfg.py
from refimpl.plots import image_grid, save

PAGE = "guidance/cfg.md"
OUTPUTS = ("cfg_grids.svg",)
SHOWN = 4  # samples per digit and scale


def make(out: Path, preset: str) -> None:
    samples = tradeoff_samples(preset)
    # (scale, digit, sample) -> rows = digits, columns = SHOWN samples for each scale in turn
    blocks = torch.stack([samples[f"x0_{s:g}"].reshape(CLASSES, PER_CLASS, 1, 8, 8)[:, :SHOWN] for s in SCALES], 1)
    grid = blocks.reshape(CLASSES, len(SCALES) * SHOWN, 1, 8, 8)
    titles = [f"s = {s:g}" if j == 0 else "" for s in SCALES for j in range(SHOWN)]
    fig = image_grid(grid, column_titles=titles, row_titles=[str(d) for d in range(CLASSES)], size=0.45)
    save(fig, out / "cfg_grids.svg")
