"""The same captions and the same x_T under no guidance, classifier-free guidance and noised-CLIP guidance."""

from pathlib import Path

import torch

from figures.zoo.glide import PER_DIGIT, guided_samples
from refimpl.plots import image_grid, save

PAGE = "guidance/glide.md"
OUTPUTS = ("glide_compare.svg",)
PANELS = (("不引导", "cfg_1"), ("CFG s=3", "cfg_3"), ("CLIP s=30", "clip_30"))
COLUMNS = 4  # samples per caption and panel


def make(out: Path, preset: str) -> None:
    samples = guided_samples(preset)
    rows = []
    for k in range(10):
        first = k * PER_DIGIT  # rows are captions "the digit k"; column j of every panel starts from the same x_T
        rows.append(torch.cat([samples[key][first:first + COLUMNS] for _, key in PANELS]))
    titles = [title if j == 0 else "" for title, _ in PANELS for j in range(COLUMNS)]
    fig = image_grid(torch.stack(rows), column_titles=titles, row_titles=[f"“{k}”" for k in range(10)], size=0.55)
    save(fig, out / "glide_compare.svg")
