"""Imagen's cascade at toy scale: 8x8 base samples -> 16x16 by the super-resolution model trained with or without
noise conditioning augmentation; and the same models on real held-out 8x8 digits beside the 16x16 truth."""

from pathlib import Path

import torch

from figures.zoo.imagen import PER_DIGIT, samples
from refimpl.imagen import high_res
from refimpl.plots import image_grid, save

PAGE = "clip-diffusion/imagen.md"
OUTPUTS = ("imagen_cascade.svg",)


def make(out: Path, preset: str) -> None:
    s = samples(preset)
    first = torch.arange(10) * PER_DIGIT  # one sample per digit

    def nearest(x):  # show an 8x8 image at 16x16 without smoothing it
        return x.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)

    rows = [nearest(s["w3_dynamic"][first]), s["sr_noaug"][first], s["sr_aug"][first],
            nearest(s["real_low"][first]), high_res(s["real_low"][first]), s["real_aug"][first]]
    titles = ["生成 8×8", "超分", "超分+增强", "真实 8×8", "真值", "超分+增强"]
    grid = torch.stack(rows).transpose(0, 1)  # columns: the six rows above; one row per digit caption 0..9
    fig = image_grid(grid, column_titles=titles, size=0.9)
    save(fig, out / "imagen_cascade.svg")
