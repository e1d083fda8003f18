"""DDIM latent interpolation: slerp between two x_T, each decoded with eta = 0 and 50 steps."""

from pathlib import Path

import torch

from figures.zoo.ddpm import ddpm_checkpoint
from refimpl.core import pick_device
from refimpl.ddim import ddim_sample, slerp
from refimpl.ddpm import load_for_sampling
from refimpl.plots import image_grid, save

PAGE = "efficient-sampling/ddim.md"
OUTPUTS = ("ddim_interpolation.svg",)
ALPHAS = torch.linspace(0, 1, 9).tolist()


def make(out: Path, preset: str) -> None:
    device = pick_device()
    model, schedule, shape = load_for_sampling(ddpm_checkpoint("digits", preset), device)
    generator = torch.Generator().manual_seed(11)
    rows = []
    for _ in range(4):
        z0, z1 = torch.randn(2, *shape, generator=generator)
        x_T = torch.stack([slerp(z0, z1, a) for a in ALPHAS]).to(device)
        rows.append(ddim_sample(model, x_T, schedule, steps=50, eta=0.0, disable=True).cpu())
    fig = image_grid(torch.stack(rows), column_titles=[f"{a:.2f}" for a in ALPHAS], size=0.7)
    save(fig, out / "ddim_interpolation.svg")
