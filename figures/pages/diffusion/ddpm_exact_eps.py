"""Algorithm 2 driven by the exact noise prediction eps* of a Gaussian mixture, against its density."""

from pathlib import Path

import torch

from refimpl.ddpm import ddpm_sample
from refimpl.mixture import eps_model, mixture_2d
from refimpl.plots import save, scatter_2d, subplots
from refimpl.schedules import make_schedule

PAGE = "diffusion/ddpm.md"
OUTPUTS = ("ddpm_exact_eps.svg",)


def make(out: Path, preset: str) -> None:
    mixture = mixture_2d()
    schedule = make_schedule("linear", 1000)
    generator = torch.Generator().manual_seed(0)
    x_T = torch.randn(3000, 2, generator=generator, dtype=torch.float64)
    x0 = ddpm_sample(eps_model(mixture, schedule), x_T, schedule, generator=generator, disable=True)
    lim = 3.5
    grid = torch.linspace(-lim, lim, 200, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="xy")
    density = mixture.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1)).exp().reshape(200, 200)
    fig, (ax_true, ax_samples) = subplots(1, 2, figsize=(7, 3.5))
    ax_true.contourf(xx, yy, density, levels=20, cmap="Blues")
    # Chinese and mathtext do not mix in one text (mathtext has no CJK glyphs): the symbols are Unicode here
    ax_true.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xticks=[], yticks=[], title="真实密度 p(x₀)")
    ax_samples.contour(xx, yy, density, levels=8, colors="0.7", linewidths=0.5)
    scatter_2d(x0, ax=ax_samples, s=1.5, lim=lim, title="算法 2，闭式最优 ε*")
    fig.tight_layout()
    save(fig, out / "ddpm_exact_eps.svg")
