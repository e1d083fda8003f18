"""The DDPM forward process q(x_t | x_0) (Eq. 4) applied to the swiss roll at several t."""

from pathlib import Path

import torch

from refimpl.plots import save, scatter_2d, subplots
from refimpl.data import toy_2d
from refimpl.schedules import q_sample
from refimpl.schedules import make_schedule

PAGE = "diffusion/ddpm.md"
OUTPUTS = ("ddpm_forward_2d.svg",)
STEPS = (0, 50, 100, 200, 400, 999)  # code timesteps (paper t = code t + 1)


def make(out: Path, preset: str) -> None:
    generator = torch.Generator().manual_seed(0)
    schedule = make_schedule("linear", 1000)
    x0 = toy_2d("swissroll", 2000, generator)
    eps = torch.randn(x0.shape, generator=generator)
    fig, axes = subplots(2, 3, figsize=(7, 5), sharex=True, sharey=True)
    for ax, t in zip(axes.flatten(), STEPS):
        x_t = q_sample(x0, torch.full((len(x0),), t), eps, schedule)
        scatter_2d(x_t, ax=ax)
        # 11 pt: mathtext draws subscripts at 70%, which must stay legible
        ax.set_title(rf"$t={t + 1}$, $\bar\alpha_t={schedule.alpha_bar[t]:.3f}$", fontsize=11)
    fig.tight_layout()
    save(fig, out / "ddpm_forward_2d.svg")
