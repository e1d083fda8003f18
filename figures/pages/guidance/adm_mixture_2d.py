"""Classifier guidance on the labelled 2-D mixture, all pieces exact: samples at s = 0, 1, 4 and the guidance field."""

from pathlib import Path

import numpy as np
import torch

from refimpl.adm import guided_sample
from refimpl.guidance import labelled_mixture_2d
from refimpl.mixture import by_level, eps_model
from refimpl.plots import save, scatter_2d, subplots
from refimpl.schedules import Schedule, linear_betas

PAGE = "guidance/classifier-guidance.md"
OUTPUTS = ("adm_mixture_2d.svg",)
Y = 1
SCALES = (0.0, 1.0, 4.0)
FIELD_T = 300  # code timestep of the vector-field panel


def make(out: Path, preset: str) -> None:
    data = labelled_mixture_2d()
    schedule = Schedule(linear_betas(1000, dtype=torch.float64))
    alpha_bar = schedule.alpha_bar
    grad = by_level(lambda x, step: data.grad_log_class_prob(x, Y, alpha_bar[step].item()))
    x_T = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fig, axes = subplots(2, 2, figsize=(6.4, 6.6))
    axes = axes.flatten()
    for ax, s in zip(axes, SCALES):
        x0 = guided_sample(eps_model(data.mixture, schedule), grad, x_T, schedule, scale=s, steps=50, disable=True)
        is_y = (data.log_class_prob(x0).argmax(-1) == Y).numpy()
        scatter_2d(x0[is_y], ax=ax, s=2, color="C1")
        scatter_2d(x0[~is_y], ax=ax, s=2, color="C0",
                   title=f"s = {s:g}：{is_y.mean():.0%} 判为第 {Y} 类" + (" (= p(x | y))" if s == 1 else ""))
    ax = axes[-1]
    a = alpha_bar[FIELD_T].item()
    side = np.linspace(-3, 3, 15)
    points = torch.tensor(np.stack(np.meshgrid(side, side), -1).reshape(-1, 2))
    g = SCALES[-1] * data.grad_log_class_prob(points, Y, a)
    dense = np.linspace(-3.5, 3.5, 120)
    grid = torch.tensor(np.stack(np.meshgrid(dense, dense), -1).reshape(-1, 2))
    density = data.mixture.vp(a).log_prob(grid).exp().reshape(120, 120).numpy()
    ax.contour(dense, dense, density, levels=6, colors="0.7", linewidths=0.8)
    ax.quiver(points[:, 0], points[:, 1], g[:, 0], g[:, 1], color="C1", angles="xy")
    ax.set(xlim=(-3.5, 3.5), ylim=(-3.5, 3.5), aspect="equal", xticks=[], yticks=[],
           title=f"{SCALES[-1]:g}·∇log p(y={Y} | x_t), t = {FIELD_T}")
    save(fig, out / "adm_mixture_2d.svg")
