"""Figure 1 of Sohl-Dickstein et al. (2015) on our swiss roll: the forward diffusion destroys it (top), the
learned reverse diffusion rebuilds it (middle), and the reverse drift f_mu(x, t) - x that does it (bottom)."""

from pathlib import Path

import torch

from figures.zoo.nonequilibrium import checkpoint, samples
from refimpl import nonequilibrium
from refimpl.data import toy_2d
from refimpl.schedules import q_sample
from refimpl.plots import save, scatter_2d, subplots

PAGE = "diffusion/nonequilibrium.md"
OUTPUTS = ("nonequilibrium_trajectories.svg",)
LIM = 2.6


def make(out: Path, preset: str) -> None:
    kernel, schedule, _ = nonequilibrium.load(checkpoint(preset))
    T = schedule.T
    columns = (0, T // 2, T)  # the paper's t: data, half way, the end of the forward trajectory
    reverse = samples(preset)
    x0 = toy_2d("swissroll", 2000, torch.Generator().manual_seed(0))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))

    grid = torch.linspace(-LIM + 0.2, LIM - 0.2, 17)
    points = torch.cartesian_prod(grid, grid)
    fig, axes = subplots(3, 3, figsize=(7, 7.2))
    for j, t in enumerate(columns):
        forward = x0 if t == 0 else q_sample(x0, torch.full((len(x0),), t - 1), noise, schedule)  # paper t = code t-1
        scatter_2d(forward, ax=axes[0, j], s=1.5, color="C0", lim=LIM)
        scatter_2d(reverse[f"x{t}"], ax=axes[1, j], s=1.5, color="C3", lim=LIM)
        # 11 pt: mathtext draws superscripts at 70%, which must stay legible
        axes[0, j].set_title(f"$q(x^{{({t})}})$", fontsize=11)
        axes[1, j].set_title(f"$p(x^{{({t})}})$", fontsize=11)
        drift_t = max(t, 2)  # the learned kernels are t = 2..T (t = 1 -> 0 is fixed, Appendix B.2)
        with torch.no_grad():
            mean, _ = kernel(points, torch.full((len(points),), drift_t - 1))  # p(x^(t-1) | x^(t)) is code t - 1
        drift = mean - points
        ax = axes[2, j]
        ax.quiver(points[:, 0], points[:, 1], drift[:, 0], drift[:, 1], color="C2", angles="xy")
        ax.set(xlim=(-LIM, LIM), ylim=(-LIM, LIM), aspect="equal", xticks=[], yticks=[])
        ax.set_title(rf"$f_\mu(x^{{({drift_t})}}, {drift_t}) - x^{{({drift_t})}}$", fontsize=11)
    axes[0, 0].set_ylabel("前向 q")  # plain q, p: mathtext has no CJK glyphs
    axes[1, 0].set_ylabel("反向 p（学到的）")
    axes[2, 0].set_ylabel("反向漂移")
    fig.tight_layout()
    save(fig, out / "nonequilibrium_trajectories.svg")
