"""Training loss (L_simple) of the two DDPMs the DDPM page uses."""

from pathlib import Path

from figures.zoo.ddpm import ddpm_history
from refimpl.plots import save, subplots

PAGE = "diffusion/ddpm.md"
OUTPUTS = ("ddpm_loss.svg",)


def make(out: Path, preset: str) -> None:
    fig, axes = subplots(1, 2, figsize=(8, 3))
    for ax, data in zip(axes, ("swissroll", "digits")):
        history = ddpm_history(data, preset)
        ax.plot([s for s, _ in history], [loss for _, loss in history], lw=0.8)
        ax.set(xlabel="training step", ylabel=r"$L_\mathrm{simple}$", title=data, yscale="log")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, out / "ddpm_loss.svg")
