"""The reverse process of a DDPM trained on the swiss roll: snapshots of x_t and a few trajectories."""

from pathlib import Path

from figures.zoo.ddpm import SNAPSHOTS, ddpm_samples
from refimpl.plots import save, scatter_2d, subplots

PAGE = "diffusion/ddpm.md"
OUTPUTS = ("ddpm_reverse_2d.svg",)


def make(out: Path, preset: str) -> None:
    samples = ddpm_samples("swissroll", preset, n=2000)
    fig, axes = subplots(2, 4, figsize=(7, 3.9))
    axes = axes.flatten()
    axes[-1].axis("off")
    for ax, t in zip(axes, SNAPSHOTS):
        # after the step at code t the chain holds x_{t} in paper indexing (x_0 after t = 0)
        scatter_2d(samples[f"x_{t}"], ax=ax)
        ax.set_title(rf"$\mathbf{{x}}_{{{t}}}$", fontsize=11)  # 11 pt: mathtext draws subscripts at 70%
    ax = axes[len(SNAPSHOTS)]
    paths = samples["paths"][-21:, :12]  # x_t every 10th step for t <= 200, for 12 samples
    scatter_2d(samples["x0"], ax=ax, s=1, color="0.85")
    for i in range(paths.shape[1]):
        ax.plot(paths[:, i, 0], paths[:, i, 1], color=f"C{i % 10}", lw=0.7)
        ax.plot(paths[-1, i, 0], paths[-1, i, 1], "o", color=f"C{i % 10}", ms=3)
    ax.set_title("12 条路径，t ≤ 200")  # Unicode: mathtext has no CJK glyphs
    fig.tight_layout()
    save(fig, out / "ddpm_reverse_2d.svg")
