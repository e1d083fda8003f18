"""The reverse process of a DDPM trained on the swiss roll: snapshots of x_t and a few trajectories."""

from pathlib import Path

from figures.models import SNAPSHOTS, ddpm_samples
from refimpl.plots import save, scatter_2d, subplots

PAGE = "diffusion/ddpm.md"
OUTPUTS = ("ddpm_reverse_2d.svg",)


def make(out: Path, preset: str) -> None:
    samples = ddpm_samples("swissroll", preset, n=2000)
    fig, axes = subplots(1, len(SNAPSHOTS) + 1, figsize=(2.2 * (len(SNAPSHOTS) + 1), 2.5))
    for ax, t in zip(axes, SNAPSHOTS):
        # after the step at code t the chain holds x_{t} in paper indexing (x_0 after t = 0)
        scatter_2d(samples[f"x_{t}"], ax=ax, title=rf"$\mathbf{{x}}_{{{t}}}$")
    ax = axes[-1]
    path = [samples[f"x_{t}"][:25] for t in SNAPSHOTS]
    for i in range(25):
        ax.plot([p[i, 0] for p in path], [p[i, 1] for p in path], color="0.6", lw=0.6)
    scatter_2d(samples["x0"][:25], ax=ax, s=8, color="C3", title="paths of 25 samples")
    fig.tight_layout()
    save(fig, out / "ddpm_reverse_2d.svg")
