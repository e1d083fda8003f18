"""Classifier-free guidance with exact pieces on the labelled 2-D mixture: the tilted density
p(x | y)^(1 + w) p(x)^(-w), DDIM samples of the guided exact eps for w = -1, 0, 1, 3, and the guidance direction
-(eps(x_t, y) - eps(x_t)) at one noise level."""

from pathlib import Path

import numpy as np
import torch

from refimpl.ddim import ddim_sample
from refimpl.guidance import guided_eps_model, labelled_mixture_2d
from refimpl.plots import save, subplots
from refimpl.schedules import Schedule, linear_betas

PAGE = "guidance/cfg.md"
OUTPUTS = ("cfg_mixture_2d.svg",)
CLASS = 0  # the guided class (lower left); classes 1 (lower right) and 2 (top) are the others
WS = (-1.0, 0.0, 1.0, 3.0)
FIELD_T = 300  # code timestep of the vector-field panel
LIM = 3.5
N = 1000


def make(out: Path, preset: str) -> None:
    data = labelled_mixture_2d()
    schedule = Schedule(linear_betas(1000, dtype=torch.float64))
    x_T = torch.randn(N, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = torch.linspace(-LIM, LIM, 161, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    log_cond, log_marg = data.conditional(CLASS).log_prob(grid), data.mixture.log_prob(grid)

    fig, axes = subplots(2, 3, figsize=(8.4, 6.0))
    axes = axes.flatten()
    axes[-1].axis("off")  # five panels on a 2 x 3 grid
    for ax, w in zip(axes, WS):
        tilted = (1 + w) * log_cond - w * log_marg  # log of p(x | y)^(1 + w) p(x)^(-w), unnormalised
        density = torch.exp(tilted - tilted.max()).reshape(len(g), len(g)).numpy()
        ax.contour(g.numpy(), g.numpy(), density, levels=np.geomspace(1e-3, 1, 6), colors="0.4", linewidths=0.7)
        x0 = ddim_sample(guided_eps_model(data, schedule, CLASS, w=w), x_T, schedule, steps=50, disable=True)
        on_class = float((data.log_class_prob(x0).argmax(1) == CLASS).double().mean())
        ax.scatter(x0[:, 0], x0[:, 1], s=2, alpha=0.4, color="C0", rasterized=True, linewidths=0)
        ax.set(xlim=(-LIM, LIM), ylim=(-LIM, LIM), aspect="equal", xticks=[], yticks=[],
               title=f"w = {w:g} (s = {1 + w:g})\n贝叶斯分类器判为类 {CLASS}：{on_class:.0%}")

    ax = axes[len(WS)]
    a = float(schedule.alpha_bar[FIELD_T])
    for y in range(data.classes):  # the noised class densities p_t(x | y), for orientation
        log_p = data.conditional(y).vp(a).log_prob(grid).reshape(len(g), len(g))
        ax.contour(g.numpy(), g.numpy(), torch.exp(log_p - log_p.max()).numpy(), levels=[0.1, 0.5],
                   colors=f"C{y}", linewidths=0.8)
    q = torch.linspace(-LIM + 0.4, LIM - 0.4, 15, dtype=torch.float64)
    points = torch.stack(torch.meshgrid(q, q, indexing="xy"), -1).reshape(-1, 2)
    direction = -(data.eps(points, a, CLASS) - data.eps(points, a))  # sqrt(1 - abar) grad log p^i(y | x_t)
    ax.quiver(points[:, 0], points[:, 1], direction[:, 0], direction[:, 1], color="C0", angles="xy")
    ax.set(xlim=(-LIM, LIM), ylim=(-LIM, LIM), aspect="equal", xticks=[], yticks=[],
           title=f"-(eps(x_t, {CLASS}) - eps(x_t))\n代码 t = {FIELD_T}")
    fig.tight_layout()
    save(fig, out / "cfg_mixture_2d.svg")
