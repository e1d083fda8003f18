"""Swiss roll: deterministic DDIM (eta = 0, 50 steps) paths against stochastic DDPM (1000 steps) from the same x_T."""

from pathlib import Path

import torch

from figures.zoo.ddpm import ddpm_checkpoint
from refimpl.ddim import ddim_sample
from refimpl.ddpm import ddpm_sample, load_for_sampling
from refimpl.plots import save, scatter_2d, subplots

PAGE = "efficient-sampling/ddim.md"
OUTPUTS = ("ddim_paths_2d.svg",)
PATHS = 12


def make(out: Path, preset: str) -> None:
    model, schedule, _ = load_for_sampling(ddpm_checkpoint("swissroll", preset), "cpu")
    x_T = torch.randn(2000, 2, generator=torch.Generator().manual_seed(5))
    fig, axes = subplots(1, 2, figsize=(8, 4))
    for ax, name in zip(axes, ("DDIM，η = 0，50 步", "DDPM，1000 步（每 20 步取一次）")):
        path = [x_T[:PATHS]]

        def keep(t, x, x0_pred):
            if name.startswith("DDIM") or t % 20 == 0:  # DDPM: every 20th of its 1000 steps
                path.append(x[:PATHS].clone())

        if name.startswith("DDIM"):
            x0 = ddim_sample(model, x_T, schedule, steps=50, eta=0.0, callback=keep, disable=True)
        else:
            x0 = ddpm_sample(model, x_T, schedule, generator=torch.Generator().manual_seed(6), callback=keep,
                             disable=True)
        paths = torch.stack(path)
        scatter_2d(x0, ax=ax, s=1, color="0.8", title=name)
        for i in range(PATHS):
            ax.plot(paths[:, i, 0], paths[:, i, 1], color=f"C{i % 10}", lw=0.6)
            ax.plot(paths[-1, i, 0], paths[-1, i, 1], "o", color=f"C{i % 10}", ms=3)
    fig.tight_layout()
    save(fig, out / "ddim_paths_2d.svg")
