"""unCLIP image variations next to image-to-image on the same held-out digits: per row the input, two variations
(CLIP image embedding -> decoder, two seeds) and image-to-image from t = 250, 500, 750 (noised, then denoised by
the same decoder without its embedding)."""

from pathlib import Path

import torch

from figures.zoo.unclip import SEEDS, T_LEVELS, comparison
from refimpl.plots import image_grid, save

PAGE = "clip-diffusion/unclip.md"
OUTPUTS = ("unclip_variations.svg",)
DIGITS = (0, 2, 3, 5, 7, 9)  # one row per digit: its first held-out example


def make(out: Path, preset: str) -> None:
    _, samples = comparison(preset)
    labels = samples["labels"]
    rows = []
    for k in DIGITS:
        i = int((labels == k).nonzero()[0, 0])
        row = [samples["inputs"][i], *(samples[f"var_{s}"][i] for s in SEEDS),
               *(samples[f"i2i_{t}_0"][i] for t in T_LEVELS)]
        rows.append(torch.stack(row))
    titles = ["输入", *(f"变体 {s + 1}" for s in SEEDS), *(f"图生图\nt = {t}" for t in T_LEVELS)]
    fig = image_grid(torch.stack(rows), column_titles=titles, size=0.9)
    save(fig, out / "unclip_variations.svg")
