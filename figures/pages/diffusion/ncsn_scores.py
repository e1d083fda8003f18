"""Exact scores of the noised 2-D mixture at several NCSN noise levels, with the noised samples that train them."""

from pathlib import Path

import torch

from refimpl.mixture import mixture_2d
from refimpl.ncsn import TOY, geometric_sigmas
from refimpl.plots import save, scatter_2d, subplots

PAGE = "diffusion/ncsn.md"
OUTPUTS = ("ncsn_scores.svg",)
LEVELS = (9, 6, 3, 0)  # code level indices: sigma_10 (smallest) ... sigma_1 (largest)
LIM = 4.0


def make(out: Path, preset: str) -> None:
    mixture = mixture_2d()
    sigmas = geometric_sigmas(TOY["sigma_1"], TOY["sigma_L"], TOY["L"])
    generator = torch.Generator().manual_seed(0)
    x0, _ = mixture.sample(600, generator)
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    axis = torch.linspace(-LIM, LIM, 200, dtype=torch.float64)
    gx, gy = torch.meshgrid(axis, axis, indexing="xy")
    grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    arrows = torch.linspace(-LIM + 0.4, LIM - 0.4, 17, dtype=torch.float64)
    ax_, ay_ = torch.meshgrid(arrows, arrows, indexing="xy")
    points = torch.stack([ax_.reshape(-1), ay_.reshape(-1)], 1)
    fig, axes = subplots(2, 2, figsize=(6.4, 6.8))
    for ax, i in zip(axes.flatten(), LEVELS):
        sigma = sigmas[i].item()
        noised = mixture.noised(1.0, sigma)
        density = noised.log_prob(grid).exp().reshape(gx.shape)
        ax.imshow(density.numpy(), extent=(-LIM, LIM, -LIM, LIM), origin="lower", cmap="Greys", alpha=0.8)
        scatter_2d(x0 + sigma * noise, ax=ax, s=2, color="C1", lim=LIM)
        score = noised.score(points)
        direction = score / score.norm(dim=1, keepdim=True)  # unit arrows: the direction only
        ax.quiver(points[:, 0], points[:, 1], direction[:, 0], direction[:, 1], color="C0", angles="xy",
                  scale_units="xy", scale=3.0, width=0.004)
        ax.set_title(rf"$\sigma_{{{i + 1}}} = {sigma:.3g}$", fontsize=11)  # 11 pt: mathtext draws subscripts at 70%
    fig.tight_layout()
    save(fig, out / "ncsn_scores.svg")
