"""The DDPM forward process on 8x8 digits: one image per row, noised at increasing t."""

from pathlib import Path

import torch

from refimpl.plots import image_grid, save
from refimpl.data import digits
from refimpl.schedules import q_sample
from refimpl.schedules import make_schedule

PAGE = "diffusion/ddpm.md"
OUTPUTS = ("ddpm_forward_digits.svg",)
STEPS = (0, 25, 50, 100, 200, 300, 500, 700, 999)  # code timesteps


def make(out: Path, preset: str) -> None:
    generator = torch.Generator().manual_seed(0)
    schedule = make_schedule("linear", 1000)
    images, labels = digits()
    x0 = torch.stack([images[(labels == k).nonzero()[0, 0]] for k in (0, 3, 7)])
    eps = torch.randn(x0.shape, generator=generator)
    columns = [q_sample(x0, torch.full((len(x0),), t), eps, schedule) for t in STEPS]
    grid = torch.stack(columns, dim=1)  # (rows, columns, 1, 8, 8)
    fig = image_grid(grid, column_titles=[f"t={t + 1}" for t in STEPS])
    save(fig, out / "ddpm_forward_digits.svg")
