"""Training loss (L_simple) of the two DDPMs the DDPM page uses."""

from pathlib import Path

from figures.zoo.ddpm import ddpm_history
from refimpl.plots import save, subplots

PAGE = "diffusion/ddpm.md"
OUTPUTS = ("ddpm_loss.svg",)


def make(out: Path, preset: str) -> None:
    fig, axes = subplots(1, 2, figsize=(6.8, 3))
    for ax, (data, title) in zip(axes, (("swissroll", "瑞士卷 (swissroll)"), ("digits", "手写数字 (digits)"))):
        history = ddpm_history(data, preset)
        ax.plot([s for s, _ in history], [loss for _, loss in history], lw=0.8)
        ax.set(xlabel="训练步数", title=title, yscale="log")
        # 11 pt: mathtext (the subscript, the log axis's powers of ten) draws scripts at 70%
        ax.set_ylabel(r"$L_\mathrm{simple}$", fontsize=11)
        ax.tick_params(axis="y", which="both", labelsize=11)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, out / "ddpm_loss.svg")
