"""DDIM consistency: the same x_T decoded with 10, 20, 50, 100 and 1000 steps (eta = 0) by the digits model."""

from pathlib import Path

import torch

from figures.zoo.ddpm import ddpm_checkpoint
from refimpl.core import pick_device
from refimpl.ddim import ddim_sample
from refimpl.ddpm import load_for_sampling
from refimpl.plots import image_grid, save

PAGE = "efficient-sampling/ddim.md"
OUTPUTS = ("ddim_consistency.svg",)
STEPS = (10, 20, 50, 100, 1000)


def make(out: Path, preset: str) -> None:
    device = pick_device()
    model, schedule, shape = load_for_sampling(ddpm_checkpoint("digits", preset), device)
    x_T = torch.randn(10, *shape, generator=torch.Generator().manual_seed(7)).to(device)
    rows = [ddim_sample(model, x_T, schedule, steps=s, eta=0.0, disable=True).cpu() for s in STEPS]
    fig = image_grid(torch.stack(rows), row_titles=[f"{s} 步" for s in STEPS], size=0.6)
    save(fig, out / "ddim_consistency.svg")
