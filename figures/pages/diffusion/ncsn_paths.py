"""Annealed Langevin dynamics (NCSN Algorithm 1) with the exact scores of the 2-D mixture: the cloud after
several levels and a few chains level by level."""

from pathlib import Path

import torch

from refimpl.mixture import mixture_2d
from refimpl.ncsn import TOY, annealed_langevin_sample, exact_score_model, geometric_sigmas
from refimpl.plots import save, scatter_2d, subplots

PAGE = "diffusion/ncsn.md"
OUTPUTS = ("ncsn_paths.svg",)
SHOWN = (0, 3, 6, 9)  # code level indices after which the cloud is drawn
CHAINS = 6
FROM = 3  # code level index from which the chains are drawn
LIM = 3.5
SUBSCRIPT = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")  # Unicode: mathtext has no CJK glyphs


def make(out: Path, preset: str) -> None:
    mixture = mixture_2d()
    sigmas = geometric_sigmas(TOY["sigma_1"], TOY["sigma_L"], TOY["L"])
    generator = torch.Generator().manual_seed(0)
    x_T = (torch.rand(2000, 2, generator=generator, dtype=torch.float64) * 2 - 1) * TOY["init_box"]
    after = [x_T]
    annealed_langevin_sample(exact_score_model(mixture, sigmas), x_T, sigmas, eps=TOY["eps"],
                             steps_per_level=TOY["steps_per_level"], generator=generator, disable=True,
                             callback=lambda i, x, x0_pred: after.append(x.clone()))
    paths = torch.stack([x[:CHAINS] for x in after])  # (L + 1, CHAINS, 2): the start, then each level's end
    axis = torch.linspace(-LIM, LIM, 200, dtype=torch.float64)
    gx, gy = torch.meshgrid(axis, axis, indexing="xy")
    density = mixture.log_prob(torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)).exp().reshape(gx.shape)
    fig, axes = subplots(2, 2, figsize=(6.4, 6.8))
    for ax, i in zip(axes.flatten(), SHOWN):
        ax.contour(gx.numpy(), gy.numpy(), density.numpy(), levels=6, colors="0.6", linewidths=0.6)
        scatter_2d(after[i + 1], ax=ax, s=1.5, lim=LIM)
        for c in range(CHAINS):  # each chain from the end of level FROM + 1 on (before, its steps are longer)
            ax.plot(paths[FROM + 1: i + 2, c, 0], paths[FROM + 1: i + 2, c, 1], "-o", color=f"C{c + 1}", ms=3, lw=1.2)
        ax.set_title(f"第 {i + 1} 级结束：σ{str(i + 1).translate(SUBSCRIPT)} = {sigmas[i].item():.3g}")
    fig.tight_layout()
    save(fig, out / "ncsn_paths.svg")
